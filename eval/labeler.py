"""Simulated labeler (in the spirit of AlpacaFarm): ranks K responses to a gold prompt like a careful person.

What it rewards. InstructGPT's labelers ranked overall quality (helpful, truthful, harmless) and counted
following the prompt's explicit constraints as one aspect of it. So does this labeler:

    score = quality × (0.4 + 0.6 × compliance)

- `compliance` is the fraction of the prompt's verifiable constraints met (`align.eval.gold.gold_score`,
  also available alone as `compliance_score_fn`);
- `quality` ∈ [0, 1] is a product of factors, each 1 for an ordinary on-topic answer and falling to 0 for
  one way of gaming a constraint checker (see `quality_factors`):
  relevance   sentence-embedding cosine of the response to the task (without the constraint text),
              all-MiniLM-L6-v2: 0 at cosine ≤ 0.10, 1 at ≥ 0.45 (answers that are about the task saturate;
              the model is not asked to tell a good answer from a better one);
  prose       share of English function words (0 at none, 1 at ≥ 25%): keyword lists, "[1] [2] [3]" and
              "*highlight*" patterns are not sentences;
  filler      share of tokens that are placeholders, markup, numbers or punctuation (1 at ≤ 20%, 0 at ≥ 50%);
  variety     distinct word 3-grams (1 at ≥ 85%, 0 at ≤ 50%), × 0.25 when a line repeats 3 or more times;
  novelty     share of the response's 3-grams copied from the prompt (1 at ≤ 25%, 0 at ≥ 70%), after
              removing text a constraint requires (a requested repeat of the prompt is not an echo); a
              passage the prompt asks to summarise does not count (extractive summaries quote it);
  substance   content words beyond text a constraint requires, 1 at ≥ 8 (fewer when a word limit asks for
              less): "Ok." does no task, and neither does the requested keyword alone;
  complete    0.85 for a reply cut off mid-sentence.
  A response that does not do the task scores near 0 whatever constraints it meets; among answers that
  do, constraints decide (an answer meeting none keeps 0.4 of its quality).

A fixed string answered to every prompt ("Ok.", "Sure [name].", "[name] [place] *note* *tip* Ok.")
scores < 0.05 on the quickstart's held-out prompts; `tests/unit/test_labeler_adversarial.py` holds the
responses that gamed the constraint-only labeler, each ranked below an on-topic answer.

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
from functools import lru_cache
from typing import Literal

from align.errors import AlignError
from align.eval import constraints as C
from align.eval import text_stats as T
from align.eval.gold import BASE_TASKS, GoldPrompt, PromptLike, as_gold_prompt, gold_score, lookup_gold_prompt

__all__ = [
    "SimulatedLabeler",
    "careful_score",
    "compliance_score_fn",
    "flatten_ranking",
    "gold_score_fn",
    "gold_scores",
    "quality_factors",
    "rank_by_gold",
    "ranking_to_pairs",
    "task_cosines",
    "task_text",
]

TiePolicy = Literal["keep", "break"]
TieBreaker = Literal["shorter", "index", "random"]
Scorer = Literal["careful", "compliance"]
COMPLIANCE_FLOOR = 0.4  # what an on-topic answer that meets no constraint keeps of its quality


def _ramp(value: float, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, linear between, clamped (works for falling ramps too)."""
    t = (value - zero_at) / (one_at - zero_at)
    return min(1.0, max(0.0, t))


@lru_cache(maxsize=1)
def _task_texts() -> dict[str, str]:
    return {task.id: task.text for task in BASE_TASKS}


@lru_cache(maxsize=1)
def _passages() -> dict[str, str]:
    """The quoted passage of each summarisation task (the text after the instruction)."""
    return {task.id: task.text.split("\n\n", 1)[1] for task in BASE_TASKS if task.has_passage}


def _echo_source(record: GoldPrompt) -> str:
    """The prompt text a response should not copy: the request and its constraints, not a passage it was
    asked to summarise (an extractive summary quotes it, and a careful reader accepts that)."""
    passage = _passages().get(record.task_id)
    return record.prompt.replace(passage, " ") if passage else record.prompt


def task_text(record: GoldPrompt) -> str:
    """What the prompt asks for without its constraint sentences: the anchor for relevance."""
    known = _task_texts().get(record.task_id)
    if known is not None:
        return known
    text = record.prompt
    for constraint in record.constraints:
        text = text.replace(constraint.describe(), " ")
    return " ".join(text.split()) or record.prompt


def _without_required_text(record: GoldPrompt, response: str) -> str:
    """The response minus text its constraints demand (a requested repeat, an end phrase, a keyword)."""
    out = response
    for constraint in record.constraints:
        for required in constraint.required_texts():
            if len(required.text) > 3:
                out = out.replace(required.text, " ")
    return out


def _word_limit(record: GoldPrompt) -> int | None:
    limits = [c.n for c in record.constraints if isinstance(c, C.MaxWords)]
    return min(limits) if limits else None


def quality_factors(record: PromptLike, response: str, relevance: float | None = None) -> dict[str, float]:
    """Each factor of the labeler's `quality` (module docstring), and `quality`, their product.

    relevance: the response's embedding cosine to the task, when the caller has it from a batch.
    """
    record = as_gold_prompt(record)
    text = C.normalize_response(response)
    if relevance is None:
        from align.eval.relevance import similarity

        relevance = similarity(task_text(record), [text])[0] if text else 0.0
    limit = _word_limit(record)
    target_words = 8 if limit is None else max(2, min(8, limit // 4))
    own = _without_required_text(record, text)  # what the response adds beyond text it was told to include
    variety = _ramp(T.distinct_n(text, 3), 0.5, 0.85) * (0.25 if T.max_line_repeats(text) >= 3 else 1.0)
    factors = {
        "relevance": _ramp(relevance, 0.10, 0.45),
        "prose": _ramp(T.stopword_share(text), 0.0, 0.25),
        "filler": _ramp(T.filler_share(text), 0.5, 0.2),
        "variety": variety,
        "novelty": _ramp(T.echo_share(own, _echo_source(record)), 0.7, 0.25),
        "substance": _ramp(len(T.content_words(own)), 0, target_words),
        "complete": 1.0 if T.ends_complete(text) else 0.85,
    }
    quality = 1.0
    for value in factors.values():
        quality *= value
    return {**factors, "cosine": relevance, "quality": quality}


def careful_score(record: PromptLike, response: str, relevance: float | None = None) -> float:
    """quality × (0.4 + 0.6 × compliance): the labeler's score of one response, in [0, 1]."""
    record = as_gold_prompt(record)
    quality = quality_factors(record, response, relevance)["quality"]
    return quality * (COMPLIANCE_FLOOR + (1.0 - COMPLIANCE_FLOOR) * gold_score(record, response))


def task_cosines(records: Sequence[PromptLike], responses: Sequence[str]) -> list[float]:
    """Embedding cosine of each response to its prompt's task (0 for an empty response), one batched
    embedding call per task. The labeler's relevance and the eval's on-topic guard both read it."""
    from align.eval.relevance import similarity

    if len(records) != len(responses):
        raise AlignError(f"task_cosines: {len(records)} prompts but {len(responses)} responses")
    texts = [C.normalize_response(r) for r in responses]
    by_task: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_task.setdefault(task_text(as_gold_prompt(record)), []).append(i)
    cosines = [0.0] * len(texts)
    for anchor, idx in by_task.items():
        for i, sim in zip(idx, similarity(anchor, [texts[i] or "." for i in idx]), strict=True):
            cosines[i] = sim if texts[i] else 0.0
    return cosines


def careful_scores(records: Sequence[PromptLike], responses: Sequence[str],
                   cosines: Sequence[float] | None = None) -> list[float]:
    """`careful_score` over aligned lists; `cosines` from `task_cosines` when the caller already has them."""
    if len(records) != len(responses):
        raise AlignError(f"careful_scores: {len(records)} prompts but {len(responses)} responses")
    gold = [as_gold_prompt(r) for r in records]
    cosines = task_cosines(gold, responses) if cosines is None else cosines
    return [careful_score(r, resp, c) for r, resp, c in zip(gold, responses, cosines, strict=True)]


def gold_score_fn(prompt: str, response: str) -> float:
    """The simulated labeler's score for a recipe (`align.eval.labeler:gold_score_fn`): `careful_score`."""
    return careful_score(lookup_gold_prompt(prompt), response)


def compliance_score_fn(prompt: str, response: str) -> float:
    """Constraint compliance alone (`align.eval.labeler:compliance_score_fn`): the fraction of the prompt's
    constraints met. Easy to game on its own (a string of placeholders meets "use 2 placeholders"); use it
    as one term of a reward, or to rank when the responses are known to be on-topic prose."""
    return gold_score(lookup_gold_prompt(prompt), response)


def gold_scores(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Batched `gold_score_fn` over aligned lists."""
    if len(prompts) != len(responses):
        raise AlignError(f"gold_scores: {len(prompts)} prompts but {len(responses)} responses")
    return careful_scores([lookup_gold_prompt(p) for p in prompts], responses)


def rank_by_gold(
    prompt: PromptLike,
    responses: Sequence[str],
    *,
    ties: TiePolicy = "keep",
    tie_breaker: TieBreaker = "shorter",
    noise: float = 0.0,
    seed: int = 0,
    scorer: Scorer = "careful",
) -> list[list[int]]:
    """Rank `responses` best -> worst by the labeler's score, as tie groups of indices.

    prompt: a GoldPrompt, a gold record dict, or prompt text from the shipped set.
    ties: "keep" puts equal scores in one group; "break" orders them by `tie_breaker`:
      "shorter" (fewer characters first, then lower index), "index" (lower index first), "random" (seeded).
    noise: probability that each pairwise comparison the labeler makes is flipped (see module docstring).
    scorer: "careful" (`careful_score`, the default) or "compliance" (constraints alone).
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
    if scorer == "careful":
        scores = careful_scores([record] * len(responses), responses)
    elif scorer == "compliance":
        scores = [gold_score(record, r) for r in responses]
    else:
        raise AlignError(f"scorer must be 'careful' or 'compliance', got {scorer!r}")

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
    scorer: Scorer = "careful"

    def rank(self, prompt: PromptLike, responses: Sequence[str]) -> list[list[int]]:
        return rank_by_gold(prompt, responses, ties=self.ties, tie_breaker=self.tie_breaker, noise=self.noise,
                            seed=self.seed, scorer=self.scorer)
