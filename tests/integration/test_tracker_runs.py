"""Trackers (train.report_to): PPO reports through transformers' own callbacks, so W&B offline and trackio
locally hold each step's stats, and TensorBoard keeps its tags and folder; each stage is its own run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from align.stages import StageContext
from align.stages.ppo import Config, run

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]

KEYS = ("objective/kl", "objective/scores", "loss/total")


def ppo(tmp_path: Path, report_to: list[str]) -> Path:
    """Two PPO steps on tiny-llama in tmp_path/tinyrun/ppo; returns the stage folder."""
    (tmp_path / "reward.py").write_text(
        "def frac_e(prompt, response):\n    return sum(c == 'e' for c in response) / max(len(response), 1)\n")
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": p}) + "\n" for p in ("Name a color.", "Describe the sea.", "Say hi.", "Why?")))
    cfg = Config.model_validate({
        "policy": "tiny-llama", "reward": f"{tmp_path / 'reward.py'}:frac_e", "prompts": str(tmp_path / "prompts.jsonl"),
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"steps": 2, "mini_batch_size": 2, "ppo_epochs": 1, "lr": 1e-3, "report_to": report_to,
                  "rollout": {"batch_size": 4, "max_new_tokens": 6}, "log": {"progress": False}},
    })
    stage_dir = tmp_path / "tinyrun" / "ppo"
    stage_dir.mkdir(parents=True)
    run(cfg, StageContext("ppo", stage_dir, tmp_path / "tinyrun", seed=0, upstream={}))
    return stage_dir


def stats(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "stats.jsonl").read_text().splitlines()]


def wandb_records(run_file: Path):
    """The protobuf Records of an offline W&B run file: a LevelDB-style log (a 7-byte file header, 32 KiB
    blocks, each record in chunks with a 7-byte header: crc32, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def sft(tmp_path: Path, report_to: list[str]) -> None:
    """Two SFT steps on tiny-llama in tmp_path/tinyrun/sft."""
    from align.stages.sft import Config as SFTConfig
    from align.stages.sft import run as run_sft

    cfg = SFTConfig.model_validate({
        "model": "tiny-llama", "data": str(REPO / "examples" / "data" / "alpaca_tiny.json"),
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 96, "logging_steps": 1, "report_to": report_to},
    })
    stage_dir = tmp_path / "tinyrun" / "sft"
    stage_dir.mkdir(parents=True)
    run_sft(cfg, StageContext("sft", stage_dir, tmp_path / "tinyrun", seed=0, upstream={}))


def wandb_runs(folder: Path) -> dict[str, list[dict]]:
    """Run name -> history rows, for every offline W&B run under folder."""
    runs = {}
    for run_file in folder.glob("wandb/offline-run-*/run-*.wandb"):
        records = list(wandb_records(run_file))
        name = next(r.run.display_name for r in records if r.WhichOneof("record_type") == "run")
        runs[name] = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
                      for r in records if r.WhichOneof("record_type") == "history"]
    return runs


def test_wandb_offline_runs_hold_every_step_and_tensorboard_keeps_its_tags(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing outside tmp_path
        monkeypatch.setenv(name, str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    sft(tmp_path, ["wandb"])  # a Trainer stage first: PPO must not log into its run
    stage_dir = ppo(tmp_path, ["wandb", "tensorboard"])
    want = stats(stage_dir)

    runs = wandb_runs(tmp_path / "wandb-dir")
    assert sorted(runs) == ["tinyrun-ppo", "tinyrun-sft"]  # one run per stage, named after the run folder
    assert [row["train/global_step"] for row in runs["tinyrun-sft"] if "train/loss" in row] == [1, 2]
    rows = runs["tinyrun-ppo"]
    assert [row["train/global_step"] for row in rows] == [1, 2]
    for key in KEYS:  # transformers' WandbCallback names each stat train/<name>
        assert [row[f"train/{key}"] for row in rows] == pytest.approx([s[key] for s in want]), key
    assert sys.modules["wandb"].run is None  # the stage ended its run

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stage_dir / "tensorboard"))
    events.Reload()
    for key in KEYS:  # the stats' own names, as before trackers other than TensorBoard existed
        assert [e.step for e in events.Scalars(key)] == [1, 2]
        assert [e.value for e in events.Scalars(key)] == pytest.approx([s[key] for s in want], rel=1e-5)


@pytest.fixture()
def trackio_dir(tmp_path, monkeypatch) -> Path:
    """A TRACKIO_DIR in tmp_path; trackio reads the variable when imported, so loaded modules are patched too."""
    pytest.importorskip("trackio")
    folder = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(folder))
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "trackio" and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", folder)
    return folder


def test_trackio_local_run_holds_every_step(tmp_path, trackio_dir):
    import sqlite3

    stage_dir = ppo(tmp_path, ["trackio"])
    want = stats(stage_dir)
    assert not (stage_dir / "tensorboard").exists()  # only the trackers asked for

    with sqlite3.connect(trackio_dir / "huggingface.db") as db:  # transformers' default trackio project
        rows = [(run, json.loads(metrics)) for run, metrics in db.execute("SELECT run_name, metrics FROM metrics")]
    assert {run for run, _ in rows} == {"tinyrun-ppo"}
    steps = [m for _, m in rows if "train/global_step" in m]
    assert [m["train/global_step"] for m in steps] == [1, 2]
    for key in KEYS:
        assert [m[f"train/{key}"] for m in steps] == pytest.approx([s[key] for s in want]), key
