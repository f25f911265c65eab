"""`align label stats` on a hand-made two-labeler file, against agreement counted by hand."""

from __future__ import annotations

import json

import pytest

from align.cli import main
from align.errors import AlignError
from align.preferences.label.stats import label_stats


def rec(task: str, k: int, labeler: str, ranking=None, flags=None, skipped=False) -> dict:
    out = {"prompt": f"prompt {task}", "responses": [f"{task}{i}" for i in range(k)]}
    if not skipped:
        out["ranking"] = ranking
    return out | {"flags": flags or [[] for _ in range(k)], "skipped": skipped, "task_id": f"{task}-h", "labeler": labeler}


# Hand count, pairs (i, j) of responses:
#   A (K=3)  ann 0>1>2, bob 0>2>1: (0,1) agree, (0,2) agree, (1,2) disagree      strict 3, agree 2; same 2/3
#   B (K=4)  ann 1>{0=2}>3, bob 1>0>2>3: (0,2) ann tie vs bob 0>2 (not strict, not same); the other 5 agree
#                                                                                strict 5, agree 5; same 5/6
#   C (K=2)  ann skipped, bob ranked: not compared
#   D (K=3)  ann 2>{0=1}, bob {0=1}>2: (0,1) tie/tie (same), (0,2) and (1,2) disagree
#                                                                                strict 2, agree 0; same 1/3
#   total: strict agreement 7/10 = 70%; with ties 8/12 = 66.67%
RECORDS = [
    rec("A", 3, "ann", [[2], [1], [0]], flags=[["harmful"], [], []]),  # replaced by ann's later label of A
    rec("A", 3, "bob", [[0], [2], [1]]),
    rec("B", 4, "ann", [[1], [0, 2], [3]], flags=[[], [], [], ["harmful"]]),
    rec("B", 4, "bob", [[1], [0], [2], [3]]),
    rec("C", 2, "ann", skipped=True, flags=[[], ["unreadable"]]),
    rec("C", 2, "bob", [[1], [0]], flags=[["off-topic"], []]),
    rec("D", 3, "ann", [[2], [0, 1]]),
    rec("D", 3, "bob", [[0, 1], [2]]),
    rec("A", 3, "ann", [[0], [1], [2]]),
]


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_agreement_matches_hand_count(labels_file):
    stats = label_stats(labels_file)
    assert stats["agreement"] == 0.7
    assert (stats["agreeing_pairs"], stats["strict_pairs"]) == (7, 10)
    assert stats["agreement_with_ties"] == round(8 / 12, 4)
    assert (stats["same_answer_pairs"], stats["compared_pairs"]) == (8, 12)
    (pair,) = stats["by_labeler_pair"]
    assert pair["labelers"] == ["ann", "bob"] and pair["tasks"] == 3 and pair["agreement"] == 0.7


def test_counts_and_flags_use_the_last_label_per_task(labels_file):
    stats = label_stats(labels_file)
    assert (stats["records"], stats["ranked"], stats["skipped"], stats["tasks"]) == (8, 7, 1, 4)
    assert stats["tasks_ranked_by_2_or_more"] == 3
    # ann's first label of A (flagged harmful) was replaced, so only B's harmful flag counts
    assert stats["flags"] == {"harmful": 1, "off-topic": 1, "unreadable": 1}
    assert stats["labelers"] == {
        "ann": {"ranked": 3, "skipped": 1, "flags": {"harmful": 1, "unreadable": 1}},
        "bob": {"ranked": 4, "skipped": 0, "flags": {"off-topic": 1}},
    }


def test_stats_command_prints_agreement(labels_file, capsys):
    assert main(["label", "stats", str(labels_file)]) == 0
    out = capsys.readouterr().out
    assert "8 labels (7 ranked, 1 skipped) of 4 tasks by 2 labeler(s)" in out
    assert "ann vs bob: 70.0% (7/10) where both gave an order; 66.7% (8/12) counting a tie as an answer" in out
    assert main(["label", "stats", str(labels_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"] == 0.7


def test_single_labeler_has_no_agreement(tmp_path, capsys):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(rec("A", 2, "ann", [[0], [1]])) + "\n")
    stats = label_stats(path)
    assert stats["agreement"] is None and stats["by_labeler_pair"] == []
    assert main(["label", "stats", str(path)]) == 0
    assert "no task was ranked by two labelers" in capsys.readouterr().out


def test_bad_ranking_in_stats_names_the_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec("A", 3, "ann", [[0], [1]])) + "\n")
    with pytest.raises(AlignError, match="task A-h labeler ann.*missing"):
        label_stats(path)
