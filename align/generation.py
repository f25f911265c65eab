"""Batched generation with a local model, and the one sampling config every sampling site uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

# Every GenerationConfig field that changes which tokens generate() may draw, or how it searches, at the
# value that leaves the model's own distribution alone. Several neutral values are None, and None is what
# transformers 5 treats as "unset": generate() fills every unset field of a passed config from the
# checkpoint's generation_config.json (`GenerativePreTrainedModel._prepare_generation_config`:
# `generation_config.update(**self.generation_config.to_dict(), defaults_only=True)`), so a checkpoint
# with min_p, no_repeat_ngram_size, bad_words_ids... would silently change the sampler. `_ExplicitConfig`
# keeps these fields out of that merge.
NEUTRAL_SAMPLING: dict[str, Any] = {
    # warpers (sampling only)
    "top_k": 0, "top_p": 1.0, "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    # logits processors (sampling and greedy)
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "guidance_scale": None,
    "min_length": 0, "min_new_tokens": 0, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "remove_invalid_values": False, "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "renormalize_logits": False, "watermarking_config": None,
    "token_healing": False,
    # search and stopping: one beam, no speculative or hub-hosted decoding modes, no time limit
    "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "length_penalty": 1.0, "early_stopping": False,
    "penalty_alpha": None, "dola_layers": None, "constraints": None, "force_words_ids": None,
    "prompt_lookup_num_tokens": None, "assistant_early_exit": None, "use_mtp": False, "speculation_type": None,
    "max_length": None, "max_time": None, "stop_strings": None,
}
_EXPLICIT = frozenset(NEUTRAL_SAMPLING) | {"do_sample", "temperature", "max_new_tokens", "num_return_sequences",
                                           "eos_token_id", "pad_token_id"}


def _explicit_config_class() -> type:
    from transformers import GenerationConfig

    class ExplicitGenerationConfig(GenerationConfig):
        """A GenerationConfig whose sampling fields generate() cannot complete from the checkpoint.

        generate() deep-copies the config it is given and calls `update(defaults_only=True, ...)` on the copy
        with the model's generation_config, then with the library's global defaults; that call skips every
        field `sampling_config` set. Everything else (cache settings, bos id...) still merges as usual, and
        explicit `update(...)` calls are untouched.
        """

        def update(self, defaults_only: bool = False, allow_custom_entries: bool = False, **kwargs: Any):
            if defaults_only:
                skipped = {k: kwargs.pop(k) for k in list(kwargs) if k in _EXPLICIT}
                unused = super().update(defaults_only=True, allow_custom_entries=allow_custom_entries, **kwargs)
                return {**unused, **skipped}
            return super().update(defaults_only=False, allow_custom_entries=allow_custom_entries, **kwargs)

    return ExplicitGenerationConfig


_CONFIG_CLASS: type | None = None


def sampling_config(
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | list[int] | None,
    pad_token_id: int | None,
    num_return_sequences: int = 1,
    min_new_tokens: int = 0,
    stop_strings: list[str] | None = None,
) -> GenerationConfig:
    """The config for every `model.generate` call in align: built from these settings only.

    temperature 0 means greedy decoding; otherwise samples come from softmax(logits / temperature), cut only
    by top_p < 1 or top_k > 0 when asked. Every other logits processor, warper, beam or speculative setting
    is set to its neutral value and kept out of transformers' merge with the checkpoint's
    generation_config.json (see `NEUTRAL_SAMPLING`), so a checkpoint's min_p, no_repeat_ngram_size,
    bad_words_ids, top_k 50... never change what is sampled. `min_new_tokens` > 0 forbids EOS for that many
    tokens; `stop_strings` (pass `tokenizer=` to generate) end a sequence early.
    """
    global _CONFIG_CLASS
    if _CONFIG_CLASS is None:
        _CONFIG_CLASS = _explicit_config_class()
    sampling = temperature > 0
    settings = {
        **NEUTRAL_SAMPLING,
        "do_sample": sampling,
        "temperature": temperature if sampling else 1.0,
        "top_p": top_p if sampling else 1.0,
        "top_k": top_k if sampling else None,  # None: greedy applies no warper (0 would draw a warning)
        "max_new_tokens": max_new_tokens,
        # min_new_tokens > 0 becomes min_length = prompt + min_new_tokens inside generate(); 0 adds no processor
        "min_new_tokens": min_new_tokens or None,
        "min_length": None if min_new_tokens else 0,
        "num_return_sequences": num_return_sequences,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "stop_strings": list(stop_strings) if stop_strings else None,
        "use_cache": True,
    }
    return _CONFIG_CLASS(**settings)


def generation_eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a sequence: the tokenizer's EOS and the model's generation_config EOS id(s)."""
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
    return sorted(ids)


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    stop: list[str] | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """Continue each prompt (already formatted text); returns num_return_sequences texts per prompt.

    Left padding so every prompt ends where generation starts; KV cache on; `stop` strings cut the output.
    Sampling follows `sampling_config`: softmax(logits / temperature), cut by top_p only; greedy at 0.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    generator_seed = torch.Generator().manual_seed(seed)
    config = sampling_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             num_return_sequences=num_return_sequences, eos_token_id=generation_eos_ids(model, tokenizer),
                             pad_token_id=tokenizer.pad_token_id)
    outputs: list[list[str]] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        batch = prompts[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        with torch.no_grad():
            out = model.generate(**enc, generation_config=config)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        texts = [cut_at_stop(t, stop) for t in texts]
        for i in range(len(batch)):
            outputs.append(texts[i * num_return_sequences : (i + 1) * num_return_sequences])
    return outputs


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    if not stop:
        return text.strip()
    cut = min((text.find(s) for s in stop if s in text), default=len(text))
    return text[:cut].strip()


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """A conversation rendered with the model's chat template, ending where the assistant speaks."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list:
    """Assistant replies for each conversation (a list per conversation when num_return_sequences > 1)."""
    prompts = [chat_prompt(tokenizer, conv) for conv in conversations]
    out = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                         num_return_sequences=num_return_sequences, batch_size=batch_size, seed=seed,
                         progress=progress)
    return [o[0] for o in out] if num_return_sequences == 1 else out
