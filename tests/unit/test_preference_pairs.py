"""Rankings → DPO pairs and KTO labels: pair modes against hand-written expectations (K = 2..9, ties)."""

from __future__ import annotations

import json

import pytest

from align.errors import AlignError
from align.preferences.rankings import (
    RankingRecord,
    kto_examples,
    kto_labels,
    preference_pairs,
    read_rankings,
    read_rankings_checked,
    select_pairs,
    split_records_by_prompt,
)

# (ranking best→worst as tie groups, all pairs, best_vs_worst, best_vs_each), worked out by hand.
CASES = [
    # K=2
    ([[0], [1]], [(0, 1)], [(0, 1)], [(0, 1)]),
    ([[1], [0]], [(1, 0)], [(1, 0)], [(1, 0)]),
    ([[0, 1]], [], [], []),
    # K=3
    ([[2], [0, 1]], [(2, 0), (2, 1)], [(2, 0), (2, 1)], [(2, 0), (2, 1)]),
    ([[1], [2], [0]], [(1, 2), (1, 0), (2, 0)], [(1, 0)], [(1, 2), (1, 0)]),
    ([[0, 2], [1]], [(0, 1), (2, 1)], [(0, 1), (2, 1)], [(0, 1), (2, 1)]),
    # K=4
    ([[0, 3], [1], [2]], [(0, 1), (3, 1), (0, 2), (3, 2), (1, 2)], [(0, 2), (3, 2)],
     [(0, 1), (0, 2), (3, 1), (3, 2)]),
    ([[3], [2], [1], [0]], [(3, 2), (3, 1), (3, 0), (2, 1), (2, 0), (1, 0)], [(3, 0)], [(3, 2), (3, 1), (3, 0)]),
    # K=5: three-way tie in the middle
    ([[4], [0, 1, 2], [3]], [(4, 0), (4, 1), (4, 2), (4, 3), (0, 3), (1, 3), (2, 3)], [(4, 3)],
     [(4, 0), (4, 1), (4, 2), (4, 3)]),
    # K=6: strict order
    ([[0], [1], [2], [3], [4], [5]],
     [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 2), (1, 3), (1, 4), (1, 5), (2, 3), (2, 4), (2, 5),
      (3, 4), (3, 5), (4, 5)],
     [(0, 5)], [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]),
    # K=7: two tied winners over five tied losers
    ([[5, 6], [0, 1, 2, 3, 4]],
     [(5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 0), (6, 1), (6, 2), (6, 3), (6, 4)],
     [(5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 0), (6, 1), (6, 2), (6, 3), (6, 4)],
     [(5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 0), (6, 1), (6, 2), (6, 3), (6, 4)]),
    # K=8: everything tied
    ([[0, 1, 2, 3, 4, 5, 6, 7]], [], [], []),
    # K=9: groups of 1, 2, 1, 3, 1, 1
    ([[8], [0, 1], [2], [3, 4, 5], [6], [7]],
     [(8, 0), (8, 1), (8, 2), (8, 3), (8, 4), (8, 5), (8, 6), (8, 7),
      (0, 2), (1, 2), (0, 3), (0, 4), (0, 5), (1, 3), (1, 4), (1, 5), (0, 6), (1, 6), (0, 7), (1, 7),
      (2, 3), (2, 4), (2, 5), (2, 6), (2, 7),
      (3, 6), (4, 6), (5, 6), (3, 7), (4, 7), (5, 7),
      (6, 7)],
     [(8, 7)], [(8, 0), (8, 1), (8, 2), (8, 3), (8, 4), (8, 5), (8, 6), (8, 7)]),
]


@pytest.mark.parametrize("ranking, all_pairs, best_vs_worst, best_vs_each", CASES)
def test_pair_modes_match_hand_worked_expectations(ranking, all_pairs, best_vs_worst, best_vs_each):
    assert sorted(select_pairs(ranking, "all")) == sorted(all_pairs)
    assert len(select_pairs(ranking, "all")) == len(all_pairs)  # no duplicates
    assert select_pairs(ranking, "best_vs_worst") == best_vs_worst
    assert select_pairs(ranking, "best_vs_each") == best_vs_each
    tied = {(a, b) for g in ranking for a in g for b in g}
    for mode in ("all", "best_vs_worst", "best_vs_each"):
        assert not tied & set(select_pairs(ranking, mode)), f"{mode}: a tie produced a pair"


def test_all_pairs_count_is_k_choose_2_minus_tied_pairs():
    for k in range(2, 10):
        assert len(select_pairs([[i] for i in range(k)], "all")) == k * (k - 1) // 2
    # K=9 case above: 36 pairs minus 1 (group of 2) minus 3 (group of 3)
    assert len(CASES[-1][1]) == 36 - 1 - 3


def test_unknown_pair_mode_is_a_clear_error():
    with pytest.raises(AlignError, match="pair mode 'best'.*all, best_vs_worst, best_vs_each"):
        select_pairs([[0], [1]], "best")


def _rec(responses, ranking, prompt="q", where="f:1"):
    return RankingRecord([{"role": "user", "content": prompt}], responses, ranking, where)


def test_preference_pairs_rows_are_trl_conversational_and_skip_identical_texts():
    records = [_rec(["a", "b", "c"], [[0], [1], [2]], "p1", "f:1"), _rec(["x", "y"], [[0, 1]], "p2", "f:2"),
               _rec(["s", "s"], [[0], [1]], "p3", "f:3"), _rec(["a", "b", "a"], [[0], [1], [2]], "p4", "f:4")]
    rows, empty = preference_pairs(records, "all")
    # p1: a>b, a>c, b>c; p2 all tied; p3 identical texts tie; p4: the copies of "a" above and below "b" make
    # one tie group of all three (a ranking cannot say a > b > a), so no pair
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("a", "b"), ("a", "c"), ("b", "c")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "p1"}]
    assert rows[0]["chosen"][0]["role"] == "assistant"
    assert empty == ["f:2", "f:3", "f:4"]  # where the records that gave no pair are


@pytest.mark.parametrize("ranking, top, bottom, expected", [
    ([[0], [1]], 1, 1, ([0], [1])),
    ([[0], [1], [2]], 1, 1, ([0], [2])),  # the middle is unused
    ([[0, 1], [2]], 1, 1, ([0, 1], [2])),  # tied winners are both desirable
    ([[0, 1, 2]], 1, 1, ([], [])),  # one tie group: nothing
    ([[0], [1], [2], [3]], 2, 1, ([0, 1], [3])),
    ([[0], [1], [2], [3]], 1, 2, ([0], [2, 3])),
    ([[0], [1], [2]], 3, 3, ([0, 1], [2])),  # overlap: desirable wins, at least one group stays undesirable
    ([[3], [0, 2], [1]], 1, 2, ([3], [0, 2, 1])),
])
def test_kto_labels(ranking, top, bottom, expected):
    assert kto_labels(ranking, top, bottom) == expected


def test_kto_examples_label_rows_and_count_empty_records():
    rows, empty = kto_examples([_rec(["g", "m", "b"], [[0], [1], [2]]), _rec(["t", "u"], [[0, 1]], where="f:2")])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("g", True), ("b", False)]
    assert empty == ["f:2"]


def test_pairs_from_files_in_every_format(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"prompt": "rank me", "responses": ["r0", "r1", "r2"], "ranking": [[1], [0, 2]]},
        {"prompt": "pair", "chosen": "good", "rejected": "bad"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows, empty = preference_pairs(read_rankings(path), "best_vs_each")
    got = [(r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    assert got == [("rank me", "r1", "r0"), ("rank me", "r1", "r2"), ("pair", "good", "bad"),
                   ("hi", "hello!", "go away")]
    assert empty == []


def test_split_records_by_prompt_keeps_a_prompt_on_one_side():
    records = [_rec(["a", "b"], [[0], [1]], f"p{i % 5}") for i in range(20)]
    train, held = split_records_by_prompt(records, 0.4, seed=3)
    train_keys = {r.prompt_text for r in train}
    held_keys = {r.prompt_text for r in held}
    assert len(held_keys) == 2 and not train_keys & held_keys and len(train) + len(held) == 20
    assert split_records_by_prompt(records, 0.4, seed=3) == (train, held)


# An HH pair whose transcripts differ before the last Assistant turn: each response spans three turns.
EARLY_HH = {
    "chosen": "\n\nHuman: Can you help me?\n\nAssistant: Sure, with what?\n\nHuman: My bike.\n\nAssistant: Check it.",
    "rejected": "\n\nHuman: Can you help me?\n\nAssistant: No.\n\nHuman: Please?\n\nAssistant: Still no.",
}


def _no_markup(rows, keys):
    return all("Human:" not in m["content"] and "Assistant:" not in m["content"]
               for r in rows for k in keys for m in r[k])


def test_multi_turn_hh_responses_reach_dpo_and_kto_as_real_turns(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(EARLY_HH) + "\n")
    records = read_rankings(path)
    (row,), _ = preference_pairs(records)
    assert row["prompt"] == [{"role": "user", "content": "Can you help me?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Sure, with what?"},
                             {"role": "user", "content": "My bike."}, {"role": "assistant", "content": "Check it."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No."}, {"role": "user", "content": "Please?"},
                               {"role": "assistant", "content": "Still no."}]
    rows, _ = kto_examples(records)
    assert [[m["role"] for m in r["completion"]] for r in rows] == [["assistant", "user", "assistant"]] * 2
    assert _no_markup([row], ("prompt", "chosen", "rejected")) and _no_markup(rows, ("prompt", "completion"))


def test_records_with_leftover_transcript_markup_are_unusable_and_skippable(tmp_path):
    bad = {"prompt": "q", "chosen": "fine\n \nHuman: sneaky turn", "rejected": "b"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [bad, *({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}
                                                            for i in range(3))]) + "\n")
    with pytest.raises(AlignError, match=r"pairs.jsonl:1: its assistant message #0 holds HH transcript markup"):
        read_rankings(path)
    records, report = read_rankings_checked(path, max_bad_records=1)
    assert len(records) == 3 and report.bad[0][0].endswith("pairs.jsonl:1")
    with pytest.raises(AlignError, match="f:9: .*HH transcript markup"):  # records built in code are checked too
        preference_pairs([_rec(["ok", "x\n\n Assistant: y"], [[0], [1]], where="f:9")])
