"""SimilarityPool must make exactly rouge_score's decisions (and give its scores), only faster."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer
from rouge_score.rouge_scorer import _lcs_table

from align.data_gen.rouge_filter import SimilarityPool, lcs_length, rouge_l_fmeasure, rouge_tokens
from align.errors import AlignError

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def ref_f(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


def test_tokens_are_rouge_scores_own():
    text = "Write a POEM -- about the sea's 3 moods! Café"
    assert rouge_tokens(text) == SCORER._tokenizer.tokenize(text)
    assert rouge_tokens("¡¿ — !!") == []


def test_bitparallel_lcs_matches_dynamic_programming():
    rng = random.Random(1)
    for _ in range(500):
        alphabet = "abcdef"[: rng.randint(1, 6)]
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 70))]  # > 64 exercises multi-word ints
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 70))]
        want = _lcs_table(a, b)[-1][-1] if a and b else 0
        assert lcs_length(a, b) == want


def test_fmeasure_formula_is_bit_identical():
    for m in range(1, 25):
        for n in range(1, 25):
            for lcs in range(0, min(m, n) + 1):
                a = ["x"] * lcs + ["a"] * (m - lcs)
                b = ["x"] * lcs + ["b"] * (n - lcs)
                assert rouge_l_fmeasure(lcs, m, n) == rouge_scorer._score_lcs(a, b).fmeasure


def _random_text(rng: random.Random, vocab: list[str]) -> str:
    n = rng.choice([0, 1, 2, 3, 5, 8, 10, 13, 20])
    words = [rng.choice(vocab) for _ in range(n)]
    seps = [" ", "  ", ", ", " - ", "! "]
    return "".join(w + rng.choice(seps) for w in words).strip()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_rouge_score_on_random_pools(seed):
    """Small vocabularies force heavy overlap, repeated tokens and scores near 0.7."""
    rng = random.Random(seed)
    vocab = ["the", "a", "write", "poem", "list", "of", "about", "cats", "sea", "three", "3", "Sea", "!!", "é"][
        : rng.randint(4, 14)
    ]
    pool, ref_pool = SimilarityPool(), []
    near_07 = 0
    for _ in range(250):
        cand = _random_text(rng, vocab)
        scores = [ref_f(p, cand) for p in ref_pool]
        best = max(scores, default=0.0)
        near_07 += any(abs(s - 0.7) < 0.05 for s in scores)
        assert pool.is_near_duplicate(cand) == (best > 0.7)
        score, member = pool.max_similarity(cand)
        assert score == best
        if best > 0:
            assert member == ref_pool[scores.index(best)]  # ties: the earliest member, like np.argmax
        top = pool.most_similar(cand, k=5)
        assert [s for s, _ in top] == sorted((s for s in scores if s > 0), reverse=True)[:5]
        if best <= 0.7:
            pool.add(cand)
            ref_pool.append(cand)
    assert near_07 > 0 and len(pool) == len(ref_pool)


def test_exactly_point_seven_is_kept():
    # m = n = 10 tokens, LCS 7 -> F = 0.7 exactly (in exact arithmetic): not a near-duplicate.
    base = "a b c d e f g h i j"
    cand = "a b c d e f g x y z"
    assert ref_f(base, cand) == pytest.approx(0.7)
    pool = SimilarityPool([base])
    assert pool.is_near_duplicate(cand) == (ref_f(base, cand) > 0.7)
    assert pool.max_similarity(cand)[0] == ref_f(base, cand)
    # One more shared token tips it over.
    assert SimilarityPool([base]).is_near_duplicate("a b c d e f g h y z")


def test_repeated_tokens_overlap_is_a_multiset():
    pool = SimilarityPool(["the the the the cat"])
    cand = "the cat the"
    assert pool.max_similarity(cand)[0] == ref_f("the the the the cat", cand)
    assert pool.is_near_duplicate(cand) == (ref_f("the the the the cat", cand) > 0.7)


def test_empty_token_lists_never_match():
    pool = SimilarityPool(["", "!!!", "write a poem"])
    assert not pool.is_near_duplicate("")
    assert not pool.is_near_duplicate("?? --")
    assert pool.max_similarity("...") == (0.0, None)
    assert pool.max_similarity("completely different words") == (0.0, None)
    assert len(pool) == 3


def test_exact_duplicate_and_case_insensitivity():
    pool = SimilarityPool(["Write a haiku about the autumn rain."])
    assert pool.is_near_duplicate("write a HAIKU about the autumn rain")
    assert pool.max_similarity("write a HAIKU about the autumn rain") == (1.0, "Write a haiku about the autumn rain.")
    assert not pool.is_near_duplicate("Explain how vaccines train the immune system.")


def test_first_near_duplicate_reports_a_member_above_threshold():
    pool = SimilarityPool(["List three fruits.", "List three red fruits please."])
    hit = pool.first_near_duplicate("List three red fruits.")
    assert hit is not None and hit[0] > 0.7 and hit[1] in pool


def test_rebuilding_from_instructions_gives_the_same_pool():
    instructions = ["Write a poem about cats.", "Sort the numbers.", "Translate the text into French."]
    grown = SimilarityPool()
    for text in instructions:
        grown.add(text)
    rebuilt = SimilarityPool(instructions)
    for cand in ["Write a poem about dogs.", "Sort these numbers.", "Translate it to German."]:
        assert grown.max_similarity(cand) == rebuilt.max_similarity(cand)


def test_threshold_is_validated_and_used():
    with pytest.raises(AlignError, match="threshold"):
        SimilarityPool(threshold=1.5)
    strict = SimilarityPool(["write a poem about cats"], threshold=0.3)
    f = ref_f("write a poem about cats", "write a story about dogs")
    assert strict.is_near_duplicate("write a story about dogs") == (f > 0.3)
