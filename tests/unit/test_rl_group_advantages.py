"""align.rl critic-free estimators (RLOO, GRPO, Dr. GRPO), loss aggregation and the k3 KL loss,
against values worked out by hand."""

import math

import pytest
import torch

from align.errors import AlignError
from align.rl import (
    broadcast_to_tokens,
    grpo_advantages,
    kl_loss,
    masked_aggregate,
    ppo_policy_loss,
    rloo_advantages,
    sequence_returns,
)


def test_rloo_leave_one_out_by_hand():
    # group 1: returns [1, 0, 0, 1]; sample 0's baseline = mean(0, 0, 1) = 1/3 -> A0 = 2/3
    #          sample 1's baseline = mean(1, 0, 1) = 2/3 -> A1 = -2/3
    # group 2: returns [3, 5, 4, 0]; A = 3 - 3 = 0, 5 - 7/3 = 8/3, 4 - 8/3 = 4/3, 0 - 4 = -4
    adv = rloo_advantages(torch.tensor([1.0, 0, 0, 1, 3, 5, 4, 0]), group_size=4)
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 8 / 3, 4 / 3, -4.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_rloo_with_two_samples_is_the_difference():
    assert rloo_advantages(torch.tensor([0.5, 2.0]), 2).tolist() == pytest.approx([-1.5, 1.5])


def test_grpo_normalises_within_groups_by_hand():
    # group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4)
    # group [2, 2, 2, 2]: all equal -> 0 (no signal, no division blow-up)
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2]), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv.tolist() == pytest.approx([a, -a, -a, a, 0, 0, 0, 0], abs=1e-6)


def test_dr_grpo_only_centres():
    # Dr. GRPO: returns minus the group mean, no std division
    adv = grpo_advantages(torch.tensor([3.0, 1.0, 10.0, 14.0]), group_size=2, scale=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, -2.0, 2.0])


def test_groups_must_fit():
    with pytest.raises(AlignError, match="groups of 3"):
        rloo_advantages(torch.zeros(4), 3)
    with pytest.raises(AlignError, match=">= 2"):
        grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(AlignError, match=r"\(B,\)"):
        rloo_advantages(torch.zeros(2, 2), 2)


def test_sequence_returns_and_broadcast():
    rewards = torch.tensor([[-0.1, -0.2, 1.0], [0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert sequence_returns(rewards, mask).tolist() == pytest.approx([0.7, 0.5])
    assert broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask).tolist() == [[2, 2, 2], [-1, 0, 0]]


def test_loss_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # token: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert float(masked_aggregate(values, mask, "token")) == pytest.approx(2.5)
    # sequence: mean(6 / 3, 4 / 1) = 3
    assert float(masked_aggregate(values, mask, "sequence")) == pytest.approx(3.0)
    # constant (Dr. GRPO): 10 / (2 rows * 8 max tokens) = 0.625
    assert float(masked_aggregate(values, mask, "constant", max_tokens=8)) == pytest.approx(0.625)
    with pytest.raises(AlignError, match="max_tokens"):
        masked_aggregate(values, mask, "constant")
    with pytest.raises(AlignError, match="unknown loss aggregation"):
        masked_aggregate(values, mask, "bogus")


def test_policy_loss_aggregation_changes_only_the_weighting():
    # ratio 1 everywhere: per-token loss = -A; A = [[1, 1, 1], [-3, 0, 0]] on masks of length 3 and 1
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    token, _ = ppo_policy_loss(logp, logp, adv, mask, 0.2)
    seq, _ = ppo_policy_loss(logp, logp, adv, mask, 0.2, aggregation="sequence")
    const, _ = ppo_policy_loss(logp, logp, adv, mask, 0.2, aggregation="constant", max_tokens=4)
    assert float(token) == pytest.approx((-3 + 3) / 4)  # 0
    assert float(seq) == pytest.approx((-1 + 3) / 2)  # 1
    assert float(const) == pytest.approx(0 / 8)


def test_k3_kl_loss_by_hand_and_its_gradient():
    # log r = ref - logp = log(0.5) on token 0, 0 on token 1: k3 = (0.5 - 1) - log 0.5 = 0.193147
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.5), -1.0]])
    loss = kl_loss(logp, ref, torch.ones(1, 2))
    assert float(loss.detach()) == pytest.approx((-0.5 + math.log(2)) / 2, abs=1e-6)
    loss.backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = 0.5 on token 0, 0 on token 1; / 2 tokens
    assert logp.grad.tolist() == [pytest.approx([0.25, 0.0], abs=1e-6)]


# Issue 22 item 4: one query group whose scores are all 1; its rollouts' KL sums are 2, 2.5, 3 and 2.2 nats.
FLAT_SCORES = torch.ones(4)
KL_SUMS = torch.tensor([2.0, 2.5, 3.0, 2.2])


def test_grpo_does_not_scale_kl_noise_of_a_flat_group_up_to_unit_size():
    for beta in (0.005, 0.05, 0.2):
        returns = FLAT_SCORES - beta * KL_SUMS  # KL in the reward
        # without the guard: (R - mean) / (std + eps) is unit-size noise whatever beta is: KL centred
        # [-0.425, 0.075, 0.575, -0.225], unbiased std 0.434933 -> about [0.97, -0.17, -1.32, 0.52]
        noisy = grpo_advantages(returns, group_size=4)
        scale = beta / (beta * 0.434933 + 1e-4)
        assert noisy.tolist() == pytest.approx([0.425 * scale, -0.075 * scale, -0.575 * scale, 0.225 * scale], abs=1e-4)
        assert noisy.abs().max() > 1.2
        # with the scores: a flat group is only centred, -beta * (KL - mean KL) = -beta * [-0.425, 0.075, 0.575, -0.225]
        guarded = grpo_advantages(returns, group_size=4, scores=FLAT_SCORES)
        assert guarded.tolist() == pytest.approx((beta * torch.tensor([0.425, -0.075, -0.575, 0.225])).tolist(), abs=1e-6)
    # a group whose scores differ is scaled as before: scores [1, 0, 1, 0] -> returns' std 0.57735 (unbiased)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert grpo_advantages(scores, 4, scores=scores).tolist() == pytest.approx([0.866, -0.866, 0.866, -0.866], abs=1e-3)


def _one_token_rollouts(scores: torch.Tensor, kl: torch.Tensor):
    from align.ppo.rollout import Rollouts

    b = len(scores)
    ones = torch.ones(b, 1)
    return Rollouts(queries=[[]] * b, query_ids=ones.long(), query_mask=ones.long(), response_ids=ones.long(),
                    response_mask=ones.bool(), has_eos=ones[:, 0].bool(), responses=[""] * b, raw_scores=scores,
                    scores=scores, logprobs=kl[:, None], ref_logprobs=torch.zeros(b, 1), values=None)


def test_grpo_puts_the_kl_in_the_loss_by_default_so_a_flat_group_has_zero_advantage():
    from align.ppo.config import PPOSettings
    from align.ppo.update import estimate_advantages

    grpo = PPOSettings(advantage={"estimator": "grpo"}, rollout={"batch_size": 4, "group_size": 4})
    assert grpo.kl_penalty == "loss"
    assert PPOSettings(advantage={"estimator": "rloo"}, rollout={"group_size": 4}).kl_penalty == "reward"
    assert PPOSettings().kl_penalty == "reward"  # gae: InstructGPT's placement
    adv = estimate_advantages(_one_token_rollouts(FLAT_SCORES, KL_SUMS), 0.05, grpo)
    assert adv.advantages.abs().max().item() == 0.0 and adv.flat_groups == 1.0
    in_reward = PPOSettings(advantage={"estimator": "grpo"}, rollout={"batch_size": 4, "group_size": 4},
                            kl={"penalty": "reward"})
    adv = estimate_advantages(_one_token_rollouts(FLAT_SCORES, KL_SUMS), 0.05, in_reward)
    assert adv.advantages[:, 0].tolist() == pytest.approx([0.02125, -0.00375, -0.02875, 0.01125], abs=1e-6)


def test_std_scaling_with_kl_in_the_reward_warns_at_config_time(caplog):
    from align.ppo.config import PPOSettings

    with caplog.at_level("WARNING", logger="align.ppo"):
        PPOSettings(advantage={"estimator": "grpo"}, rollout={"group_size": 4})
        PPOSettings(advantage={"estimator": "grpo", "dr_grpo": True}, rollout={"group_size": 4},
                    kl={"penalty": "reward"})
    assert not caplog.records  # KL in the loss, or no std scaling: nothing to warn about
    with caplog.at_level("WARNING", logger="align.ppo"):
        PPOSettings(advantage={"estimator": "grpo"}, rollout={"group_size": 4}, kl={"penalty": "reward"})
    assert "kl.penalty reward puts the KL in those returns" in caplog.text
