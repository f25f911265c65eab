"""Exact, fast ROUGE-L near-duplicate filter for Self-Instruct instruction pools.

Self-Instruct (and Stanford Alpaca) keep a new instruction only if its ROUGE-L F-measure against every
instruction already in the pool is at most 0.7. Doing that with ``rouge_score`` is quadratic: one
dynamic-programming LCS per pool member per candidate. This module makes the *same* keep/drop decisions
(same tokenizer, same float formula, same strict ``> threshold`` test) while computing very few LCSs:

1. Tokens are mapped to ints; an inverted index (token -> members holding it, with counts) gives every
   pool member's multiset overlap ``ov`` with the candidate in a few vectorised numpy adds.
2. ``LCS <= ov`` and ``LCS <= min(m, n)``, and for token counts m, n the F-measure equals
   ``2 * LCS / (m + n)``; so ``2 * min(ov, m, n) / (m + n)`` bounds F from above. Members whose bound
   is (with a safety margin) below the threshold cannot be near-duplicates and are skipped.
3. The few remaining members get an exact LCS with the bit-parallel algorithm of Allison-Dix / Hyyrö
   over Python big ints (one add, and, or per token), and F is then computed with rouge_score's own
   float expression, so scores are bit-identical to ``RougeScorer(['rougeL']).score``.

Why not rouge_score alone: it is the reference and we use its tokenizer, but its pure-Python O(m*n)
table per pair is what makes pools of 10K+ instructions take hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
from rouge_score import tokenizers

from align.errors import AlignError

DEFAULT_THRESHOLD = 0.7
"""Self-Instruct's cut-off: drop a candidate whose ROUGE-L F-measure with a pool member is above this."""

_BOUND_MARGIN = 1e-9
# Bounds are compared to (threshold - margin), so float rounding in the bound can only make us compute an
# LCS we did not need, never skip one we did. The real decision always uses rouge_score's formula.

_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenization (lowercase, non-alphanumerics split, no stemming)."""
    return _TOKENIZER.tokenize(text)


def rouge_l_fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """F-measure exactly as ``rouge_score.rouge_scorer._score_lcs`` computes it (same float operations)."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _match_masks(ids: list[int]) -> dict[int, int]:
    """Bit i of masks[t] is set where ids[i] == t (the pattern side of bit-parallel LCS)."""
    masks: dict[int, int] = {}
    for i, t in enumerate(ids):
        masks[t] = masks.get(t, 0) | (1 << i)
    return masks


def lcs_length_bitparallel(masks: dict[int, int], length: int, other: list[int]) -> int:
    """LCS length of the pattern (given by its match masks and length) and ``other``.

    Hyyrö's formulation of the Allison-Dix bit-vector algorithm: V starts as all ones over the pattern's
    ``length`` bits; for each token b of ``other`` with match mask M, U = V & M and V = (V + U) | (V - U).
    The LCS is the number of zero bits of V. Tokens absent from the pattern leave V unchanged.
    Cost: O(len(other)) big-int operations on ceil(length / 64) machine words.
    """
    full = (1 << length) - 1
    v = full
    for b in other:
        m = masks.get(b)
        if m is not None:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


def lcs_length(a: list, b: list) -> int:
    """LCS length of two token sequences (bit-parallel; any hashable tokens)."""
    if not a or not b:
        return 0
    vocab: dict = {}
    ia = [vocab.setdefault(t, len(vocab)) for t in a]
    ib = [vocab.get(t, -1) for t in b]
    return lcs_length_bitparallel(_match_masks(ia), len(ia), ib)


class _Postings:
    """Growable numpy arrays of (member index, count) for one token."""

    __slots__ = ("ids", "counts", "size")

    def __init__(self) -> None:
        self.ids = np.empty(4, dtype=np.int32)
        self.counts = np.empty(4, dtype=np.int32)
        self.size = 0

    def append(self, member: int, count: int) -> None:
        if self.size == len(self.ids):
            self.ids = np.concatenate([self.ids, np.empty_like(self.ids)])
            self.counts = np.concatenate([self.counts, np.empty_like(self.counts)])
        self.ids[self.size] = member
        self.counts[self.size] = count
        self.size += 1


class SimilarityPool:
    """A growing set of instructions that answers "is this a ROUGE-L near-duplicate of any of them?".

    Decisions equal ``any(RougeScorer(['rougeL']).score(p, c)['rougeL'].fmeasure > threshold for p in pool)``
    and scores are bit-identical to rouge_score's. Build it from existing instructions (seeds, or the
    records already written when resuming), then ``add`` each accepted instruction::

        pool = SimilarityPool(seed_instructions + [r["instruction"] for r in load_records(out_path)])
        if not pool.is_near_duplicate(candidate):
            pool.add(candidate)
    """

    def __init__(self, instructions: Iterable[str] = (), threshold: float = DEFAULT_THRESHOLD) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise AlignError(f"ROUGE-L threshold must be between 0 and 1, got {threshold}")
        self.threshold = float(threshold)
        self.instructions: list[str] = []
        self._vocab: dict[str, int] = {}
        self._ids: list[list[int]] = []
        self._postings: dict[int, _Postings] = {}
        self._lengths = np.empty(64, dtype=np.int64)
        for text in instructions:
            self.add(text)

    def __len__(self) -> int:
        return len(self.instructions)

    def __contains__(self, text: object) -> bool:
        return text in self.instructions

    def add(self, instruction: str) -> None:
        """Put an instruction in the pool (no similarity check; call ``is_near_duplicate`` first)."""
        ids = [self._vocab.setdefault(t, len(self._vocab)) for t in rouge_tokens(instruction)]
        member = len(self.instructions)
        self.instructions.append(instruction)
        self._ids.append(ids)
        if member == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.empty_like(self._lengths)])
        self._lengths[member] = len(ids)
        for t, c in Counter(ids).items():
            postings = self._postings.get(t)
            if postings is None:
                postings = self._postings[t] = _Postings()
            postings.append(member, c)

    def _query(self, candidate: str) -> tuple[list[int], np.ndarray]:
        """Candidate token ids (unknown tokens -> -1) and each member's token overlap with it."""
        ids = [self._vocab.get(t, -1) for t in rouge_tokens(candidate)]
        overlap = np.zeros(len(self.instructions), dtype=np.int64)
        for t, c in Counter(ids).items():
            postings = self._postings.get(t)
            if postings is None:
                continue
            members = postings.ids[: postings.size]
            if c == 1:
                overlap[members] += 1  # each member appears once per posting list, so += is safe
            else:
                overlap[members] += np.minimum(postings.counts[: postings.size], c)
        return ids, overlap

    def _upper_bounds(self, n: int, overlap: np.ndarray) -> np.ndarray:
        """2 * min(ov, m, n) / (m + n) >= ROUGE-L F for every member (0 where a side is empty)."""
        lengths = self._lengths[: len(overlap)]
        best_lcs = np.minimum(np.minimum(overlap, lengths), n)
        denom = lengths + n
        return np.divide(2.0 * best_lcs, denom, out=np.zeros(len(overlap)), where=denom > 0)

    def _score(self, masks: dict[int, int], n: int, member: int) -> float:
        other = self._ids[member]
        return rouge_l_fmeasure(lcs_length_bitparallel(masks, n, other), len(other), n)

    def is_near_duplicate(self, candidate: str) -> bool:
        """True when some pool member has ROUGE-L F-measure > threshold with the candidate."""
        return self.first_near_duplicate(candidate) is not None

    def first_near_duplicate(self, candidate: str) -> tuple[float, str] | None:
        """(score, member) of the earliest-added member above the threshold, or None (cheapest query)."""
        ids, overlap = self._query(candidate)
        n = len(ids)
        if n == 0 or not len(overlap):
            return None
        bounds = self._upper_bounds(n, overlap)
        maybe = np.flatnonzero(bounds > self.threshold - _BOUND_MARGIN)
        if not len(maybe):
            return None
        masks = _match_masks(ids)
        for member in maybe.tolist():
            score = self._score(masks, n, member)
            if score > self.threshold:
                return score, self.instructions[member]
        return None

    def most_similar(self, candidate: str, k: int = 10) -> list[tuple[float, str]]:
        """The k members with the highest ROUGE-L F (exact; ties broken by insertion order), best first.

        Members sharing no token with the candidate score 0 and are never returned. Branch and bound:
        members are visited by decreasing upper bound and the search stops once the bound falls below
        the k-th best score found, so only a handful of LCSs are computed.
        """
        ids, overlap = self._query(candidate)
        n = len(ids)
        if n == 0 or k <= 0:
            return []
        bounds = self._upper_bounds(n, overlap)
        nonzero = np.flatnonzero(bounds > 0)
        order = nonzero[np.argsort(-bounds[nonzero], kind="stable")]
        masks = _match_masks(ids)
        found: list[tuple[float, int]] = []  # (score, member), kept sorted best first
        for member in order.tolist():
            if len(found) == k and bounds[member] < found[-1][0] - _BOUND_MARGIN:
                break
            score = self._score(masks, n, member)
            found.append((score, member))
            found.sort(key=lambda sm: (-sm[0], sm[1]))
            del found[k:]
        return [(score, self.instructions[member]) for score, member in found if score > 0]

    def max_similarity(self, candidate: str) -> tuple[float, str | None]:
        """(highest ROUGE-L F, the member reaching it); (0.0, None) for an empty pool or no shared token."""
        best = self.most_similar(candidate, k=1)
        return best[0] if best else (0.0, None)
