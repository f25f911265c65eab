"""Pure-torch RL math for PPO on language models: masked ops, KL, reward shaping, GAE, losses.

Tensors are (B, T) over response tokens (right-padded, mask 1 = real token) unless noted.
"""

from align.rl.advantages import (
    broadcast_to_tokens,
    compute_gae,
    grpo_advantages,
    rloo_advantages,
    sequence_returns,
    whiten_advantages,
)
from align.rl.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    per_token_kl,
)
from align.rl.losses import (
    entropy_from_logits,
    kl_loss,
    logprobs_from_logits,
    ppo_policy_loss,
    ppo_value_loss,
)
from align.rl.masked import (
    LOSS_AGGREGATIONS,
    masked_aggregate,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from align.rl.shaping import (
    RunningMoments,
    apply_missing_eos_penalty,
    has_eos,
    shape_rewards,
    truncate_after_eos,
    whiten_scores,
)

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "AdaptiveKLController",
    "FixedKLController",
    "RunningMoments",
    "apply_missing_eos_penalty",
    "broadcast_to_tokens",
    "compute_gae",
    "entropy_from_logits",
    "grpo_advantages",
    "has_eos",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_loss",
    "logprobs_from_logits",
    "masked_aggregate",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "per_token_kl",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "sequence_returns",
    "shape_rewards",
    "truncate_after_eos",
    "whiten_advantages",
    "whiten_scores",
]
