"""Generalised advantage estimation (Schulman et al. 2016) over right-padded response tokens."""

from __future__ import annotations

import torch

from align.errors import AlignError
from align.rl.masked import _require_right_padded, masked_whiten


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for each response token.

    The episode ends at the last valid token: rewards and values at padded positions are taken
    as 0, so nothing is bootstrapped past the end. returns = advantages + values is the value
    model's regression target.

    Shapes: rewards (B, T), values (B, T), mask (B, T) right-padded -> advantages (B, T),
    returns (B, T); both 0 at padded positions.
    """
    m = _require_right_padded(mask, "mask")
    if rewards.shape != m.shape or values.shape != m.shape:
        raise AlignError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(m.shape)} "
            "must all have the same (B, T) shape"
        )
    mf = m.to(values.dtype)
    rewards = rewards * mf
    values = values * mf
    T = rewards.shape[1]
    last_gae = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        # delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = advantages + values
    return advantages * mf, returns * mf


def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit (unbiased) variance over the valid tokens; padded positions set to 0.

    Whiten after computing returns: the value model regresses on the raw returns.
    Shapes: advantages (B, T), mask (B, T) -> (B, T).
    """
    return masked_whiten(advantages, mask, shift_mean=True) * mask.to(advantages.dtype)
