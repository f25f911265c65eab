"""A diverged run (NaN/inf loss or gradients, here from lr=1e30) stops with one clear error and is never complete.

The tiny recipes run through the CLI as a user would: exit code 2, one `error:` line naming the
stage and step, no COMPLETE marker, no output model, and every checkpoint left behind (the resume point)
holds finite weights from before the divergence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.cli import main
from align.ppo.checkpoint import latest_checkpoint
from align.training import last_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHORT_SFT = ["sft.train.max_steps=4", "sft.train.save_steps=4"]  # upstream of the stage under test: kept short


def run_cli(capsys, recipe: str, out: Path, overrides: list[str]) -> tuple[int, str]:
    code = main(["run", str(REPO / "recipes" / recipe), "--out", str(out), *overrides])
    return code, capsys.readouterr().err


def diverged_step(stderr: str, stage: str, lr_key: str) -> int:
    """The one error line names the stage, the step, the non-finite quantity and the setting to lower."""
    assert len(re.findall(r"error: ", stderr)) == 1, stderr[-2000:]
    errors = re.findall(r"(?:^|\n)error: (.*)", stderr)  # on a line of its own, not after a progress bar
    assert len(errors) == 1, stderr[-2000:]
    match = re.fullmatch(rf"{stage}: training diverged at step (\d+): .* (?:is|are) (?:nan|inf|-inf)\b.*"
                         rf"lower {re.escape(lr_key)} \(now 1e\+30\).*", errors[0])
    assert match, errors[0]
    return int(match.group(1))


def assert_not_complete(stage_dir: Path) -> None:
    assert (stage_dir / "IN_PROGRESS").exists() and not (stage_dir / "COMPLETE").exists()
    assert not (stage_dir / "model").exists() and not (stage_dir / "result.json").exists()
    assert "training diverged" in (stage_dir / "log.txt").read_text()


def assert_finite(folder: Path) -> None:
    files = list(folder.rglob("*.safetensors"))
    assert files, f"no weights in {folder}"
    for f in files:
        for name, tensor in load_file(str(f)).items():
            assert torch.isfinite(tensor).all(), f"{f}: {name} holds NaN/inf"


def checkpoint_step(path: str | Path) -> int:
    return int(re.search(r"(\d+)$", str(path)).group(1))


@pytest.mark.parametrize("recipe,stage", [("sft-tiny.yaml", "sft"), ("reward-tiny.yaml", "reward"),
                                          ("dpo-tiny.yaml", "dpo")])
def test_trainer_stage_stops_at_the_first_non_finite_step(recipe, stage, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    upstream = SHORT_SFT if stage != "sft" else []
    code, err = run_cli(capsys, recipe, out, [*upstream, f"{stage}.train.lr=1e30", f"{stage}.train.save_steps=1"])
    assert code == 2
    step = diverged_step(err, stage, f"{stage}.train.lr")
    stage_dir = out / stage
    assert_not_complete(stage_dir)
    # Checkpoints were written every step up to the divergence, none at or after it; the newest is the resume
    # point and holds the finite weights of the step before.
    resume = last_checkpoint(stage_dir / "checkpoints")
    assert resume is not None and checkpoint_step(resume) == step - 1
    for ckpt in (stage_dir / "checkpoints").glob("checkpoint-*"):
        assert checkpoint_step(ckpt) < step
        assert_finite(ckpt)


def test_ppo_stops_before_sampling_from_a_nan_policy(tmp_path, capsys, monkeypatch, one_thread):
    """One update per step at lr=1e30 leaves huge (finite) weights; the next rollout's logits are NaN."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    ppo = [f"ppo.train.{k}" for k in ("lr=1e30", "steps=3", "rollout.batch_size=4", "mini_batch_size=4",
                                      "ppo_epochs=1", "save_steps=1", "report_to=[none]", "log.progress=false",
                                      "rollout.max_new_tokens=8")]
    code, err = run_cli(capsys, "ppo-tiny.yaml", out, [*SHORT_SFT, "reward.train.max_steps=4", *ppo])
    assert code == 2
    step = diverged_step(err, "ppo", "ppo.train.lr")
    assert step >= 2
    stage_dir = out / "ppo"
    assert_not_complete(stage_dir)
    assert not (stage_dir / "value_head.safetensors").exists()
    resume = latest_checkpoint(stage_dir / "checkpoints")
    assert resume is not None and checkpoint_step(resume) == step - 1
    assert_finite(resume)
