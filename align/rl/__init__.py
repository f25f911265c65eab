"""Pure-torch RL math for PPO on language models: masked ops, KL, reward shaping, GAE, losses.

Tensors are (B, T) over response tokens (right-padded, mask 1 = real token) unless noted.
"""

from align.rl.advantages import compute_gae, whiten_advantages
from align.rl.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    per_token_kl,
)
from align.rl.losses import entropy_from_logits, logprobs_from_logits, ppo_policy_loss, ppo_value_loss
from align.rl.masked import masked_mean, masked_sum, masked_var, masked_whiten
from align.rl.rewards import (
    RunningMoments,
    apply_missing_eos_penalty,
    has_eos,
    shape_rewards,
    truncate_after_eos,
    whiten_scores,
)

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "apply_missing_eos_penalty",
    "compute_gae",
    "entropy_from_logits",
    "has_eos",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "per_token_kl",
    "ppo_policy_loss",
    "ppo_value_loss",
    "shape_rewards",
    "truncate_after_eos",
    "whiten_advantages",
    "whiten_scores",
]
