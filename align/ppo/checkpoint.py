"""Checkpoints: everything needed to continue a PPO run exactly where a killed one stopped.

``checkpoints/step-N/`` (N = completed steps) holds the trainable weights (policy adapter or full
weights, value adapter), the value head (if the estimator has one), the optimizer state, the KL controller, RNG states (one
file per process of a data-parallel run: each samples its own rollouts) and a few running numbers.
It is written under a temporary name and renamed, so a kill never leaves a half checkpoint that
looks complete.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from align.errors import AlignError
from align.jsonl import iter_jsonl
from align.ppo.policy import ModelRoles, load_policy_state_dict, policy_state_dict, save_policy

_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng.rank{rank}.pt"


def save_checkpoint(
    root: Path, step: int, roles: ModelRoles, optimizer: torch.optim.Optimizer, kl_ctl: Any,
    state: dict[str, Any], keep: int, rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoints/step-{step}/ atomically; keep only the newest `keep` checkpoints.

    rng_states: every process's rng_state() in rank order (default: this process's only).
    """
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=root))
    try:
        save_file({k: v.contiguous().cpu() for k, v in policy_state_dict(roles).items()},
                  str(tmp / "trainable.safetensors"))
        if roles.value_head is not None:
            save_file({k: v.contiguous().cpu() for k, v in roles.value_head.state_dict().items()},
                      str(tmp / "value_head.safetensors"))
        if roles.is_peft:  # a ready-to-use policy adapter, too
            save_policy(roles, tmp / "policy")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        for rank, rng in enumerate(rng_states or [rng_state()]):
            torch.save(rng, tmp / rng_file(rank))
        (tmp / "state.json").write_text(json.dumps({"step": step, "kl_ctl": kl_ctl.state_dict(), **state}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(
    path: Path, roles: ModelRoles, optimizer: torch.optim.Optimizer, kl_ctl: Any, rank: int = 0
) -> dict[str, Any]:
    """Restore weights, optimizer, KL controller and process `rank`'s RNG; returns state.json (with 'step').

    A rank the checkpoint has no RNG file for (it was written by fewer processes) gets rank 0's
    state, then a reseed derived from (step, rank) so its samples differ from rank 0's.
    """
    from safetensors.torch import load_file

    try:
        load_policy_state_dict(roles, load_file(str(path / "trainable.safetensors")))
        if roles.value_head is not None:
            roles.value_head.load_state_dict(load_file(str(path / "value_head.safetensors")))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        state = json.loads((path / "state.json").read_text())
        own = path / rng_file(rank)
        set_rng_state(torch.load(own if own.exists() else path / "rng.pt", weights_only=False))
        if not own.exists():
            _reseed(int(state["step"]) * 1_000_003 + rank)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise AlignError(f"ppo: cannot resume from {path}: {exc}; delete it to start over") from exc
    kl_ctl.load_state_dict(state["kl_ctl"])
    return state


def _reseed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # all devices
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    kept = [rec for _, rec in iter_jsonl(path, torn_tail=True) if rec.get("step", 0) <= last_step]
    path.write_text("".join(json.dumps(rec) + "\n" for rec in kept))
