"""Confidence intervals for a policy's gain over a baseline, and for a reward model's pairwise accuracy.

A held-out gain is a mean over a few dozen prompts, so it comes with sampling noise. The paired
bootstrap resamples *prompts* (with replacement) and recomputes the mean per-prompt difference, so
the interval reflects which prompts happened to be held out while keeping each prompt's two responses
together (the pairing removes prompt difficulty from the noise). Percentile interval, seeded: the
same scores always give the same interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from align.errors import AlignError


def percentile_interval(ordered: Sequence[float], confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of sorted bootstrap statistics (percentile method)."""
    m, tail = len(ordered), (1.0 - confidence) / 2
    return ordered[min(m - 1, int(math.floor(tail * m)))], ordered[max(0, int(math.ceil((1.0 - tail) * m)) - 1)]


def paired_bootstrap(
    scores: Sequence[float],
    baseline: Sequence[float],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Mean of scores[i] - baseline[i] over prompts, with a percentile bootstrap interval.

    scores, baseline: (N,) per-prompt scores of the policy and of the baseline on the same N prompts.
    Returns {"n", "gain", "ci_low", "ci_high", "stderr" (bootstrap standard deviation of the mean),
    "p_not_positive" (fraction of resampled means <= 0: a one-sided bootstrap p-value for "no gain")}.
    """
    if len(scores) != len(baseline):
        raise AlignError(f"paired_bootstrap: {len(scores)} scores but {len(baseline)} baseline scores")
    if not scores:
        raise AlignError("paired_bootstrap: no scores given")
    if not 0.0 < confidence < 1.0:
        raise AlignError(f"paired_bootstrap: confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise AlignError(f"paired_bootstrap: resamples must be >= 1, got {resamples}")
    diffs = [float(a) - float(b) for a, b in zip(scores, baseline, strict=True)]
    if not all(math.isfinite(d) for d in diffs):
        raise AlignError("paired_bootstrap: scores must be finite numbers")
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo, hi = percentile_interval(means, confidence)
    centre = sum(means) / resamples
    return {
        "n": n,
        "gain": sum(diffs) / n,
        "ci_low": lo,
        "ci_high": hi,
        "stderr": math.sqrt(sum((m - centre) ** 2 for m in means) / max(resamples - 1, 1)),
        "p_not_positive": sum(m <= 0 for m in means) / resamples,
    }


def prompt_bootstrap_accuracy(
    correct: Sequence[float],
    pairs: Sequence[int],
    *,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Pairwise accuracy pooled over prompts, with a percentile interval from resampling *prompts*.

    correct, pairs: (P,) per prompt, the pairs the model orders right (ties may count 0.5) and the pairs
    it was scored on. The pairs of one prompt share its responses and are not independent, so the
    interval resamples whole prompts (a cluster bootstrap) and recomputes sum(correct) / sum(pairs);
    treating the pairs as independent would make it too narrow. Seeded: the same input, the same interval.
    Returns {"accuracy", "ci_low", "ci_high", "prompts", "pairs"}.
    """
    if len(correct) != len(pairs):
        raise AlignError(f"prompt_bootstrap_accuracy: {len(correct)} correct counts but {len(pairs)} pair counts")
    if not pairs or sum(pairs) <= 0:
        raise AlignError("prompt_bootstrap_accuracy: no pairs given")
    if not 0.0 < confidence < 1.0:
        raise AlignError(f"prompt_bootstrap_accuracy: confidence must be in (0, 1), got {confidence}")
    n = len(pairs)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        total = sum(pairs[i] for i in picks)
        if total:  # a resample of only pair-less prompts has no accuracy; skip it
            ratios.append(sum(correct[i] for i in picks) / total)
    lo, hi = percentile_interval(sorted(ratios), confidence)
    return {
        "accuracy": sum(correct) / sum(pairs),
        "ci_low": lo,
        "ci_high": hi,
        "prompts": sum(1 for k in pairs if k),
        "pairs": int(sum(pairs)),
    }


def format_gain(result: dict[str, float]) -> str:
    """'+0.102 [+0.041, +0.166]': the gain and its interval, as the summary and report print it."""
    return f"{result['gain']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"
