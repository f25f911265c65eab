"""Win rates from scores and from a position-swapped pairwise judge."""

import math

import pytest

from align.errors import AlignError
from align.eval.winrate import judge_output_to_prob, judge_pairwise, pairwise_win_rate, win_rate


def test_win_rate_counts_ties_as_half():
    out = win_rate([1.0, 0.5, 0.2, 0.3], [0.5, 0.5, 0.9, 0.3])
    assert (out["n"], out["wins"], out["ties"], out["losses"]) == (4, 1, 2, 1)
    assert out["win_rate"] == pytest.approx(0.5)
    assert out["stderr"] == pytest.approx(math.sqrt((0.25 + 0 + 0.25 + 0) / 3 / 4))


def test_win_rate_extremes_and_tolerance():
    assert win_rate([1, 1], [0, 0])["win_rate"] == 1.0
    assert win_rate([1, 1], [0, 0])["stderr"] == 0.0
    assert win_rate([0.0], [1.0])["win_rate"] == 0.0
    assert win_rate([0.50], [0.52], tie_tolerance=0.05)["ties"] == 1
    assert win_rate([0.50], [0.52])["losses"] == 1


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [([1.0], [1.0, 2.0], "1 scores for A but 2"), ([], [], "no scores"), ([float("nan")], [1.0], "finite")],
)
def test_win_rate_rejects_bad_input(a, b, message):
    with pytest.raises(AlignError, match=message):
        win_rate(a, b)


def always_first(prompt, first, second):
    """A judge with pure position bias: it prefers whatever it reads first."""
    return "first"


def test_position_biased_judge_comes_out_a_tie():
    assert judge_pairwise(always_first, "q", "good answer", "bad") == 0.5
    assert judge_pairwise(lambda p, f, s: 0.9, "q", "a", "b") == pytest.approx(0.5)
    assert judge_pairwise(lambda p, f, s: "second", "q", "a", "b") == 0.5
    out = pairwise_win_rate(always_first, ["q1", "q2", "q3"], ["a", "b", "c"], ["x", "y", "z"])
    assert (out["wins"], out["ties"], out["losses"]) == (0, 3, 0)
    assert out["win_rate"] == 0.5 and out["mean_prob"] == 0.5


def longer_is_better_with_bias(prompt, first, second):
    """Prefers the longer response (P=0.7), plus a +0.2 push toward whichever comes first."""
    true_pref = 0.5 + 0.2 * ((len(first) > len(second)) - (len(first) < len(second)))
    return min(1.0, true_pref + 0.2)


def test_swapping_recovers_the_judges_real_preference():
    assert judge_pairwise(longer_is_better_with_bias, "q", "long answer", "short") == pytest.approx(0.7)
    assert judge_pairwise(longer_is_better_with_bias, "q", "short", "long answer") == pytest.approx(0.3)
    out = pairwise_win_rate(longer_is_better_with_bias, ["q"] * 3, ["long one", "s", "same"], ["s", "long one", "same"])
    assert (out["wins"], out["ties"], out["losses"]) == (1, 1, 1)


def test_judge_calls_see_both_orders():
    calls = []

    def recording_judge(prompt, first, second):
        calls.append((first, second))
        return "tie"

    judge_pairwise(recording_judge, "q", "A", "B")
    assert calls == [("A", "B"), ("B", "A")]


@pytest.mark.parametrize("bad", [1.5, -0.1, True, "maybe", None])
def test_bad_judge_outputs_are_rejected(bad):
    with pytest.raises(AlignError, match="judge returned"):
        judge_output_to_prob(bad)


def test_verdict_strings_are_case_and_space_insensitive():
    assert judge_output_to_prob(" First ") == 1.0
    assert judge_output_to_prob("TIE") == 0.5
    assert judge_output_to_prob(0) == 0.0
