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


# --------------------------------------------------------------------------- critic-free estimators
#
# RLOO and GRPO need no value model: each query is sampled G times (a group of G consecutive rows)
# and the other samples of the same query serve as the baseline. A rollout's return is one number
# (the score minus the KL penalty summed over its tokens, gamma = 1) and its advantage is given to
# every one of its tokens.


def _groups(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B / G, G), rows of one group consecutive."""
    if returns.dim() != 1:
        raise AlignError(f"returns must have shape (B,), got {tuple(returns.shape)}")
    if group_size < 2:
        raise AlignError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if returns.shape[0] % group_size:
        raise AlignError(f"{returns.shape[0]} returns do not split into groups of {group_size}")
    return returns.view(-1, group_size)


def sequence_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted return of each rollout: the sum of its per-token rewards.

    Shapes: rewards (B, T), mask (B, T) -> (B,).
    """
    return (rewards * mask.to(rewards.dtype)).sum(dim=1)


def rloo_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): A_i = R_i - mean_{j != i} R_j.

    Each sample's baseline is the mean return of the other G - 1 samples of its query, so the
    baseline does not depend on the sample itself (unbiased). Equals G / (G - 1) * (R_i - mean_g R).
    Shapes: returns (B,) with groups of G consecutive rows -> (B,).
    """
    g = _groups(returns, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def grpo_advantages(returns: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4,
                    scores: torch.Tensor | None = None, flat_tol: float = 1e-8) -> torch.Tensor:
    """GRPO (Shao et al. 2024): A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased (as TRL).

    scale=False is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no division by
    the group std, which up-weights questions that are too easy or too hard (a difficulty bias).

    scores (B,), when given: a group whose scores are all equal (within flat_tol) is centred but not
    divided by its std. Its returns then differ only by the KL penalty (when the KL is in the reward),
    and dividing that by its own std would give unit-size advantages made of KL noise whatever beta is
    (scores all 1, KL sums [2, 2.5, 3, 2.2]: [0.97, -0.17, -1.32, 0.52] at beta 0.05 and 0.2 alike);
    unscaled they stay beta-sized. With the KL as a loss term (GRPO's own placement) they are 0.
    Shapes: returns (B,) with groups of G consecutive rows, scores (B,) -> (B,).
    """
    g = _groups(returns, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        std = g.std(dim=1, keepdim=True) + eps
        if scores is not None:
            s = _groups(scores, group_size)
            flat = (s.max(dim=1, keepdim=True).values - s.min(dim=1, keepdim=True).values) <= flat_tol
            std = torch.where(flat, torch.ones_like(std), std)
        centred = centred / std
    return centred.reshape(-1)


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One value per rollout on every one of its valid tokens. Shapes: (B,), (B, T) -> (B, T), 0 at padding."""
    if values.shape != (mask.shape[0],):
        raise AlignError(f"values must have shape (B,) = ({mask.shape[0]},), got {tuple(values.shape)}")
    return values.unsqueeze(1) * mask.to(values.dtype)
