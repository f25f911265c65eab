"""Reductions that ignore padded positions.

Every PPO quantity lives on a (B, T) grid of response tokens where right padding must not count,
so sums, means, variances and whitening all take a mask of the same shape (1 = real token).

The semantics follow TRL's former ``trl.core`` helpers (removed from TRL 1.x with the old PPO
trainer, which is why they are written out here), with one deliberate difference: a mean over
no valid entries is 0, not NaN, so one empty row cannot poison a batch loss.
"""

from __future__ import annotations

import torch

from align.errors import AlignError

WHITEN_EPS = 1e-8
"""Added to the variance before the reciprocal square root, as in TRL."""


def _as_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask as a float tensor of values' dtype and shape (bool or 0/1 masks accepted)."""
    if mask.shape != values.shape:
        raise AlignError(f"mask shape {tuple(mask.shape)} must equal values shape {tuple(values.shape)}")
    return mask.to(dtype=values.dtype)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of values where mask is 1.

    Shapes: values (B, T), mask (B, T) -> scalar if dim is None, else values reduced over dim,
    e.g. (B,) for dim=1.
    """
    m = _as_mask(values, mask)
    return (values * m).sum() if dim is None else (values * m).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of values where mask is 1; 0 where there is no valid entry (TRL gives NaN there).

    Shapes: values (B, T), mask (B, T) -> scalar if dim is None, else reduced over dim,
    e.g. (B,) per-row means for dim=1.
    """
    m = _as_mask(values, mask)
    if dim is None:
        return (values * m).sum() / m.sum().clamp(min=1.0)
    return (values * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


LOSS_AGGREGATIONS = ("token", "sequence", "constant")


def masked_aggregate(
    values: torch.Tensor, mask: torch.Tensor, how: str = "token", max_tokens: int | None = None
) -> torch.Tensor:
    """Reduce per-token losses to one number, in one of the ways RL for LMs does it.

    - token: the mean over every valid token of the batch (DAPO; PPO in lm-human-preferences).
    - sequence: each row's mean over its tokens, then the mean over rows with any token (GRPO as
      published: a token of a short response weighs more than one of a long response).
    - constant: the sum over valid tokens / (B * max_tokens) (Dr. GRPO: no length normalisation).

    Shapes: values (B, T), mask (B, T) -> scalar.
    """
    m = _as_mask(values, mask)
    if how == "token":
        return masked_mean(values, mask)
    if how == "sequence":
        lengths = m.sum(dim=1)
        rows = lengths > 0
        per_row = (values * m).sum(dim=1) / lengths.clamp(min=1.0)
        return per_row[rows].sum() / rows.sum().clamp(min=1)
    if how == "constant":
        if not max_tokens or max_tokens <= 0:
            raise AlignError("masked_aggregate: how='constant' needs max_tokens > 0 (the response length limit)")
        return (values * m).sum() / (values.shape[0] * max_tokens)
    raise AlignError(f"unknown loss aggregation {how!r}; expected one of {list(LOSS_AGGREGATIONS)}")


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of all values where mask is 1, Bessel-corrected when ``unbiased``.

    Shapes: values (B, T), mask (B, T) -> scalar. Raises AlignError when there are no valid
    entries, or only one with ``unbiased`` (the estimate would be NaN/inf): use a larger batch.
    """
    m = _as_mask(values, mask)
    n = m.sum()
    if n == 0:
        raise AlignError("masked_var: the mask selects no values; the batch has no valid response tokens")
    mean = (values * m).sum() / n
    variance = (((values - mean) ** 2) * m).sum() / n
    if unbiased:
        if n == 1:
            raise AlignError(
                "masked_var: the mask selects a single value, so the unbiased variance is undefined; "
                "use a larger (mini)batch or unbiased=False"
            )
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) with mean and unbiased var over the valid entries only.

    With ``shift_mean=False`` the mean is added back: the scale is normalised but not the offset
    (TRL uses this for rewards). Like TRL, padded positions are transformed too but never
    influence the statistics; zero them afterwards if they are read anywhere.

    Shapes: values (B, T), mask (B, T) -> (B, T).
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def _require_right_padded(mask: torch.Tensor, name: str = "response_mask") -> torch.Tensor:
    """Check that each row of a (B, T) mask is 1s then 0s; return it as bool.

    Rewards go on the last valid token and GAE bootstraps 0 past it, which only means
    something when responses are right-padded.
    """
    if mask.dim() != 2:
        raise AlignError(f"{name} must have shape (B, T), got {tuple(mask.shape)}")
    m = mask.bool()
    bad = m[:, 1:] & ~m[:, :-1]
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise AlignError(
            f"{name} must be right-padded (1s then 0s in each row), but row {row} has a valid token "
            f"after a padded one: {m[row].int().tolist()}"
        )
    return m
