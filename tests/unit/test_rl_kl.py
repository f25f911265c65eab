"""align.rl.kl: Schulman's estimators and the Ziegler et al. adaptive controller, by hand."""

import math

import pytest
import torch

from align.errors import AlignError
from align.rl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3, per_token_kl

# logp - ref_logp = [0.5, -1.0]; log r = ref_logp - logp = [-0.5, 1.0]
LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])


def test_k1_hand_values():
    assert kl_k1(LOGP, REF).tolist() == [pytest.approx([0.5, -1.0])]


def test_k2_hand_values():
    assert kl_k2(LOGP, REF).tolist() == [pytest.approx([0.125, 0.5])]


def test_k3_hand_values():
    # (e^-0.5 - 1) + 0.5 = 0.10653066 ; (e^1 - 1) - 1 = 0.71828183
    assert kl_k3(LOGP, REF).tolist() == [pytest.approx([0.10653066, 0.71828183])]


def test_estimators_zero_when_policies_agree():
    for estimator in ("k1", "k2", "k3"):
        assert torch.all(per_token_kl(LOGP, LOGP.clone(), estimator) == 0)


def test_k2_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    assert torch.all(kl_k2(a, b) >= 0)
    assert torch.all(kl_k3(a, b) >= 0)


def test_k1_and_k3_are_unbiased_for_kl_policy_to_ref():
    # Exact expectation over tokens x ~ policy q, not sampling: E_q[k] must equal KL(q || p).
    q = [0.5, 0.3, 0.2]  # policy
    p = [0.2, 0.3, 0.5]  # ref_policy
    exact_kl = 0.5 * math.log(0.5 / 0.2) + 0.2 * math.log(0.2 / 0.5)  # = 0.3 * ln 2.5 = 0.274887
    logq, logp = torch.tensor([q]).log(), torch.tensor([p]).log()
    weights = torch.tensor(q)
    for estimator in ("k1", "k3"):
        expected = (weights * per_token_kl(logq, logp, estimator)[0]).sum().item()
        assert expected == pytest.approx(exact_kl, rel=1e-5), estimator
    # k2 is biased: E_q[0.5 (log q/p)^2] = 0.5 * (0.5 + 0.2) * ln(2.5)^2 = 0.293856
    biased = (weights * per_token_kl(logq, logp, "k2")[0]).sum().item()
    assert biased == pytest.approx(0.293856, rel=1e-4)


def test_unknown_estimator_and_shape_mismatch():
    with pytest.raises(AlignError, match="unknown kl_estimator"):
        per_token_kl(LOGP, REF, "k4")
    with pytest.raises(AlignError, match="shape"):
        per_token_kl(LOGP, REF[:, :1])


def test_adaptive_controller_follows_ziegler_update():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 8 > target: error 8/6 - 1 = 0.333 clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512
    assert ctl.update(8.0, n_steps=256) == pytest.approx(0.100512)
    # KL 3 < target: error -0.5 clipped to -0.2; mult = 1 - 0.2 * 100 / 10000 = 0.998
    assert ctl.update(torch.tensor(3.0), n_steps=100) == pytest.approx(0.100512 * 0.998)
    # KL 6.6: error 0.1 inside the clip band; mult = 1 + 0.1 * 1000 / 10000 = 1.01
    assert ctl.update(6.6, n_steps=1000) == pytest.approx(0.100512 * 0.998 * 1.01)
    assert ctl.value == pytest.approx(0.10131409, rel=1e-6)


def test_adaptive_controller_at_target_is_unchanged():
    ctl = AdaptiveKLController(0.2, target=4.0, horizon=100)
    assert ctl.update(4.0, n_steps=64) == pytest.approx(0.2)


def test_adaptive_controller_state_round_trip():
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(8.0, 256)
    resumed = AdaptiveKLController(0.1, 6.0, 10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value == pytest.approx(0.100512)
    assert resumed.update(3.0, 100) == ctl.update(3.0, 100)


def test_controller_rejects_bad_settings_and_state():
    with pytest.raises(AlignError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(AlignError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)
    with pytest.raises(AlignError, match="init_kl_coef"):
        AdaptiveKLController(-0.1, target=6.0, horizon=10)
    with pytest.raises(AlignError, match="non-finite"):
        AdaptiveKLController(0.1, 6.0, 10).update(float("nan"), 8)
    with pytest.raises(AlignError, match="'fixed'"):
        AdaptiveKLController(0.1, 6.0, 10).load_state_dict(FixedKLController(0.3).state_dict())
    with pytest.raises(AlignError, match="'value'"):
        FixedKLController(0.3).load_state_dict({})


def test_fixed_controller_never_moves_and_round_trips():
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 512) == 0.05
    assert ctl.update(0.0, 512) == 0.05
    other = FixedKLController(0.9)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
