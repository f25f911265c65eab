"""align.rl.shaping: reward shaping, EOS handling and score normalisation on hand-computed cases."""

import math

import pytest
import torch

from align.errors import AlignError
from align.rl import (
    RunningMoments,
    apply_missing_eos_penalty,
    has_eos,
    shape_rewards,
    truncate_after_eos,
    whiten_scores,
)

# Row 0 has 3 valid tokens, row 1 has 2 (right-padded).
LOGP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]])
REF = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, -2.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
SCORES = torch.tensor([2.0, -1.0])


def test_shape_rewards_k1_hand_values():
    rewards, kl = shape_rewards(SCORES, LOGP, REF, MASK, kl_coef=0.1)
    # k1 = logp - ref = [[0.5, -1, 0], [0.5, 0, 1]]; padded position zeroed
    assert kl.tolist() == [pytest.approx([0.5, -1.0, 0.0]), pytest.approx([0.5, 0.0, 0.0])]
    # -0.1 * kl, plus the score at the last valid token (t=2 for row 0, t=1 for row 1)
    assert rewards.tolist() == [pytest.approx([-0.05, 0.1, 2.0]), pytest.approx([-0.05, -1.0, 0.0])]


def test_shape_rewards_k3_estimator():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    rewards, kl = shape_rewards(
        torch.tensor([1.0]), logp, ref, torch.ones(1, 2), kl_coef=0.5, kl_estimator="k3"
    )
    # k3 = [e^-0.5 - 1 + 0.5, e - 1 - 1] = [0.10653066, 0.71828183]
    assert kl.tolist() == [pytest.approx([0.10653066, 0.71828183])]
    assert rewards.tolist() == [pytest.approx([-0.05326533, 1.0 - 0.35914091])]


def test_shape_rewards_single_token_response():
    rewards, kl = shape_rewards(
        torch.tensor([3.0]),
        torch.tensor([[-1.0, -9.0, -9.0]]),
        torch.tensor([[-2.0, 0.0, 0.0]]),
        torch.tensor([[1, 0, 0]]),
        kl_coef=0.2,
    )
    # only t=0 counts: kl 1.0 -> reward -0.2 + 3.0
    assert kl.tolist() == [pytest.approx([1.0, 0.0, 0.0])]
    assert rewards.tolist() == [pytest.approx([2.8, 0.0, 0.0])]


def test_shape_rewards_all_masked_row_gets_nothing():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    rewards, kl = shape_rewards(SCORES, LOGP, REF, mask, kl_coef=0.1)
    assert rewards[1].tolist() == [0.0, 0.0, 0.0]
    assert kl[1].tolist() == [0.0, 0.0, 0.0]
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 2.0])


def test_shape_rewards_zero_kl_coef_is_score_only():
    rewards, _ = shape_rewards(SCORES, LOGP, REF, MASK, kl_coef=0.0)
    assert rewards.tolist() == [[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]]


def test_shape_rewards_rejects_left_padding_and_bad_shapes():
    with pytest.raises(AlignError, match="right-padded.*row 1"):
        shape_rewards(SCORES, LOGP, REF, torch.tensor([[1, 1, 1], [0, 1, 1]]), kl_coef=0.1)
    with pytest.raises(AlignError, match=r"scores must have shape \(B,\)"):
        shape_rewards(torch.tensor([1.0, 2.0, 3.0]), LOGP, REF, MASK, kl_coef=0.1)
    with pytest.raises(AlignError, match="unknown kl_estimator"):
        shape_rewards(SCORES, LOGP, REF, MASK, kl_coef=0.1, kl_estimator="abs")


def test_apply_missing_eos_penalty_replaces_and_does_not_mutate():
    scores = torch.tensor([1.0, 2.0, 3.0])
    out = apply_missing_eos_penalty(scores, torch.tensor([True, False, True]), penalty=-1.0)
    assert out.tolist() == [1.0, -1.0, 3.0]
    assert scores.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(AlignError, match="has_eos shape"):
        apply_missing_eos_penalty(scores, torch.tensor([True]), penalty=-1.0)


EOS, PAD = 2, 0
RAW = torch.tensor(
    [
        [5, 2, 7, 8],  # EOS in the middle
        [2, 9, 9, 9],  # EOS at position 0
        [5, 6, 7, 8],  # no EOS
        [5, 6, 7, 2],  # EOS last
        [5, 2, 2, 9],  # two EOS: the first one counts
    ]
)


def test_truncate_after_eos_hand_cases():
    ids, mask = truncate_after_eos(RAW, EOS, PAD)
    assert ids.tolist() == [[5, 2, 0, 0], [2, 0, 0, 0], [5, 6, 7, 8], [5, 6, 7, 2], [5, 2, 0, 0]]
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert mask.dtype == torch.bool
    assert RAW[0].tolist() == [5, 2, 7, 8]  # input untouched


def test_truncate_after_eos_when_pad_equals_eos():
    ids, mask = truncate_after_eos(torch.tensor([[5, 2, 7, 8]]), eos_token_id=2, pad_token_id=2)
    assert ids.tolist() == [[5, 2, 2, 2]]
    assert mask.int().tolist() == [[1, 1, 0, 0]]  # the mask, not ids != pad, tells the real tokens


def test_truncate_after_eos_several_stop_ids():
    ids, mask = truncate_after_eos(
        torch.tensor([[5, 3, 2, 8], [5, 6, 2, 3]]), eos_token_id=[2, 3], pad_token_id=0
    )
    assert ids.tolist() == [[5, 3, 0, 0], [5, 6, 2, 0]]
    assert mask.int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]


def test_has_eos():
    assert has_eos(RAW, EOS).tolist() == [True, True, False, True, True]
    with pytest.raises(AlignError, match="empty"):
        has_eos(RAW, [])


def test_truncate_then_shape_puts_score_on_the_eos_token():
    ids, mask = truncate_after_eos(RAW[:2], EOS, PAD)
    zeros = torch.zeros(2, 4)
    rewards, _ = shape_rewards(torch.tensor([1.0, 5.0]), zeros, zeros, mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 1.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]]


def test_whiten_scores_hand_values():
    # mean 7/3, unbiased var 7/3 -> (s - 7/3) / sqrt(7/3)
    out = whiten_scores(torch.tensor([1.0, 2.0, 4.0]))
    assert out.tolist() == pytest.approx([-0.872872, -0.218218, 1.091089], abs=1e-5)
    out = whiten_scores(torch.tensor([1.0, 2.0, 4.0]), shift_mean=False)
    assert out.tolist() == pytest.approx([1.460461, 2.115115, 3.424422], abs=1e-5)


def test_running_moments_merges_batches_like_one_big_batch():
    rm = RunningMoments()
    assert rm.std == 1.0  # nothing seen yet: no rescaling
    batch_mean, batch_std = rm.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert (batch_mean, batch_std) == (pytest.approx(2.5), pytest.approx(math.sqrt(5 / 3)))
    assert (rm.mean, rm.var, rm.count) == (pytest.approx(2.5), pytest.approx(1.25), 4)
    batch_mean, batch_std = rm.update(torch.tensor([10.0, 12.0]))
    assert (batch_mean, batch_std) == (pytest.approx(11.0), pytest.approx(math.sqrt(2.0)))
    # all six values 1, 2, 3, 4, 10, 12: mean 32/6, population var 274/6 - (32/6)^2 = 17.222222
    assert rm.mean == pytest.approx(32 / 6)
    assert rm.var == pytest.approx(17.222222, rel=1e-6)
    assert rm.std == pytest.approx(4.5460606, rel=1e-6)  # sqrt(17.222222 * 6 / 5)
    assert rm.count == 6


def test_running_moments_normalize_and_state_round_trip():
    rm = RunningMoments()
    rm.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(5 / 3)
    assert rm.normalize(torch.tensor([2.5, 4.0])).tolist() == pytest.approx([0.0, 1.5 / std])
    assert rm.normalize(torch.tensor([2.5]), shift_mean=False).tolist() == pytest.approx([2.5 / std])
    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert (other.mean, other.var, other.count) == (rm.mean, rm.var, rm.count)
    with pytest.raises(AlignError, match="missing keys"):
        other.load_state_dict({"mean": 0.0})
    with pytest.raises(AlignError, match="empty"):
        rm.update(torch.tensor([]))
