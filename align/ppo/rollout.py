"""Rollouts: sample responses from the policy, score them, and record what the update needs.

One batch of queries becomes one ``Rollouts``: query tokens (left-padded, so every response
starts at the same column), response tokens cut after their first EOS (right-padded), the
scores, and the log-probs of the policy and ref_policy and the value predictions at sampling
time (the "old" quantities of the PPO ratio and value clipping).

Sampling runs with the policy's LoRA merged into the base (policy.merged_for_sampling), prompts
sorted by length into generate() calls; the no-grad forwards run forward_batch_size rollouts at a
time, and the frozen lower layers' output is recorded once (``trunk``) for the ref_policy and the
update to start from.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from align.divergence import FiniteLogits
from align.ppo.config import PPOSettings
from align.ppo.policy import ModelRoles, merged_for_sampling, policy_forward, ref_forward, trunk_capture
from align.ppo.queries import Conversation
from align.ppo.scoring import FunctionScorer, Scorer
from align.rl import apply_missing_eos_penalty, has_eos, logprobs_from_logits, truncate_after_eos


@dataclass
class Rollouts:
    """A batch of B rollouts. P = longest query, R = longest response (tokens)."""

    queries: list[Conversation]
    query_ids: torch.Tensor  # (B, P) left-padded
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R) right-padded, pad after the first EOS
    response_mask: torch.Tensor  # (B, R) bool, 1 up to and including the first EOS
    has_eos: torch.Tensor  # (B,) bool
    responses: list[str]  # decoded, without EOS / special tokens
    raw_scores: torch.Tensor  # (B,) what the reward returned
    scores: torch.Tensor  # (B,) after the missing-EOS penalty: what enters the reward
    logprobs: torch.Tensor  # (B, R) policy at sampling time, 0 at padding
    ref_logprobs: torch.Tensor  # (B, R) ref_policy, 0 at padding
    values: torch.Tensor | None  # (B, R) value_model at sampling time, 0 at padding; None without one
    gold: torch.Tensor | None = None  # (B,) gold_fn scores, if any
    seconds: dict[str, float] = field(default_factory=dict)  # time/generate, time/score, time/forward
    trunk: torch.Tensor | None = None  # (B, P + R, H) output of the frozen lower layers, if recorded

    def __len__(self) -> int:
        return len(self.queries)

    def columns(self, rows: torch.Tensor | slice) -> tuple[int, int]:
        """(first, width): the first query column some of these rows use, and their response width."""
        first = int(self.query_mask[rows].any(dim=0).long().argmax())
        width = max(int(self.response_mask[rows].sum(dim=1).max()), 1)
        return first, width

    def inputs(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Query + response tokens for some rows, with columns that are padding in all of them dropped.

        Returns input_ids, attention_mask (b, p + r) and r, the response width. Input column j is
        column first + j of the full (P + R) layout.
        """
        q_ids, q_mask = self.query_ids[rows], self.query_mask[rows]
        r_ids, r_mask = self.response_ids[rows], self.response_mask[rows]
        first, width = self.columns(rows)
        ids = torch.cat([q_ids[:, first:], r_ids[:, :width]], dim=1)
        mask = torch.cat([q_mask[:, first:], r_mask[:, :width].to(q_mask.dtype)], dim=1)
        return ids, mask, width

    def trunk_rows(self, rows: torch.Tensor | slice) -> torch.Tensor | None:
        """The recorded frozen-layer output for the columns inputs(rows) keeps: (b, p + r, H), or None."""
        if self.trunk is None:
            return None
        first, width = self.columns(rows)
        return self.trunk[rows, first : self.query_ids.shape[1] + width]


def encode_queries(tokenizer, queries: list[Conversation]) -> list[list[int]]:
    """Token ids of each query rendered with the chat template, ending where the assistant speaks."""
    texts = [tokenizer.apply_chat_template(q, add_generation_prompt=True, tokenize=False) for q in queries]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def eos_ids(tokenizer, model) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation_config EOS(s)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(roles: ModelRoles, query_ids: torch.Tensor, query_mask: torch.Tensor, s: PPOSettings) -> torch.Tensor:
    """Sample responses (B, R') with KV cache; rows that stopped early are padded with pad_token_id.

    top_k is switched off explicitly (transformers' default is 50): the update's log-probs are
    those of softmax(logits / temperature), so sampling must draw from that distribution.
    """
    from align.generation import sampling_config

    tok = roles.tokenizer
    config = sampling_config(temperature=s.rollout.temperature, top_p=s.rollout.top_p, top_k=0,
                             max_new_tokens=s.rollout.max_new_tokens, min_new_tokens=1,
                             eos_token_id=eos_ids(tok, roles.model), pad_token_id=tok.pad_token_id)
    chunk = s.rollout.generation_batch_size or len(query_ids)
    # longest prompts first, so each generate() call pads its prompts to similar lengths
    order = torch.argsort(query_mask.sum(dim=1), descending=True, stable=True) if chunk < len(query_ids) else None
    if order is not None:
        query_ids, query_mask = query_ids[order], query_mask[order]
    pieces = []
    with merged_for_sampling(roles, s.rollout.merge_for_sampling), roles.autocast(no_grad=True):
        for start in range(0, len(query_ids), chunk):
            mask = query_mask[start : start + chunk]
            first = int(mask.any(dim=0).long().argmax())  # drop columns that are padding in every row
            ids = query_ids[start : start + chunk, first:].to(roles.device)
            out = roles.model.generate(input_ids=ids, attention_mask=mask[:, first:].to(roles.device),
                                       generation_config=config,
                                       logits_processor=[FiniteLogits()])  # NaN policy: clear error, not multinomial's
            pieces.append(out[:, ids.shape[1] :].cpu())
    width = max(p.shape[1] for p in pieces)
    out = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=tok.pad_token_id) for p in pieces])
    return out if order is None else out[torch.argsort(order)]


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor, eos: list[int]) -> list[str]:
    out = []
    for row, keep in zip(response_ids.tolist(), mask.tolist(), strict=True):
        tokens = [t for t, k in zip(row, keep, strict=True) if k and t not in eos]
        out.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return out


@torch.no_grad()
def score_logprobs_values(
    roles: ModelRoles, r: Rollouts, temperature: float, batch_size: int, reuse_frozen_layers: bool = True
) -> None:
    """Fill r.logprobs, r.ref_logprobs and r.values (0 at padded positions), batch_size rows at a time.

    One policy forward gives log-probs and values; when the lower layers are frozen for every role
    their output is recorded there (r.trunk) and the ref_policy's forward starts from it.
    """
    B, R = r.response_ids.shape
    P = r.query_ids.shape[1]
    r.logprobs, r.ref_logprobs = torch.zeros(B, R), torch.zeros(B, R)
    r.values = torch.zeros(B, R) if roles.value_head is not None else None
    reuse = reuse_frozen_layers and roles.frozen_layers > 0
    r.trunk = None
    for start in range(0, B, batch_size):
        rows = slice(start, start + batch_size)
        ids, mask, width = r.inputs(rows)
        ids, mask = ids.to(roles.device), mask.to(roles.device)
        labels = ids[:, -width:]
        valid = r.response_mask[rows, :width].float()
        recorded: list[torch.Tensor] = []
        with trunk_capture(roles, recorded) if reuse else contextlib.nullcontext():
            logits, values = policy_forward(roles, ids, mask, width, no_grad=True)
        r.logprobs[rows, :width] = logprobs_from_logits(logits, labels, temperature).float().cpu() * valid
        if values is not None:
            r.values[rows, :width] = values.float().cpu() * valid
        del logits
        trunk = recorded[0] if recorded else None
        if trunk is not None:
            if r.trunk is None:
                r.trunk = torch.zeros(B, P + R, trunk.shape[-1], dtype=trunk.dtype)
            first, _ = r.columns(rows)
            r.trunk[rows, first : P + width] = trunk.cpu()
        ref_logits = ref_forward(roles, ids, mask, width, trunk=trunk)
        r.ref_logprobs[rows, :width] = logprobs_from_logits(ref_logits, labels, temperature).float().cpu() * valid


def rollout(
    roles: ModelRoles,
    scorer: Scorer,
    queries: list[Conversation],
    query_tokens: list[list[int]],
    s: PPOSettings,
    gold: FunctionScorer | None = None,
) -> Rollouts:
    """Generate, cut after EOS, score (with the missing-EOS penalty), and record old log-probs/values."""
    tok = roles.tokenizer
    t0 = time.perf_counter()
    query_ids, query_mask = left_pad(query_tokens, tok.pad_token_id)
    generated = generate(roles, query_ids, query_mask, s)
    t1 = time.perf_counter()
    eos = eos_ids(tok, roles.model)
    ended = has_eos(generated, eos)
    response_ids, response_mask = truncate_after_eos(generated, eos, tok.pad_token_id)
    width = max(int(response_mask.sum(dim=1).max()), 1)
    response_ids, response_mask = response_ids[:, :width], response_mask[:, :width]
    responses = decode_responses(tok, response_ids, response_mask, eos)
    raw = torch.tensor(scorer.score(queries, responses), dtype=torch.float32)
    penalty = s.rollout.missing_eos_penalty
    scores = raw if penalty is None else apply_missing_eos_penalty(raw, ended, penalty)
    r = Rollouts(
        queries=queries, query_ids=query_ids, query_mask=query_mask, response_ids=response_ids,
        response_mask=response_mask, has_eos=ended, responses=responses, raw_scores=raw, scores=scores,
        logprobs=torch.empty(0), ref_logprobs=torch.empty(0), values=None,
        gold=torch.tensor(gold.score(queries, responses)) if gold is not None else None,
    )
    t2 = time.perf_counter()
    score_logprobs_values(roles, r, s.rollout.temperature, s.rollout.forward_batch_size, s.rollout.reuse_frozen_layers)
    r.seconds = {"time/generate_s": t1 - t0, "time/score_s": t2 - t1, "time/logprobs_s": time.perf_counter() - t2}
    return r
