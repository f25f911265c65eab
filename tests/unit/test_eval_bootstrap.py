"""The paired bootstrap interval for a gain over a baseline."""

from __future__ import annotations

import random

import pytest

from align.errors import AlignError
from align.eval.bootstrap import format_gain, paired_bootstrap


def test_constant_difference_gives_a_zero_width_interval_at_that_difference():
    r = paired_bootstrap([0.5, 0.75, 1.0], [0.25, 0.5, 0.75], resamples=200)
    assert r["gain"] == pytest.approx(0.25)
    assert r["ci_low"] == pytest.approx(0.25) and r["ci_high"] == pytest.approx(0.25)
    assert r["stderr"] == pytest.approx(0.0, abs=1e-12) and r["p_not_positive"] == 0.0


def test_interval_matches_the_normal_approximation_for_many_prompts():
    rng = random.Random(1)
    diffs = [rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0]) for _ in range(400)]
    r = paired_bootstrap(diffs, [0.0] * len(diffs), resamples=4000, seed=3)
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 / len(diffs) ** 0.5
    assert r["gain"] == pytest.approx(mean)
    # percentile interval of a mean of 400 draws: within 15% of mean +- 1.96 standard errors
    assert r["ci_low"] == pytest.approx(mean - 1.96 * sd, abs=0.15 * 1.96 * sd)
    assert r["ci_high"] == pytest.approx(mean + 1.96 * sd, abs=0.15 * 1.96 * sd)
    assert r["stderr"] == pytest.approx(sd, rel=0.1)


def test_pairing_removes_prompt_difficulty():
    """Scores that vary a lot across prompts but always beat the baseline by 0.1 have a tight interval."""
    base = [i / 20 for i in range(20)]
    better = [b + 0.1 for b in base]
    r = paired_bootstrap(better, base, resamples=500)
    assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)


def test_seeded_and_an_interval_that_straddles_zero_for_no_effect():
    a = [1.0, 0.0] * 10
    b = [0.0, 1.0] * 10
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    r = paired_bootstrap(a, b, resamples=2000)
    assert r["ci_low"] < 0 < r["ci_high"] and 0.3 < r["p_not_positive"] < 0.7
    assert format_gain({"gain": 0.1, "ci_low": -0.05, "ci_high": 0.25}) == "+0.100 [-0.050, +0.250]"


@pytest.mark.parametrize("args", [([1.0], [1.0, 2.0]), ([], []), ([float("nan")], [0.0])])
def test_bad_input_is_a_clear_error(args):
    with pytest.raises(AlignError, match="paired_bootstrap"):
        paired_bootstrap(*args)


def test_prompt_bootstrap_accuracy_pools_pairs_and_resamples_prompts():
    from align.eval.bootstrap import prompt_bootstrap_accuracy

    # 3 prompts: 6/6, 3/6 and 0/1 right → pooled 9/13, not the mean of per-prompt accuracies (0.5)
    out = prompt_bootstrap_accuracy([6.0, 3.0, 0.0], [6, 6, 1], resamples=2000)
    assert out["accuracy"] == pytest.approx(9 / 13)
    assert out["prompts"] == 3 and out["pairs"] == 13
    assert 0.0 <= out["ci_low"] < out["accuracy"] < out["ci_high"] <= 1.0
    assert out == prompt_bootstrap_accuracy([6.0, 3.0, 0.0], [6, 6, 1], resamples=2000)  # seeded


def test_prompt_bootstrap_accuracy_is_wider_than_treating_pairs_as_independent():
    from align.eval.bootstrap import prompt_bootstrap_accuracy

    # 10 prompts, all-right or all-wrong: the pairs of a prompt move together, so the interval must reflect
    # 10 draws, not 60; the same 36/60 spread over 60 one-pair "prompts" gives a narrower interval
    clustered = prompt_bootstrap_accuracy([6.0] * 6 + [0.0] * 4, [6] * 10, resamples=4000)
    independent = prompt_bootstrap_accuracy([1.0] * 36 + [0.0] * 24, [1] * 60, resamples=4000)
    assert clustered["accuracy"] == independent["accuracy"] == pytest.approx(0.6)
    assert clustered["ci_high"] - clustered["ci_low"] > 1.5 * (independent["ci_high"] - independent["ci_low"])


def test_prompt_bootstrap_accuracy_rejects_bad_input():
    from align.eval.bootstrap import prompt_bootstrap_accuracy

    with pytest.raises(AlignError, match="2 correct counts but 1 pair counts"):
        prompt_bootstrap_accuracy([1.0, 0.0], [1])
    with pytest.raises(AlignError, match="no pairs"):
        prompt_bootstrap_accuracy([0.0], [0])
