"""PPO objectives (clipped policy and value losses) and the per-token quantities they need.

All losses are token-level masked means over the minibatch, as in OpenAI's lm-human-preferences
and TRL's PPO. Stats are detached 0-dim tensors (no device sync per minibatch), named like
alpaca_farm's: ``loss/policy``, ``policy/clipfrac``, ``val/clipfrac``.

``logprobs_from_logits`` and ``entropy_from_logits`` mirror ``trl.trainer.utils.selective_log_softmax``
and ``entropy_from_logits``; they are written out here so ``align.rl`` depends on torch alone and
not on a TRL-internal module whose contents moved between releases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.errors import AlignError
from align.rl.kl import kl_k3
from align.rl.masked import masked_aggregate, masked_mean


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise AlignError(f"temperature must be > 0, got {temperature}")


def _row_logits(row: torch.Tensor, temperature: float) -> torch.Tensor:
    """One batch row of logits in float32 or better, divided by the temperature."""
    if row.dtype not in (torch.float32, torch.float64):
        row = row.float()  # log_softmax in bf16/fp16 loses the precision exp(logp - old_logp) needs
    return row / temperature if temperature != 1.0 else row


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log softmax(logits / temperature)[labels], one batch row at a time to bound peak memory.

    Use the temperature the rollouts were sampled with, so the PPO ratio compares the same
    distribution that produced the tokens. logits[:, t] must already be the prediction for
    labels[:, t] (shift by one before calling). Padded labels must still be valid ids; mask later.

    Shapes: logits (B, T, V), labels (B, T) int -> (B, T), float32 for half-precision logits.
    """
    _check_temperature(temperature)
    if logits.shape[:-1] != labels.shape:
        raise AlignError(
            f"logits shape {tuple(logits.shape)} must be labels shape {tuple(labels.shape)} plus a vocab dim"
        )
    rows = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        row = _row_logits(row_logits, temperature)
        selected = row.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        rows.append(selected - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy in nats of softmax(logits / temperature) per position, one batch row at a time.

    Shapes: logits (B, T, V) -> (B, T).
    """
    _check_temperature(temperature)
    rows = []
    for row_logits in logits:
        logp = F.log_softmax(_row_logits(row_logits, temperature), dim=-1)
        # tokens filtered to -inf have p = 0 and contribute 0, not 0 * -inf = NaN
        finite_logp = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
        rows.append(-(logp.exp() * finite_logp).sum(dim=-1))
    return torch.stack(rows)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    aggregation: str = "token",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss: mean_t max(-A_t * r_t, -A_t * clip(r_t, 1 - eps, 1 + eps)).

    The mean over tokens is taken as ``aggregation`` says (see masked_aggregate; default: over all
    tokens of the batch).

    r_t = exp(logprobs - old_logprobs). Gradients flow through ``logprobs`` only.
    Stats: loss/policy, policy/clipfrac (share of tokens where the clipped term is active),
    policy/approxkl (0.5 * mean((logp - old_logp)^2)), policy/ratio_mean.

    Shapes: logprobs, old_logprobs, advantages, mask all (B, T) -> scalar loss, dict of scalars.
    """
    if clip_range < 0:
        raise AlignError(f"clip_range must be >= 0, got {clip_range}")
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_aggregate(torch.maximum(pg_losses, pg_losses_clipped), mask, aggregation, max_tokens)
    with torch.no_grad():
        stats = {
            "loss/policy": loss.detach(),
            "policy/clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(ratio.dtype), mask),
            "policy/approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "policy/ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean_t max((V - R)^2, (V_clip - R)^2).

    V_clip = old_values + clip(values - old_values, -eps, eps) keeps the value model from moving
    far from its rollout-time predictions in one update. Gradients flow through ``values`` only.
    Stats: loss/value, val/clipfrac (share of tokens where the clipped term is larger),
    val/vpred (mean prediction), val/error (mean unclipped squared error).

    Shapes: values, old_values, returns, mask all (B, T) -> scalar loss, dict of scalars.
    """
    if clip_range_value < 0:
        raise AlignError(f"clip_range_value must be >= 0, got {clip_range_value}")
    old_values, returns = old_values.detach(), returns.detach()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "loss/value": loss.detach(),
            "val/clipfrac": masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask),
            "val/vpred": masked_mean(values, mask),
            "val/error": masked_mean(vf_losses, mask),
        }
    return loss, stats


def kl_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    aggregation: str = "token",
    max_tokens: int | None = None,
) -> torch.Tensor:
    """GRPO's KL term: k3 estimate of KL(policy || ref_policy) per token, aggregated like the policy loss.

    Added to the loss (times beta) instead of being subtracted from the reward; gradients flow
    through ``logprobs`` only. Shapes: logprobs, ref_logprobs, mask (B, T) -> scalar.
    """
    return masked_aggregate(kl_k3(logprobs, ref_logprobs.detach()), mask, aggregation, max_tokens)
