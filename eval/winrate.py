"""Win rate of policy A over policy B, from per-prompt scores or from a pairwise judge.

LLM judges prefer whichever response they read first (position bias). `judge_pairwise` asks in both
orders and averages, so a judge that always says "first" comes out as an exact tie.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from align.errors import AlignError

JudgeOutput = float | str
# judge_fn(prompt, first, second) -> probability that `first` is better, or "first" / "second" / "tie".
JudgeFn = Callable[[str, str, str], JudgeOutput]

_VERDICTS = {"first": 1.0, "second": 0.0, "tie": 0.5}


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], *, tie_tolerance: float = 0.0) -> dict[str, float]:
    """Compare aligned per-prompt scores. A prompt is a tie when |a - b| <= tie_tolerance.

    Returns {"n", "wins", "ties", "losses", "win_rate" (ties count half), "stderr" (of win_rate over
    prompts)}.
    """
    if len(scores_a) != len(scores_b):
        raise AlignError(f"win_rate: {len(scores_a)} scores for A but {len(scores_b)} for B")
    if not scores_a:
        raise AlignError("win_rate: no scores given")
    if tie_tolerance < 0:
        raise AlignError(f"win_rate: tie_tolerance must be >= 0, got {tie_tolerance}")
    outcomes = []
    for i, (a, b) in enumerate(zip(scores_a, scores_b, strict=True)):
        if not (math.isfinite(a) and math.isfinite(b)):
            raise AlignError(f"win_rate: score {i} is not a finite number (A={a!r}, B={b!r})")
        outcomes.append(0.5 if abs(a - b) <= tie_tolerance else float(a > b))
    n = len(outcomes)
    mean = sum(outcomes) / n
    var = sum((o - mean) ** 2 for o in outcomes) / (n - 1) if n > 1 else 0.0
    return {
        "n": n,
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "win_rate": mean,
        "stderr": math.sqrt(var / n),
    }


def judge_output_to_prob(output: JudgeOutput) -> float:
    """Map a judge's answer to P(first is better): a probability, or "first" / "second" / "tie"."""
    if isinstance(output, str):
        verdict = output.strip().lower()
        if verdict not in _VERDICTS:
            raise AlignError(f"judge returned {output!r}; expected 'first', 'second', 'tie' or a probability")
        return _VERDICTS[verdict]
    if isinstance(output, bool) or not isinstance(output, (int, float)) or not 0.0 <= output <= 1.0:
        raise AlignError(f"judge returned {output!r}; expected a probability in [0, 1] or 'first'/'second'/'tie'")
    return float(output)


def judge_pairwise(judge_fn: JudgeFn, prompt: str, resp_a: str, resp_b: str) -> float:
    """P(resp_a is better than resp_b), averaged over both presentation orders to cancel position bias."""
    a_first = judge_output_to_prob(judge_fn(prompt, resp_a, resp_b))
    b_first = judge_output_to_prob(judge_fn(prompt, resp_b, resp_a))
    return (a_first + (1.0 - b_first)) / 2.0


def pairwise_win_rate(
    judge_fn: JudgeFn,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
) -> dict[str, float]:
    """Win rate of A over B by a position-swapped judge: a prompt is a win when P(A better) > 0.5.

    Returns `win_rate`'s keys plus "mean_prob" (mean P(A better)).
    """
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise AlignError(
            f"pairwise_win_rate: {len(prompts)} prompts, {len(responses_a)} A responses, "
            f"{len(responses_b)} B responses; expected equal lengths"
        )
    probs = [judge_pairwise(judge_fn, p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]
    # P(A) vs P(B) = 1 - P(A): A wins when P(A) > 0.5; the tolerance absorbs float rounding at exactly 0.5.
    out = win_rate(probs, [1.0 - p for p in probs], tie_tolerance=1e-9)
    out["mean_prob"] = sum(probs) / len(probs)
    return out
