"""benchmarks/bench_gpu.py --cpu-smoke: the GPU benchmark's whole flow on a tiny model on CPU.

GPU figures: not measured yet; run benchmarks/bench_gpu.py on a CUDA machine. This test keeps the script's
code path (asset building, the three case workers, the plan comparison, gpu.json / gpu.md) working on machines
without one. Its timeouts are hang guards only; the work is sized to take about a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, align_cache) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench-gpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGN_CACHE": str(align_cache)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=2400)  # above the script's own 1800 s guard
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text(), out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@pytest.mark.slow
def test_every_case_measured_with_plan(smoke):
    data, _, _ = smoke
    assert data["mode"] == "cpu-smoke"
    cases = data["cases"]["tiny"]
    assert set(cases) == {"sft_align", "sft_plain", "ppo"}
    for name, case in cases.items():
        assert case["status"] == "ok", (name, case.get("error"), case.get("traceback"))
        assert _number(case["peak_bytes"]) and case["peak_bytes"] > 0, name
        assert _number(case["plan"]["total_bytes"]) and case["plan"]["total_bytes"] > 0, name
        assert _number(case["plan"]["error_pct"]), name
    for name in ("sft_align", "sft_plain"):
        case = cases[name]
        assert case["steps"] == 2 and case["min_row_tokens"] >= 64  # every row full: batch x max_length tokens
        assert case["tokens_per_step"] == 2 * 64 and case["tokens_per_s"] > 0
        assert case["trainable_params"] > 0
    # same LoRA on the same model: both paths train the same number of weights
    assert cases["sft_align"]["trainable_params"] == cases["sft_plain"]["trainable_params"]
    ppo = cases["ppo"]
    assert ppo["steps"] == 2 and ppo["reward"] == "function"
    for key in ("generate_s", "score_s", "logprobs_s", "update_s", "step_s", "peak_rollout_bytes", "peak_update_bytes"):
        assert _number(ppo[key]) and ppo[key] >= 0, key
    assert 1 <= ppo["response_len_mean"] <= 8
    ratio = data["ratios"]["tiny"]
    assert _number(ratio["tokens_per_s"]) and _number(ratio["peak_bytes"])


@pytest.mark.slow
def test_markdown_report(smoke):
    data, md, out = smoke
    assert "| tiny | align (TRL SFTTrainer) |" in md and "| tiny | plain Trainer + peft |" in md
    assert "## PPO" in md and "Not measured" not in md
    assert data["environment"]["versions"]["torch"]
    assert out != REPO / "benchmarks" / "results"


def test_no_cuda_exits_cleanly(tmp_path):
    """Without a GPU (and without --cpu-smoke) the script measures nothing, writes nothing and exits 0."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)  # a hang guard: it exits after its imports
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device: nothing measured" in proc.stdout
    assert not (tmp_path / "gpu.json").exists()
