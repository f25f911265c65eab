"""From reward_model scores to per-token PPO rewards (InstructGPT step 3, Ziegler et al. 2019).

Each response token t gets -beta * KL_t (keeps the policy near the ref_policy); the last valid
token also gets the reward_model's sequence score. Helpers here also cut responses at their
first EOS, penalise responses that never stop, and normalise scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align.errors import AlignError
from align.rl.kl import per_token_kl
from align.rl.masked import _require_right_padded, masked_whiten


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL_t on every response token, plus the score on the last one.

    Shapes: scores (B,), logprobs (B, T), ref_logprobs (B, T), response_mask (B, T) right-padded
    -> rewards (B, T), kl (B, T); both are 0 at padded positions. A row with no valid token
    gets no reward at all (its score has nowhere to go).
    """
    mask = _require_right_padded(response_mask)
    if logprobs.shape != mask.shape:
        raise AlignError(
            f"logprobs shape {tuple(logprobs.shape)} must equal response_mask shape {tuple(mask.shape)}"
        )
    if scores.shape != (mask.shape[0],):
        raise AlignError(f"scores must have shape (B,) = ({mask.shape[0]},), got {tuple(scores.shape)}")
    kl = per_token_kl(logprobs, ref_logprobs, kl_estimator) * mask.to(logprobs.dtype)
    rewards = -kl_coef * kl
    lengths = mask.sum(dim=1)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    last = lengths[rows] - 1  # right padding: the last valid token sits at length - 1
    rewards[rows, last] += scores[rows].to(rewards.dtype)
    return rewards, kl


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Replace the score of every response that never emitted EOS with ``penalty`` (e.g. -1.0).

    Truncated responses are often rated well by the reward_model; replacing their score (as in
    OpenAI's lm-human-preferences; see Huang et al. 2024, "The N+ Implementation Details of RLHF
    with PPO") teaches the policy to finish. Note TRL's
    ``missing_eos_penalty`` subtracts instead of replacing. Shapes: (B,), (B,) bool -> (B,) new tensor.
    """
    if has_eos.shape != scores.shape:
        raise AlignError(
            f"has_eos shape {tuple(has_eos.shape)} must equal scores shape {tuple(scores.shape)}"
        )
    return torch.where(has_eos.bool(), scores, torch.full_like(scores, penalty))


def _eos_hits(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    if response_ids.dim() != 2:
        raise AlignError(f"response_ids must have shape (B, T), got {tuple(response_ids.shape)}")
    eos = torch.as_tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=response_ids.device
    )
    if eos.numel() == 0:
        raise AlignError("eos_token_id is empty; pass the tokenizer's EOS id (or ids)")
    return torch.isin(response_ids, eos)


def has_eos(response_ids: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """Whether each generated response contains an EOS token. Shapes: (B, T) -> (B,) bool.

    Call it on the raw generated ids: generation pads only rows that stopped, so this is right
    even when pad_token_id == eos_token_id. Several stop ids may be given (e.g. Llama 3).
    """
    return _eos_hits(response_ids, eos_token_id).any(dim=1)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int | Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first EOS; pad everything after it.

    Rows without EOS are kept whole. Shapes: response_ids (B, T) -> ids (B, T), mask (B, T) bool
    with 1 on kept tokens. Use the mask, not ``ids != pad``, when pad_token_id == eos_token_id.
    """
    hits = _eos_hits(response_ids, eos_token_id)
    T = response_ids.shape[1]
    positions = torch.arange(T, device=response_ids.device).expand_as(response_ids)
    first_eos = torch.where(hits, positions, torch.full_like(positions, T)).min(dim=1).values  # T when none
    mask = positions <= first_eos.unsqueeze(1)
    ids = response_ids.masked_fill(~mask, pad_token_id)
    return ids, mask


def whiten_scores(scores: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten sequence scores across the batch (unbiased std). Shapes: (B,) -> (B,); needs B >= 2."""
    return masked_whiten(scores, torch.ones_like(scores, dtype=torch.bool), shift_mean=shift_mean)


@dataclass
class RunningMoments:
    """Running mean and variance of reward_model scores over all batches so far.

    Merges batch statistics with Chan et al.'s parallel formula (as TRL's RunningMoments) so
    score normalisation does not jump with each small batch. ``var`` is the population variance.
    """

    mean: float = 0.0
    var: float = 0.0
    count: int = 0

    @property
    def std(self) -> float:
        """Unbiased std of everything seen; 1.0 until two values have been seen (nothing to scale by)."""
        if self.count < 2:
            return 1.0
        return (self.var * self.count / (self.count - 1)) ** 0.5

    @torch.no_grad()
    def update(self, xs: torch.Tensor) -> tuple[float, float]:
        """Add a batch of scores, any shape; returns the batch's own (mean, unbiased std)."""
        n = xs.numel()
        if n == 0:
            raise AlignError("RunningMoments.update got an empty tensor of scores")
        x = xs.detach().double().flatten()
        batch_mean = float(x.mean())
        batch_var = float(((x - batch_mean) ** 2).mean())
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        batch_std = (batch_var * n / (n - 1)) ** 0.5 if n > 1 else 0.0
        return batch_mean, batch_std

    def normalize(self, scores: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
        """(scores - mean) / std with the running statistics, or scores / std if not shift_mean."""
        centred = scores - self.mean if shift_mean else scores
        return centred / (self.std + eps)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"mean", "var", "count"} - set(state)
        if missing:
            raise AlignError(f"RunningMoments state is missing keys {sorted(missing)}")
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])
