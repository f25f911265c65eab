"""align.rl.advantages: GAE against hand-unrolled recursions and a plain-Python reference loop."""

import random

import pytest
import torch

from align.errors import AlignError
from align.rl import compute_gae, whiten_advantages


def _gae_reference(rewards, values, lengths, gamma, lam):
    """Scalar Python GAE on lists; the episode of row b is its first lengths[b] tokens."""
    advs, rets = [], []
    for r, v, n in zip(rewards, values, lengths, strict=True):
        T = len(r)
        a = [0.0] * T
        last = 0.0
        for t in reversed(range(n)):
            nv = v[t + 1] if t + 1 < n else 0.0
            last = r[t] + gamma * nv - v[t] + gamma * lam * last
            a[t] = last
        advs.append(a)
        rets.append([a[t] + v[t] if t < n else 0.0 for t in range(T)])
    return advs, rets


def test_gae_full_row_by_hand():
    # gamma 0.9, lam 0.8, rewards [1, 0, 2], values [0.5, 1.0, 1.5]
    # t=2: delta = 2 - 1.5 = 0.5                 A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35      A1 = 0.35 + 0.72*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4       A0 = 1.4 + 0.72*0.71 = 1.9112
    adv, ret = compute_gae(
        torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3), gamma=0.9, lam=0.8
    )
    assert adv.tolist() == [pytest.approx([1.9112, 0.71, 0.5])]
    assert ret.tolist() == [pytest.approx([2.4112, 1.71, 2.0])]


def test_gae_padded_row_ignores_values_and_rewards_past_the_end():
    # Row ends at t=1: value 7.0 and reward 99 at t=2 must not leak in.
    # t=1: delta = 2 + 0.9*0 - 1.0 = 1.0         A1 = 1.0
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4       A0 = 1.4 + 0.72*1.0 = 2.12
    adv, ret = compute_gae(
        torch.tensor([[1.0, 2.0, 99.0]]),
        torch.tensor([[0.5, 1.0, 7.0]]),
        torch.tensor([[1, 1, 0]]),
        gamma=0.9,
        lam=0.8,
    )
    assert adv.tolist() == [pytest.approx([2.12, 1.0, 0.0])]
    assert ret.tolist() == [pytest.approx([2.62, 2.0, 0.0])]


def test_gae_gamma_lam_one_is_monte_carlo_return():
    # returns = reward-to-go [3, 2, 2]; advantages = returns - values
    adv, ret = compute_gae(
        torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3), gamma=1.0, lam=1.0
    )
    assert ret.tolist() == [pytest.approx([3.0, 2.0, 2.0])]
    assert adv.tolist() == [pytest.approx([2.5, 1.0, 0.5])]


def test_gae_lam_zero_is_one_step_td_error():
    adv, _ = compute_gae(
        torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]]), torch.ones(1, 3), gamma=0.9, lam=0.0
    )
    assert adv.tolist() == [pytest.approx([1.4, 0.35, 0.5])]


def test_gae_single_token_and_all_masked_rows():
    adv, ret = compute_gae(
        torch.tensor([[3.0, 5.0], [4.0, 4.0]]),
        torch.tensor([[1.0, 9.0], [2.0, 2.0]]),
        torch.tensor([[1, 0], [0, 0]]),
        gamma=0.99,
        lam=0.95,
    )
    assert adv.tolist() == [[2.0, 0.0], [0.0, 0.0]]
    assert ret.tolist() == [[3.0, 0.0], [0.0, 0.0]]


def test_gae_matches_python_reference_on_random_batch():
    rng = random.Random(0)
    B, T, gamma, lam = 4, 6, 0.97, 0.9
    lengths = [6, 3, 1, 0]
    rewards = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    values = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    adv, ret = compute_gae(torch.tensor(rewards), torch.tensor(values), mask, gamma, lam)
    ref_adv, ref_ret = _gae_reference(rewards, values, lengths, gamma, lam)
    for b in range(B):
        assert adv[b].tolist() == pytest.approx(ref_adv[b], abs=1e-5)
        assert ret[b].tolist() == pytest.approx(ref_ret[b], abs=1e-5)


def test_gae_rejects_left_padding_and_shape_mismatch():
    with pytest.raises(AlignError, match="right-padded"):
        compute_gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[0, 1, 1]]), 1.0, 1.0)
    with pytest.raises(AlignError, match="same"):
        compute_gae(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 3), 1.0, 1.0)


def test_whiten_advantages_hand_values_and_zero_padding():
    adv = torch.tensor([[1.0, 2.0, 50.0], [4.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = whiten_advantages(adv, mask)
    # valid 1, 2, 4: (a - 7/3) / sqrt(7/3)
    assert out.tolist() == [
        pytest.approx([-0.872872, -0.218218, 0.0], abs=1e-5),
        pytest.approx([1.091089, 0.0, 0.0], abs=1e-5),
    ]
