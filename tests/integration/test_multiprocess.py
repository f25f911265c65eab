"""Data-parallel SFT with two CPU processes (gloo) matches single-process training.

`accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x (its CPU path is the
simple launcher), so the test uses torchrun, which accelerate/Trainer pick up from the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, per_device_batch: int) -> Path:
    path = tmp_path / f"r{per_device_batch}.yaml"
    path.write_text(f"""
name: ddp
seed: 3
sft:
  model: tiny-llama
  data: {REPO}/examples/data/alpaca_tiny.json
  adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
  train: {{max_steps: 6, batch_size: {per_device_batch}, max_length: 128, lr: 5.0e-3, warmup_ratio: 0.0,
           lr_scheduler: constant, report_to: [none], logging_steps: 1}}
""")
    return path


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "sft" / "model" / "adapter_model.safetensors")


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed next to this Python")
def test_two_process_sft_matches_single_process(tmp_path, tiny_model_dir):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "align.cli", "run", str(recipe(tmp_path, 4)), "--out",
                             str(tmp_path / "single")], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "align.cli", "run",
                            str(recipe(tmp_path, 2)), "--out", str(tmp_path / "multi")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert (tmp_path / "multi" / "sft" / "COMPLETE").exists()
    assert (tmp_path / "multi" / "sft" / "log.rank1.txt").exists()  # really two processes
    a, b = adapter_weights(tmp_path / "single"), adapter_weights(tmp_path / "multi")
    assert a.keys() == b.keys()
    moved = max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-3  # training did something
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=1e-3, msg=key)
