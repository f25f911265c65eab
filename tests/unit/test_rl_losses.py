"""align.rl.losses: PPO losses, log-probs and entropy on hand-computed values, plus gradient checks."""

import math

import pytest
import torch

from align.errors import AlignError
from align.rl import entropy_from_logits, logprobs_from_logits, ppo_policy_loss, ppo_value_loss

# ratios r = [1.5, 0.5, 1.1, 0.7], advantages [1, 1, -1, -2], clip 0.2:
#   t0: max(-1.5, -1.2) = -1.2 (clipped)   t1: max(-0.5, -0.8) = -0.5
#   t2: max( 1.1,  1.1) =  1.1             t3: max( 1.4,  1.6) =  1.6 (clipped)
RATIOS = [1.5, 0.5, 1.1, 0.7]
LOGP = torch.tensor([[math.log(r) for r in RATIOS]])
OLD = torch.zeros(1, 4)
ADV = torch.tensor([[1.0, 1.0, -1.0, -2.0]])


def test_policy_loss_hand_values():
    loss, stats = ppo_policy_loss(LOGP, OLD, ADV, torch.ones(1, 4), clip_range=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 1.6) / 4)  # 0.25
    assert stats["loss/policy"].item() == pytest.approx(0.25)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)
    assert stats["policy/ratio_mean"].item() == pytest.approx(0.95)
    approxkl = 0.5 * sum(math.log(r) ** 2 for r in RATIOS) / 4  # 0.0976445
    assert stats["policy/approxkl"].item() == pytest.approx(approxkl, rel=1e-5)
    assert stats["policy/approxkl"].item() == pytest.approx(0.0976445, rel=1e-4)
    assert all(not v.requires_grad for v in stats.values())


def test_policy_loss_masks_tokens():
    loss, stats = ppo_policy_loss(LOGP, OLD, ADV, torch.tensor([[1, 1, 0, 0]]), clip_range=0.2)
    assert loss.item() == pytest.approx(-0.85)  # mean(-1.2, -0.5)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)
    assert stats["policy/ratio_mean"].item() == pytest.approx(1.0)


def test_policy_loss_all_masked_is_zero_not_nan():
    loss, stats = ppo_policy_loss(LOGP, OLD, ADV, torch.zeros(1, 4), clip_range=0.2)
    assert loss.item() == 0.0
    assert not any(torch.isnan(v) for v in stats.values())


def test_policy_loss_on_policy_equals_minus_mean_advantage():
    loss, stats = ppo_policy_loss(OLD.clone(), OLD, ADV, torch.ones(1, 4), clip_range=0.2)
    assert loss.item() == pytest.approx(0.25)  # -mean(1, 1, -1, -2)
    assert stats["policy/clipfrac"].item() == 0.0
    assert stats["policy/approxkl"].item() == 0.0


def test_policy_loss_gradient_zero_on_clipped_tokens():
    logp = LOGP.clone().requires_grad_(True)
    loss, _ = ppo_policy_loss(logp, OLD, ADV, torch.ones(1, 4), clip_range=0.2)
    loss.backward()
    # d/dlogp of -A r / 4 = -A r / 4 on unclipped tokens; clipped tokens (t0, t3) get 0
    assert logp.grad.tolist() == [pytest.approx([0.0, -0.125, 0.275, 0.0])]


def _one_step_logprob_change(advantage: float) -> float:
    """Take one SGD step on the PPO loss for token 1 at position 0 and return the change in its log-prob."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 5, requires_grad=True)  # (B, T, V)
    labels = torch.tensor([[1, 3]])
    mask = torch.tensor([[1, 0]])
    advantages = torch.tensor([[advantage, 0.0]])
    before = logprobs_from_logits(logits, labels).detach()
    loss, _ = ppo_policy_loss(logprobs_from_logits(logits, labels), before, advantages, mask, clip_range=0.2)
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = logprobs_from_logits(logits, labels).detach()
    return (after - before)[0, 0].item()


def test_gradient_step_with_positive_advantage_raises_token_logprob():
    assert _one_step_logprob_change(+1.0) > 1e-3


def test_gradient_step_with_negative_advantage_lowers_token_logprob():
    assert _one_step_logprob_change(-1.0) < -1e-3


def test_value_loss_hand_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0]])
    old = torch.tensor([[1.0, 1.5, 3.5, 2.5]])
    returns = torch.full((1, 4), 2.0)
    # t0: unclipped 1, clipped 1 -> 1          t1: v moved 0.5, clip to 1.7: max(0, 0.09) = 0.09 (clipped)
    # t2: clip to 3.3: max(1, 1.69) = 1.69 (clipped)   t3: clip to 2.7: max(1, 0.49) = 1
    loss, stats = ppo_value_loss(values, old, returns, torch.ones(1, 4), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (1 + 0.09 + 1.69 + 1) / 4)  # 0.4725
    assert stats["loss/value"].item() == pytest.approx(0.4725)
    assert stats["val/clipfrac"].item() == pytest.approx(0.5)
    assert stats["val/vpred"].item() == pytest.approx(2.25)
    assert stats["val/error"].item() == pytest.approx((1 + 0 + 1 + 1) / 4)


def test_value_loss_masks_tokens_and_gradient():
    values = torch.tensor([[1.0, 2.0, 3.0, 3.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.5, 3.5, 2.5]])
    loss, stats = ppo_value_loss(values, old, torch.full((1, 4), 2.0), torch.tensor([[1, 0, 0, 1]]), 0.2)
    assert loss.item() == pytest.approx(0.5 * (1 + 1) / 2)
    assert stats["val/clipfrac"].item() == 0.0
    loss.backward()
    # d/dv 0.5 * (v - R)^2 / 2 = (v - R) / 2 on the two valid unclipped tokens
    assert values.grad.tolist() == [pytest.approx([-0.5, 0.0, 0.0, 0.5])]


def test_losses_reject_negative_clip():
    with pytest.raises(AlignError, match="clip_range"):
        ppo_policy_loss(LOGP, OLD, ADV, torch.ones(1, 4), clip_range=-0.1)
    with pytest.raises(AlignError, match="clip_range_value"):
        ppo_value_loss(LOGP, OLD, ADV, torch.ones(1, 4), clip_range_value=-0.1)


LN3 = math.log(3.0)


def test_logprobs_from_logits_hand_values_and_shape():
    # softmax([0, ln 3]) = [0.25, 0.75]; uniform over 2 -> ln 0.5
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3], [5.0, 5.0]]])  # (B=1, T=3, V=2)
    labels = torch.tensor([[1, 0, 1]])
    out = logprobs_from_logits(logits, labels)
    assert out.shape == (1, 3)
    assert out.tolist() == [pytest.approx([math.log(0.75), math.log(0.25), math.log(0.5)])]


def test_logprobs_from_logits_temperature_divides_logits_first():
    # logits [0, 2 ln 3] at temperature 2 are [0, ln 3]: log-probs ln 0.75, ln 0.25
    logits = torch.tensor([[[0.0, 2 * LN3], [0.0, 2 * LN3]]])
    out = logprobs_from_logits(logits, torch.tensor([[1, 0]]), temperature=2.0)
    assert out.tolist() == [pytest.approx([math.log(0.75), math.log(0.25)])]
    # at temperature 1 the same logits give softmax([0, ln 9]) = [0.1, 0.9]
    assert logprobs_from_logits(logits, torch.tensor([[1, 0]])).tolist() == [
        pytest.approx([math.log(0.9), math.log(0.1)])
    ]
    with pytest.raises(AlignError, match="temperature"):
        logprobs_from_logits(logits, torch.tensor([[1, 0]]), temperature=0.0)


def test_logprobs_from_logits_matches_naive_and_bf16_is_close_in_float32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g)
    labels = torch.randint(0, 11, (3, 4), generator=g)
    naive = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels, temperature=0.7), naive, atol=1e-6)
    low = logprobs_from_logits(logits.bfloat16(), labels, temperature=0.7)
    assert low.dtype == torch.float32
    assert torch.allclose(low, naive, atol=3e-2)
    with pytest.raises(AlignError, match="labels shape"):
        logprobs_from_logits(logits, labels[:, :2])


def test_entropy_from_logits_hand_values():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, LN3, -math.inf, -math.inf]]])
    out = entropy_from_logits(logits)
    assert out.shape == (1, 2)
    # uniform over 4: ln 4 ; [0.25, 0.75]: 0.25 ln 4 + 0.75 ln(4/3) = 0.562335
    assert out[0, 0].item() == pytest.approx(math.log(4.0))
    # -inf logits (filtered tokens) have p = 0 and add nothing, rather than NaN
    assert out[0, 1].item() == pytest.approx(0.562335, abs=1e-6)


def test_entropy_from_logits_two_way_and_temperature():
    expected = 0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0)  # 0.562335
    assert expected == pytest.approx(0.562335, abs=1e-6)
    assert entropy_from_logits(torch.tensor([[[0.0, LN3]]])).item() == pytest.approx(expected)
    assert entropy_from_logits(torch.tensor([[[0.0, 2 * LN3]]]), temperature=2.0).item() == pytest.approx(
        expected
    )


def test_entropy_gradient_finite_with_filtered_tokens():
    logits = torch.tensor([[[0.0, LN3, -math.inf]]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # dH/dz_i = -p_i (log p_i + H): for p = [0.25, 0.75], H = 0.562335
    h = 0.562335
    assert logits.grad[0, 0, :2].tolist() == pytest.approx(
        [-0.25 * (math.log(0.25) + h), -0.75 * (math.log(0.75) + h)], abs=1e-5
    )
