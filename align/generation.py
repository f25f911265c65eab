"""Batched generation with a local model: chat conversations or raw completion prompts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    generator_seed = torch.Generator().manual_seed(seed)
    outputs: list[list[str]] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress or len(batches) < 2):
        batch = prompts[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        sampling = temperature > 0
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = {tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=sampling,
                temperature=temperature if sampling else None, top_p=top_p if sampling else None,
                top_k=None if sampling else None,
                num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos_ids), use_cache=True,
            )
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
