"""Kill a PPO run with SIGKILL after its first checkpoint, resume it, and get the uninterrupted run's stats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.stages import StageContext
from align.stages.ppo import Config, run
from tests.conftest import merged

DRIVER = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from align.stages import StageContext
from align.stages.ppo import Config, run
cfg = Config.model_validate(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
run(cfg, StageContext("ppo", out, out.parent, seed=0, upstream={}))
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def config(tmp_path: Path) -> dict:
    # the reward sleeps a little so the killed run is still busy when the first checkpoint lands
    (tmp_path / "slow_reward.py").write_text(
        "import time\n"
        "def frac_e(prompt, response):\n"
        "    time.sleep(0.02)\n"
        "    return sum(c == 'e' for c in response) / max(len(response), 1)\n"
    )
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": p}) + "\n" for p in ("Name a color.", "Describe the sea.", "Say hi.", "Why?", "Go on.")))
    return {
        "policy": "tiny-llama", "reward": f"{tmp_path / 'slow_reward.py'}:frac_e",
        "prompts": str(tmp_path / "prompts.jsonl"), "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"steps": 12, "mini_batch_size": 2, "grad_accum": 2, "ppo_epochs": 2, "lr": 3e-3, "save_steps": 2,
                  "save_total_limit": 2, "rollout": {"batch_size": 4, "max_new_tokens": 6},
                  "kl": {"adaptive": True, "target": 0.5, "horizon": 50},
                  "report_to": ["tensorboard"], "log": {"sample_every": 1, "num_samples": 1, "progress": False}},
    }


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("estimator", [
    {},
    {"advantage": {"estimator": "rloo"}, "rollout": {"group_size": 2}},
    {"advantage": {"estimator": "grpo", "dr_grpo": True}, "rollout": {"group_size": 2}, "kl": {"penalty": "loss"}},
], ids=["gae", "rloo", "dr_grpo"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, estimator):
    raw = config(tmp_path)
    raw["train"] = merged(raw["train"], estimator)
    straight = tmp_path / "straight"
    straight.mkdir()
    run(Config.model_validate(raw), StageContext("ppo", straight, tmp_path, seed=0, upstream={}))

    killed = tmp_path / "killed"
    killed.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(raw), str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # a hang guard: step 4 comes after a few seconds
    while not (killed / "checkpoints" / "step-4").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()  # it really died mid-run
    logged_before = [s["step"] for s in read(killed / "stats.jsonl")]
    assert max(logged_before) < 12

    result = run(Config.model_validate(raw), StageContext("ppo", killed, tmp_path, seed=0, upstream={}))
    resumed_from = Path(result.metrics["resumed_from"])
    assert resumed_from.name.startswith("step-") and int(resumed_from.name[5:]) >= 4
    assert not list((killed / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left behind

    a, b = read(straight / "stats.jsonl"), read(killed / "stats.jsonl")
    assert [s["step"] for s in b] == list(range(1, 13))  # no gaps, no duplicates
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "loss/total", "policy/approxkl"):
        assert [round(s[key], 5) for s in b] == [round(s[key], 5) for s in a], key
    assert [s["step"] for s in read(killed / "samples.jsonl")] == list(range(1, 13))
    assert [s["response"] for s in read(killed / "samples.jsonl")] == [s["response"] for s in read(straight / "samples.jsonl")]
    assert result.metrics["steps"] == 12 and result.metrics["first_score"] == a[0]["objective/scores"]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-10", "step-12"]


def test_finished_run_resumes_to_the_same_outputs(tiny_model_dir, tmp_path):
    """Re-running a finished stage (e.g. killed while writing outputs) redoes no step."""
    raw = config(tmp_path)
    raw["train"] = merged(raw["train"], {"steps": 2, "report_to": ["none"]})
    out = tmp_path / "ppo"
    out.mkdir()
    first = run(Config.model_validate(raw), StageContext("ppo", out, tmp_path, seed=0, upstream={}))
    again = run(Config.model_validate(raw), StageContext("ppo", out, tmp_path, seed=0, upstream={}))
    assert again.metrics["resumed_from"].endswith("step-2")
    assert [s["step"] for s in read(out / "stats.jsonl")] == [1, 2]
    assert again.metrics["last_score"] == first.metrics["last_score"]
