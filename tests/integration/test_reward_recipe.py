"""recipes/reward-tiny.yaml end to end through the CLI (shrunk): sft → rank (gold) → reward → align score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def repo_cwd(monkeypatch, one_thread):
    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repo


def test_reward_tiny_recipe_runs_end_to_end(tmp_path, capsys, align_cache):
    out = tmp_path / "run"
    code = main(["run", "recipes/reward-tiny.yaml",
                 "sft.train.max_steps=2", "rank.prompts={path: examples/data/alpaca_tiny.json, max_samples: 8}",
                 "reward.train.max_steps=4", "--out", str(out)])
    assert code == 0
    assert all((out / stage / "COMPLETE").exists() for stage in ("sft", "rank", "reward"))
    rankings = [json.loads(line) for line in (out / "rank" / "rankings.jsonl").read_text().splitlines()]
    assert len(rankings) == 8 and all(len(r["responses"]) == 4 for r in rankings)

    model_dir = out / "reward" / "model"
    meta = json.loads((model_dir / "align_reward.json").read_text())
    assert meta["adapter"] is True and meta["base"] == str((out / "reward" / "base").resolve())  # SFT merged
    assert json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == meta["base"]
    metrics = json.loads((out / "reward" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["heldout_prompts"] == 2

    capsys.readouterr()
    assert main(["score", str(out / "reward"), "--prompt", "What is the capital of France?",
                 "--response", "The capital of France is Paris."]) == 0
    value = float(capsys.readouterr().out.strip())
    assert value == value  # a finite number printed alone on stdout
