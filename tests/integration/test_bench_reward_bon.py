"""benchmarks/bench_reward_bon.py on a tiny finished run: best-of-n by the reward model, scored by the labeler."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench():
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))  # as when run as a script: its helpers sit beside it
    spec = importlib.util.spec_from_file_location("bench_reward_bon", REPO / "benchmarks" / "bench_reward_bon.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_best_of_n_rows_are_consistent(tiny_pipeline_run, tmp_path, one_thread):
    out = tmp_path / "bon.md"
    _bench().main([str(tiny_pipeline_run), "--n", "4", "--prompts", "3", "--max-new-tokens", "6",
                   "--prompt-set", "gold:focus:heldout", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert [row["n"] for row in result["rows"]] == [1, 2, 4]
    first = result["rows"][0]
    assert first["rm_best"] == first["random"] == first["oracle_best"]  # best of one sample is that sample
    for row in result["rows"]:
        assert row["oracle_best"] >= row["rm_best"] - 1e-9  # no pick beats the labeler's own best
        assert row["oracle_best"] >= row["random"] - 1e-9
        assert abs(row["rm_minus_random"] - (row["rm_best"] - row["random"])) < 1e-9
    assert result["prompts"] == 3 and 0.0 <= result["sample_pair_accuracy"] <= 1.0
    assert "| 4 |" in out.read_text()

    # --render redraws from the .json, with an RL policy's held-out gain and KL read from its eval metrics
    rl_run = tmp_path / "rl-run"
    (rl_run / "eval").mkdir(parents=True)
    (rl_run / "eval" / "metrics.json").write_text(json.dumps({"baseline": "sft", "policies": {
        "sft": {"kl": 0.0}, "ppo": {"kl": 0.5, "gold_gain": {"gain": 0.02, "ci_low": -0.01, "ci_high": 0.05}}}}))
    _bench().main(["--render", "--rl", f"short run={rl_run}", "--out", str(out)])
    assert "| short run | ppo | 0.50 | +0.020 [-0.010, +0.050] |" in out.read_text()
    assert out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["rl"][0]["kl"] == 0.5
