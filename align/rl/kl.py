"""KL between the policy and the ref_policy, per token, and the controllers that set its weight.

The estimators are Schulman's (http://joschu.net/blog/kl-approx.html) for KL(policy || ref_policy)
from tokens sampled from the policy. With log r = ref_logp - logp:

- k1 = -log r = logp - ref_logp         unbiased, high variance, can be negative per token
- k2 = 0.5 * (log r)^2                  biased, low variance, >= 0
- k3 = (r - 1) - log r                  unbiased, low variance, >= 0

k3 exponentiates ref_logp - logp, so tokens the policy finds far less likely than the
ref_policy give huge values; k1 (InstructGPT, Ziegler et al.) is the default for reward shaping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from align.errors import AlignError


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logp - ref_logp. Shapes: (B, T), (B, T) -> (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2. Shapes: (B, T), (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = p_ref / p_policy. Shapes: (B, T), (B, T) -> (B, T)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio  # expm1: exact near r = 1, where most tokens sit


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate by name ("k1", "k2" or "k3"). Shapes: (B, T), (B, T) -> (B, T)."""
    if estimator not in KL_ESTIMATORS:
        raise AlignError(f"unknown kl_estimator {estimator!r}; expected one of {sorted(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise AlignError(
            f"logprobs shape {tuple(logprobs.shape)} must equal ref_logprobs shape {tuple(ref_logprobs.shape)}"
        )
    return KL_ESTIMATORS[estimator](logprobs, ref_logprobs)


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences", 2.2).

    After each batch: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n_steps / horizon.
    The coefficient drifts up while the measured KL is above target and down while below.
    """

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if not init_kl_coef >= 0:
            raise AlignError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if not target > 0:
            raise AlignError(f"target (KL in nats) must be > 0, got {target}")
        if not horizon > 0:
            raise AlignError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Move the coefficient toward the target KL; n_steps = samples (episodes) in the batch."""
        current = float(current_kl)
        if not math.isfinite(current):
            raise AlignError(f"KL controller got a non-finite KL ({current}); the policy has diverged")
        if n_steps < 0:
            raise AlignError(f"n_steps must be >= 0, got {n_steps}")
        proportional_error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The coefficient only: target and horizon are settings and come from the recipe on resume."""
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _load_value(state, self.kind)


class FixedKLController:
    """A constant KL coefficient; ``update`` is a no-op so both controllers are interchangeable."""

    kind = "fixed"

    def __init__(self, kl_coef: float) -> None:
        if not kl_coef >= 0:
            raise AlignError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _load_value(state, self.kind)


def _load_value(state: dict[str, Any], kind: str) -> float:
    if not isinstance(state, dict) or "value" not in state:
        raise AlignError(f"KL controller state must be a dict with key 'value', got {state!r}")
    if state.get("kind", kind) != kind:
        raise AlignError(f"KL controller state is for a {state['kind']!r} controller, not {kind!r}")
    return float(state["value"])
