"""Simulated labeler (in the spirit of AlpacaFarm): ranks K responses to a gold prompt by gold score.

Rankings are tie groups, best group first: `[[2], [0, 3], [1]]` means response 2 is best, 0 and 3 tie,
1 is worst. With `ties="break"` every group has one index.

Noise model: the labeler compares neighbours along a fixed odd-even transposition schedule (a sorting
network over the responses in the order given) and each comparison comes out flipped with probability
`noise`. So noise=0 gives exactly the gold order, noise=1 exactly the reverse, and values between give
mostly-right rankings whose mistakes are between similar items, as a human labeler's would be.
Randomness comes from `random.Random(f"{seed}:{prompt id}")`, so a run is reproducible and prompts differ.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from align.errors import AlignError
from align.eval.gold import PromptLike, as_gold_prompt, gold_score, lookup_gold_prompt

__all__ = [
    "SimulatedLabeler",
    "flatten_ranking",
    "gold_score_fn",
    "gold_scores",
    "lookup_gold_prompt",
    "rank_by_gold",
    "ranking_to_pairs",
]

TiePolicy = Literal["keep", "break"]
TieBreaker = Literal["shorter", "index", "random"]


def gold_score_fn(prompt: str, response: str) -> float:
    """Gold reward for a recipe (`align.eval.labeler:gold_score_fn`): fraction of constraints satisfied."""
    return gold_score(lookup_gold_prompt(prompt), response)


def gold_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Batched `gold_score_fn` over aligned lists."""
    if len(prompts) != len(responses):
        raise AlignError(f"gold_scores: {len(prompts)} prompts but {len(responses)} responses")
    return [gold_score_fn(p, r) for p, r in zip(prompts, responses, strict=True)]


def rank_by_gold(
    prompt: PromptLike,
    responses: Sequence[str],
    *,
    ties: TiePolicy = "keep",
    tie_breaker: TieBreaker = "shorter",
    noise: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """Rank `responses` best -> worst by gold score, as tie groups of indices.

    prompt: a GoldPrompt, a gold record dict, or prompt text from the shipped set.
    ties: "keep" puts equal scores in one group; "break" orders them by `tie_breaker`:
      "shorter" (fewer characters first, then lower index), "index" (lower index first), "random" (seeded).
    noise: probability that each pairwise comparison the labeler makes is flipped (see module docstring).
    """
    if ties not in ("keep", "break"):
        raise AlignError(f"ties must be 'keep' or 'break', got {ties!r}")
    if tie_breaker not in ("shorter", "index", "random"):
        raise AlignError(f"tie_breaker must be 'shorter', 'index' or 'random', got {tie_breaker!r}")
    if not 0.0 <= noise <= 1.0:
        raise AlignError(f"noise must be a probability in [0, 1], got {noise!r}")
    if not responses:
        raise AlignError("rank_by_gold needs at least one response")
    record = as_gold_prompt(prompt)
    rng = random.Random(f"{seed}:{record.id}")
    scores = [gold_score(record, r) for r in responses]

    # Units to order, each with a key where larger is better and no two units share a key.
    if ties == "keep":
        groups: dict[float, list[int]] = {}
        for i, s in enumerate(scores):
            groups.setdefault(s, []).append(i)
        units = sorted(groups.values(), key=lambda g: g[0])
        keys = [(scores[g[0]],) for g in units]
    else:
        n = len(responses)
        units = [[i] for i in range(n)]
        if tie_breaker == "shorter":
            keys = [(scores[i], -len(responses[i]), -i) for i in range(n)]
        elif tie_breaker == "index":
            keys = [(scores[i], -i) for i in range(n)]
        else:
            draw = rng.sample(range(n), n)
            keys = [(scores[i], -draw[i]) for i in range(n)]

    order = list(range(len(units)))  # positions hold unit ids; start in the order given
    for round_ in range(len(order)):  # odd-even transposition sort: n rounds sort any input
        for pos in range(round_ % 2, len(order) - 1, 2):
            a, b = order[pos], order[pos + 1]
            a_first = keys[a] > keys[b]
            if noise > 0 and rng.random() < noise:
                a_first = not a_first
            if not a_first:
                order[pos], order[pos + 1] = b, a
    return [units[u] for u in order]


def flatten_ranking(groups: Sequence[Sequence[int]]) -> list[int]:
    """Tie groups -> one list of indices best -> worst (ties in their group's order)."""
    return [i for group in groups for i in group]


def ranking_to_pairs(groups: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """All (chosen, rejected) index pairs implied by a ranking; tied responses give no pair."""
    pairs = []
    for g, better in enumerate(groups):
        for worse in groups[g + 1 :]:
            pairs += [(a, b) for a in better for b in worse]
    return pairs


@dataclass(frozen=True)
class SimulatedLabeler:
    """`rank_by_gold` with its settings fixed, for a ranking stage to call like a judge."""

    ties: TiePolicy = "keep"
    tie_breaker: TieBreaker = "shorter"
    noise: float = 0.0
    seed: int = 0

    def rank(self, prompt: PromptLike, responses: Sequence[str]) -> list[list[int]]:
        return rank_by_gold(
            prompt, responses, ties=self.ties, tie_breaker=self.tie_breaker, noise=self.noise, seed=self.seed
        )
