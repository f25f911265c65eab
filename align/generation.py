"""Batched generation with a local model (`generate_texts`, used by every stage, the local teacher and
`align serve`), and the one sampling config every sampling site uses."""

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


class Generated(str):
    """A generated text, and why generation ended: ``finish_reason`` "stop" (end of turn or a stop string)
    or "length" (the token limit was reached: the text is cut off); ``tokens``: how many it took (None when
    a server did not say). A ``str``, so callers that only need the text use it as one; string methods
    return plain ``str`` without the reason."""

    finish_reason: str
    tokens: int | None

    def __new__(cls, text: str, finish_reason: str | None = "stop", tokens: int | None = None) -> Generated:
        obj = super().__new__(cls, text)
        obj.finish_reason = finish_reason or "stop"
        obj.tokens = tokens
        return obj

    def __reduce__(self):  # pickles (and deep-copies) with its reason
        return (Generated, (str(self), self.finish_reason, self.tokens))


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
    by_length: bool = False,
    progress: bool = True,
) -> list[list[Generated]]:
    """Continue each prompt (already formatted text); returns num_return_sequences texts per prompt, in order.

    Each text ends at the first EOS (or `stop` string, which also ends generation early: a Self-Instruct
    bootstrap stops after a few lines instead of running to max_new_tokens) and carries its finish reason
    and token count (`Generated`). Left padding so every prompt ends where generation starts; KV cache
    on. Sampling follows `sampling_config`: softmax(logits / temperature), cut by top_p only; greedy at 0.
    Each batch is seeded from a generator seeded with `seed`. `by_length` batches prompts of similar
    length together (less padding; the teacher and `align serve` use it).
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos_ids = generation_eos_ids(model, tokenizer)
    stop = [s for s in stop or [] if s] or None
    config = sampling_config(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             num_return_sequences=num_return_sequences, eos_token_id=eos_ids,
                             pad_token_id=tokenizer.pad_token_id, stop_strings=stop)
    order = list(range(len(prompts)))
    if by_length:
        lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order.sort(key=lambda i: lengths[i])
    generator_seed = torch.Generator().manual_seed(seed)
    results: dict[int, list[Generated]] = {}
    n = num_return_sequences
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        with torch.no_grad():
            out = model.generate(**enc, generation_config=config, tokenizer=tokenizer if stop else None)
        new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
        for k, i in enumerate(idx):
            results[i] = [_finish(tokenizer, ids, set(eos_ids), max_new_tokens, stop)
                          for ids in new_tokens[k * n : (k + 1) * n]]
    return [results[i] for i in range(len(prompts))]


def _finish(tokenizer: Any, ids: list[int], eos_ids: set, max_new_tokens: int, stop: list[str] | None) -> Generated:
    """The text of one sequence's new tokens: up to its first EOS, cut at the first stop string."""
    end = next((j for j, t in enumerate(ids) if t in eos_ids), None)
    if end is not None:
        ids = ids[: end + 1]
    else:  # no eos: drop the padding of a sequence that stopped early on a stop string
        while ids and ids[-1] == tokenizer.pad_token_id:
            ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if stop and any(s in text for s in stop):
        return Generated(cut_at_stop(text, stop), "stop", len(ids))
    return Generated(text.strip(), "stop" if end is not None or len(ids) < max_new_tokens else "length", len(ids))


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
