"""The end-of-run summary table and the report: a reward model's held-out accuracy comes with its interval."""

from __future__ import annotations

from types import SimpleNamespace

from align.cli import print_summary


def test_summary_prints_the_reward_models_heldout_interval(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per cell
    reward = SimpleNamespace(name="reward", status="ran", seconds=12.0, metrics={
        "heldout_accuracy": 0.6207, "heldout_accuracy_ci": [0.5172, 0.7241], "heldout_pairs": 58, "accuracy": 0.95})
    sft = SimpleNamespace(name="sft", status="ran", seconds=3.0, metrics={"last_loss": 1.25})
    print_summary([sft, reward], "runs/x")
    out = capsys.readouterr().out
    assert "heldout_accuracy=0.6207 [0.517, 0.724] (95% CI, 58 pairs)" in out
    assert "last_loss=1.25" in out and "1.25 [" not in out  # other metrics carry no interval


def test_report_tables_show_an_interval_in_one_cell():
    from align.report import _flat_metrics

    rows = dict(_flat_metrics({"heldout_accuracy": 0.6364, "heldout_accuracy_ci": [0.5246, 0.7479],
                               "examples": ["a", "b"], "accuracy_by_k": {"4": 0.6364}}))
    assert rows["heldout_accuracy_ci"] == "[0.5246, 0.7479]"
    assert rows["accuracy_by_k.4"] == 0.6364 and "examples" not in rows  # other lists stay out of the table
