"""Simulated labeler: gold rankings, tie policies, seeded noise, and the recipe-facing gold score function."""

import pytest

from align.errors import AlignError
from align.eval import constraints as C
from align.eval.gold import GoldPrompt, gold_score, load_gold_prompts, lookup_gold_prompt
from align.eval.labeler import (
    SimulatedLabeler,
    flatten_ranking,
    gold_score_fn,
    gold_scores,
    ranking_to_pairs,
)
from align.eval.labeler import rank_by_gold as rank_by_score


def rank_by_gold(*args, **kwargs):
    """The ranking mechanics (ties, noise) tested on constraint scores, which are easy to compute by hand;
    the careful score's own ranking is tested in test_labeler_adversarial.py."""
    return rank_by_score(*args, scorer="compliance", **kwargs)


RECORD = GoldPrompt("lab-1", "t", "Say hi.", (C.Lowercase(), C.NoCommas()), "train")
# gold scores:        0.0         1.0         0.5          1.0        0.5
RESPONSES = ["Hi, there", "hi there", "hi, there", "hey you", "Hi there"]


def test_keep_ties_groups_equal_scores_best_first():
    assert rank_by_gold(RECORD, RESPONSES) == [[1, 3], [2, 4], [0]]
    assert rank_by_gold(RECORD.to_record(), RESPONSES, ties="keep") == [[1, 3], [2, 4], [0]]


@pytest.mark.parametrize(
    ("tie_breaker", "expected"),
    [
        ("shorter", [[3], [1], [4], [2], [0]]),  # "hey you" (7 chars) before "hi there" (8)
        ("index", [[1], [3], [2], [4], [0]]),
    ],
)
def test_break_ties_deterministically(tie_breaker, expected):
    assert rank_by_gold(RECORD, RESPONSES, ties="break", tie_breaker=tie_breaker) == expected


def test_random_tie_breaking_is_seeded_and_respects_scores():
    seen = set()
    for seed in range(30):
        flat = flatten_ranking(rank_by_gold(RECORD, RESPONSES, ties="break", tie_breaker="random", seed=seed))
        assert flat == flatten_ranking(
            rank_by_gold(RECORD, RESPONSES, ties="break", tie_breaker="random", seed=seed)
        )
        assert set(flat[:2]) == {1, 3} and set(flat[2:4]) == {2, 4} and flat[4] == 0
        seen.add(tuple(flat))
    assert len(seen) == 4  # both tie groups get both orders across seeds


def test_noise_zero_is_gold_for_any_seed_and_noise_one_reverses():
    for seed in range(10):
        assert rank_by_gold(RECORD, RESPONSES, noise=0.0, seed=seed) == [[1, 3], [2, 4], [0]]
        assert rank_by_gold(RECORD, RESPONSES, noise=1.0, seed=seed) == [[0], [2, 4], [1, 3]]
        assert rank_by_gold(RECORD, RESPONSES, ties="break", tie_breaker="index", noise=1.0, seed=seed) == [
            [0], [4], [2], [3], [1]
        ]


def _graded():
    """A prompt with 4 constraints and 5 responses scoring 1.0, 0.75, 0.5, 0.25, 0.0 (given shuffled)."""
    record = GoldPrompt(
        "lab-2", "t", "Say hi.", (C.Lowercase(), C.NoCommas(), C.EndWithQuestion(), C.MaxWords(n=4)), "train"
    )
    responses = ["Hi, there, you, all.", "hi there?", "hi, there.", "Hi there you all.", "hi there all."]
    assert [gold_score(record, r) for r in responses] == [0.0, 1.0, 0.5, 0.25, 0.5 + 0.25]
    return record, responses


def _pair_accuracy(groups, gold_order):
    position = {i: k for k, i in enumerate(flatten_ranking(groups))}
    pairs = [(a, b) for k, a in enumerate(gold_order) for b in gold_order[k + 1 :]]
    return sum(position[a] < position[b] for a, b in pairs) / len(pairs)


def test_noise_is_seeded_and_more_noise_means_more_mistakes():
    record, responses = _graded()
    gold_order = [1, 4, 2, 3, 0]
    assert flatten_ranking(rank_by_gold(record, responses)) == gold_order
    assert rank_by_gold(record, responses, noise=0.3, seed=7) == rank_by_gold(record, responses, noise=0.3, seed=7)
    accuracy = {}
    for noise in (0.0, 0.1, 0.3, 0.5, 1.0):
        runs = [rank_by_gold(record, responses, noise=noise, seed=s) for s in range(200)]
        accuracy[noise] = sum(_pair_accuracy(r, gold_order) for r in runs) / len(runs)
    assert accuracy[0.0] == 1.0 and accuracy[1.0] == 0.0
    assert 1.0 > accuracy[0.1] > accuracy[0.3] > accuracy[0.5] > 0.0
    # The noise stream depends on the prompt id, so one seed does not give every prompt the same mistakes.
    other = GoldPrompt("lab-3", *list(vars(record).values())[1:])
    differs = [
        rank_by_gold(record, responses, noise=0.5, seed=s) != rank_by_gold(other, responses, noise=0.5, seed=s)
        for s in range(20)
    ]
    assert any(differs)


def test_flatten_and_pairs():
    groups = [[1, 3], [2], [0]]
    assert flatten_ranking(groups) == [1, 3, 2, 0]
    assert ranking_to_pairs(groups) == [(1, 2), (3, 2), (1, 0), (3, 0), (2, 0)]
    assert ranking_to_pairs([[0, 1]]) == []


def test_simulated_labeler_matches_function():
    labeler = SimulatedLabeler(ties="break", tie_breaker="index", noise=1.0, scorer="compliance")
    assert labeler.rank(RECORD, RESPONSES) == [[0], [4], [2], [3], [1]]
    assert SimulatedLabeler().rank(RECORD, RESPONSES) == rank_by_score(RECORD, RESPONSES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ties": "drop"}, "ties must be"),
        ({"tie_breaker": "longer"}, "tie_breaker must be"),
        ({"noise": 1.5}, "noise must be"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(AlignError, match=message):
        rank_by_gold(RECORD, RESPONSES, **kwargs)
    with pytest.raises(AlignError, match="at least one response"):
        rank_by_gold(RECORD, [])


def test_gold_score_fn_looks_up_shipped_prompts_by_text():
    from align.eval.labeler import careful_score, compliance_score_fn

    record = load_gold_prompts("heldout")[0]
    for response in ("", "hello there, friend.", "HELLO THERE? P.S. yes"):
        assert gold_score_fn(record.prompt, response) == pytest.approx(careful_score(record, response))
        assert compliance_score_fn(record.prompt, response) == gold_score(record, response)
    assert gold_score_fn(f"  {record.prompt}\n", "x") == pytest.approx(careful_score(record, "x"))
    assert lookup_gold_prompt(record.prompt) == record
    batched = gold_scores([record.prompt] * 2, ["a", "b"])
    assert batched == pytest.approx([careful_score(record, "a"), careful_score(record, "b")], abs=1e-6)
    # prompt text also works as the labeler's input
    assert rank_by_gold(record.prompt, ["a", "b"]) == rank_by_gold(record, ["a", "b"])


def test_gold_score_fn_rejects_unknown_prompts_clearly():
    with pytest.raises(AlignError, match="not in the gold prompt set"):
        gold_score_fn("Write a haiku about tea.", "tea")
    with pytest.raises(AlignError, match="2 prompts but 1 responses"):
        gold_scores(["a", "b"], ["x"])
