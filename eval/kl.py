"""KL(π‖π_ref) of a policy to a reference, estimated on responses sampled from the policy.

KL(π‖π_ref) = E_{y~π(·|x)}[log π(y|x) − log π_ref(y|x)] only holds for y drawn from π: on greedy
responses the log-ratio is no estimate of anything (it can even be negative). So ``kl_estimate``
samples ``n`` responses per prompt from the policy itself (temperature 1, no top-k / top-p /
repetition penalty: the model's own distribution, seeded) and averages, over prompts and samples, the
sum over each response's tokens (up to and including EOS) of log π − log π_ref (the "k1" estimator:
unbiased, noisy; ``kl_stderr`` is its standard error). log π is recorded while sampling; log π_ref
takes one forward pass of the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from align.errors import AlignError

if TYPE_CHECKING:
    from align.eval.loading import ModelView

# Logit elements (rows x response tokens x vocabulary) scored per forward when computing KL log-probs:
# 2**26 = 128 MiB of bf16 logits (+ two fp32 temporaries), whatever the model; align.plan counts the same.
KL_LOGITS_ELEMENTS = 2**26


@dataclass
class SampledBatch:
    """One generate() call's samples, as token ids (never re-tokenized text: the KL is over these tokens).

    input_ids (N, P + R): left-padded prompt, then the response columns; attention_mask (N, P + R): real
    prompt tokens and response tokens up to and including the first EOS; response_mask (N, R): the tokens
    whose log-probs count. N = prompts in the call x samples per prompt (rows of a prompt are adjacent).
    """

    input_ids: Any
    attention_mask: Any
    response_mask: Any
    logprobs: Any = None  # (N, R) the sampling model's log-prob of each response token, recorded while sampling


def kl_estimate(policy: ModelView, reference: ModelView, conversations: list[list[dict]], n: int,
                max_new_tokens: int, batch_size: int, seed: int) -> dict[str, float]:
    """k1 Monte-Carlo KL(π‖π_ref): mean over prompts and n samples y ~ π of Σ_t log π(y_t|·) − log π_ref(y_t|·)."""
    if policy.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise AlignError("eval.reference: KL needs the reference to share the policy's tokenizer (the same token "
                         "ids); this reference's vocabulary differs")
    with policy.active() as model:
        batches = sample_responses(model, policy.tokenizer, conversations, n, max_new_tokens, batch_size, seed)
    lp = [float(x) for b in batches for x in b.logprobs.where(b.response_mask, 0.0).sum(-1)]
    with reference.active() as model:
        lp_ref = sequence_logprobs(model, batches)
    ratios = [a - b for a, b in zip(lp, lp_ref)]
    mean = sum(ratios) / len(ratios)
    var = sum((r - mean) ** 2 for r in ratios) / max(1, len(ratios) - 1)
    tokens = sum(int(b.response_mask.sum()) for b in batches)
    return {"kl": mean, "kl_stderr": math.sqrt(var / len(ratios)), "kl_samples": len(ratios),
            "kl_response_tokens_mean": tokens / len(ratios)}


def sample_responses(model, tokenizer, conversations: list[list[dict]], n: int, max_new_tokens: int,
                     batch_size: int, seed: int) -> list[SampledBatch]:
    """n responses per conversation sampled from the model, kept as token ids with their log-probs.

    Each generate() call takes max(1, batch_size // n) prompts (about batch_size sequences). Seeded per
    call, like align.generation.generate_texts.
    """
    import torch
    from transformers import LogitsProcessorList

    from align.generation import chat_prompt, generation_eos_ids, sampling_config

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    eos_ids = generation_eos_ids(model, tokenizer)
    # temperature 1, no top-k/top-p, nothing from the checkpoint's generation_config.json: samples from π itself
    config = sampling_config(max_new_tokens=max_new_tokens, temperature=1.0, num_return_sequences=n,
                             eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    seeds = torch.Generator().manual_seed(seed)
    per_call = max(1, batch_size // n)
    batches: list[SampledBatch] = []
    for start in range(0, len(conversations), per_call):
        prompts = [chat_prompt(tokenizer, c) for c in conversations[start : start + per_call]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=seeds)))
        recorder = logprob_recorder()
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                                 logits_processor=LogitsProcessorList([recorder]), generation_config=config)
        logprobs = recorder.finish(out).cpu()
        out = out.cpu()
        response = out[:, enc["input_ids"].shape[1] :]
        is_eos = torch.isin(response, torch.tensor(eos_ids, dtype=response.dtype))
        keep = (is_eos.long().cumsum(-1) - is_eos.long()) == 0  # up to and including the first EOS
        prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0)
        batches.append(SampledBatch(out, torch.cat([prompt_mask, keep.long()], dim=1), keep, logprobs))
    return batches


def logprob_recorder():
    """A logits processor that records log π(token) of every sampled token while generate() runs.

    It sees the final scores (no warpers follow it: sampling_config at temperature 1 adds none) and keeps one (N, V)
    log-softmax: at each step it reads the previous step's value at the token that step sampled. This
    saves a second forward pass of the policy over every sample.
    """
    import torch
    from transformers import LogitsProcessor

    class Recorder(LogitsProcessor):
        def __init__(self) -> None:
            self.last = None
            self.taken: list = []

        def __call__(self, input_ids, scores):
            if self.last is not None:
                self.taken.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
            self.last = torch.log_softmax(scores.float(), dim=-1)
            return scores

        def finish(self, sequences):
            """(N, R) log-probs of the R generated tokens of `sequences` (N, P + R)."""
            self.taken.append(self.last.gather(-1, sequences[:, -1:].to(self.last.device)).squeeze(-1))
            out = torch.stack(self.taken, dim=1)
            self.last, self.taken = None, []
            return out

    return Recorder()


def sequence_logprobs(model, batches: list[SampledBatch]) -> list[float]:
    """Σ over each response's counted tokens of log p(token | everything before it), one float per row.

    Rows go through the model in chunks of at most KL_LOGITS_ELEMENTS logit entries.
    """
    import torch

    from align.ppo.policy import causal_forward
    from align.rl import logprobs_from_logits

    device = next(model.parameters()).device
    vocab = _vocab_size(model)
    sums: list[float] = []
    for b in batches:
        n_resp = b.response_mask.shape[1]
        rows = max(1, KL_LOGITS_ELEMENTS // (n_resp * vocab))
        for s in range(0, b.input_ids.shape[0], rows):
            ids = b.input_ids[s : s + rows].to(device)
            mask = b.attention_mask[s : s + rows].to(device)
            keep = b.response_mask[s : s + rows].to(device)
            with torch.no_grad():
                logits = causal_forward(model, ids, mask, n_resp, hidden=False)[0]
                logp = logprobs_from_logits(logits, ids[:, -n_resp:])
                sums.extend(logp.where(keep, 0.0).sum(-1).tolist())
            del logits, logp
    return sums


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(getattr(model.config, "vocab_size", 0) or 32_000)
