"""`align run`: run a recipe's stages in order, skipping what is already done.

Each stage writes to ``RUN/<stage>/``: ``config.yaml`` (resolved settings), ``log.txt``,
``result.json`` (outputs + metrics) and ``COMPLETE`` holding a hash of the stage's config, its
inputs' hashes and the content of the local files it reads. A finished stage with the same hash
is skipped; a changed config changes its hash and so the hashes of every stage that reads it.
A stage interrupted mid-way keeps its checkpoints when re-run with the same hash (training
resumes); with a different hash its folder is cleared first.

One command at a time writes a run folder: `RUN/.lock` is held (an OS file lock, released when the
holder exits, however it exits) for the whole `align run` or `align report`; a second one fails at once
with a line naming the holder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from align.config import check_recipe_inputs, load_recipe, stage_refs
from align.errors import AlignError
from align.stages import STAGE_ORDER, StageContext, StageResult, resolve_refs, stage_module

COMPLETE = "COMPLETE"
IN_PROGRESS = "IN_PROGRESS"
LOCK = ".lock"
log = logging.getLogger("align")


def process_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun; (0, 1) otherwise.

    Every process runs every stage (training is data-parallel); only rank 0 writes markers,
    configs and reports, and the others wait until rank 0 has prepared the stage folder.
    """
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _launch_id() -> str:
    """What the processes of one `accelerate launch` / torchrun share and another launch does not."""
    env = os.environ
    return f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}:{env.get('TORCHELASTIC_RUN_ID', '')}"


def _holder(lock_path: Path) -> dict[str, Any]:
    """What the process holding a run folder's lock wrote into it ({} if nothing readable yet)."""
    for _ in range(20):  # the holder writes its details right after taking the lock
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(lock_path.read_text())
            if isinstance(info, dict):
                return info
        time.sleep(0.01)
    return {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (it has not written its details yet)"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command')}")


def _alive_here(info: dict[str, Any]) -> bool | None:
    """Whether the holder's process still exists (None: it runs on another host, so unknown)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return None
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line() -> str:
    argv = sys.argv
    if argv and Path(argv[0]).name in ("align", "cli.py"):
        return shlex.join(["align", *argv[1:]])
    return shlex.join([sys.executable, *argv])


@contextlib.contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` for the block: a second command writing the same run folder fails at once.

    Without it two `align run`s into one folder both "succeed" and leave a stage marked complete with
    another run's checkpoints and metrics. `flock` belongs to the open file, so the OS releases it when
    the holder exits in any way (kill -9 included): a killed run never leaves a stale lock to clean up
    before resuming. The holder's pid, host, start time and command are written into the file for the
    error message. Under `accelerate launch` only rank 0 takes it; the other ranks wait until their own
    launch holds it (`_wait_for_launch_lock`), so they neither deadlock on it nor join another launch's run.
    """
    run_dir = Path(run_dir)
    lock_path = run_dir / LOCK
    rank, world = process_rank()
    if rank != 0:
        _wait_for_launch_lock(lock_path)
        yield
        return
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock (align runs on Linux and macOS)
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise AlignError(f"run folder {run_dir}: cannot write {lock_path} ({exc.strerror}); "
                         f"expected a folder this user can write to (or pick another --out)") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlignError(f"run folder {run_dir} is in use by {_describe(_holder(lock_path))}; wait for it "
                             f"to finish or pass another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": _command_line(),
                "launch": _launch_id() if world > 1 else None}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (its content is only read while it is held)


def _wait_for_launch_lock(lock_path: Path, timeout_s: float = 600.0) -> None:
    """A rank > 0 waits until its own launch's rank 0 holds the lock; another live launch's lock fails at once."""
    mine = _launch_id()
    deadline = time.time() + timeout_s
    while True:
        info = _holder(lock_path) if lock_path.exists() else {}
        if info.get("launch") == mine and _alive_here(info) is not False:
            return
        if info and _alive_here(info) is True and info.get("launch") != mine:
            raise AlignError(f"run folder {lock_path.parent} is in use by {_describe(info)}; this launch's "
                             f"rank 0 cannot take it, so rank {process_rank()[0]} stops too")
        if time.time() > deadline:
            raise AlignError(f"timed out waiting for rank 0 to lock {lock_path.parent} (held by {_describe(info)})")
        time.sleep(0.05)


def _wait_for(path: Path, content: str, timeout_s: float = 600.0) -> None:
    deadline = time.time() + timeout_s
    while _read(path) != content:
        if time.time() > deadline:
            raise AlignError(f"timed out waiting for rank 0 to prepare {path.parent}")
        time.sleep(0.05)


@dataclass
class StageRecord:
    name: str
    status: str  # "ran" | "skipped" | "not run"
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def _fingerprint(value: Any) -> Any:
    """Content hashes of local files a stage reads, so editing a data file re-runs the stage."""
    if isinstance(value, dict):
        return {k: _fingerprint(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fingerprint(v) for v in value]
    if isinstance(value, str) and not value.startswith("@") and ("/" in value or "." in value):
        path = Path(value).expanduser()
        try:
            if path.is_file() and path.stat().st_size < 512 * 1024 * 1024:
                return {"path": value, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
                return {"path": value, "listing": hashlib.sha256(repr(listing).encode()).hexdigest()}
        except OSError:
            pass
    return value


def stage_hash(name: str, cfg: BaseModel, seed: int, upstream_hashes: dict[str, str]) -> str:
    dumped = cfg.model_dump(mode="json")
    payload = {
        "stage": name,
        "config": _fingerprint(dumped),
        "seed": seed,
        "inputs": {ref: upstream_hashes[ref] for ref in sorted(set(stage_refs(dumped))) if ref in upstream_hashes},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def run_recipe(
    recipe_path: str | Path,
    out_dir: str | Path | None = None,
    overrides: list[str] | None = None,
    from_stage: str | None = None,
    only: str | None = None,
    force: bool = False,
) -> list[StageRecord]:
    """Run (or skip) every stage of a recipe; returns one record per stage."""
    recipe = load_recipe(recipe_path, overrides)
    run_dir = Path(out_dir) if out_dir else Path("runs") / recipe.name
    stages = [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
    for flag, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in stages:
            raise AlignError(f"{flag} {value}: this recipe's stages are {', '.join(stages)}")
    check_recipe_inputs(recipe, str(recipe_path), [only] if only else None)  # before hours of earlier stages
    make_run_dir(run_dir)
    with run_folder_lock(run_dir):
        return _run_stages(recipe, stages, run_dir, from_stage, only, force)


def make_run_dir(run_dir: Path) -> None:
    """Create the run folder, or say in one line why it cannot be one (not a traceback)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AlignError(f"run folder {run_dir} (--out): a file exists there; expected a folder (a new path or a "
                         f"folder from an earlier run)") from None
    except NotADirectoryError:
        blocker = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), run_dir.parent)
        raise AlignError(f"run folder {run_dir} (--out): {blocker} is a file, not a folder; expected a path whose "
                         f"parents are folders") from None
    except OSError as exc:
        raise AlignError(f"run folder {run_dir} (--out): cannot create it ({exc.strerror}); expected a "
                         f"path this user can write to") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise AlignError(f"run folder {run_dir} (--out): not writable by this user; expected a "
                         f"folder this user can write to (or pick another --out)")


def _run_stages(recipe: Any, stages: list[str], run_dir: Path, from_stage: str | None, only: str | None,
                force: bool) -> list[StageRecord]:
    """The stages of `run_recipe`, run while this process holds the run folder's lock."""
    rank, _ = process_rank()
    if rank == 0:
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))

    results: dict[str, StageResult] = {}
    hashes: dict[str, str] = {}
    records: list[StageRecord] = []
    for name in stages:
        cfg = getattr(recipe, name)
        digest = stage_hash(name, cfg, recipe.seed, hashes)
        hashes[name] = digest
        stage_dir = run_dir / name
        done = _read(stage_dir / COMPLETE) == digest
        forced = force or (from_stage is not None and stages.index(name) >= stages.index(from_stage))
        if only is not None and name != only:
            if (stage_dir / "result.json").exists() and (stage_dir / COMPLETE).exists():
                results[name] = StageResult.from_file(stage_dir / "result.json")
                hashes[name] = _read(stage_dir / COMPLETE) or digest
            records.append(StageRecord(name, "not run"))
            continue
        if done and not forced:
            result = StageResult.from_file(stage_dir / "result.json")
            results[name] = result
            records.append(StageRecord(name, "skipped", metrics=result.metrics, outputs=result.outputs))
            log.info("stage %s: up to date (hash %s), skipped", name, digest)
            continue
        missing = [ref for ref in stage_refs(cfg) if ref not in results]
        if missing:
            raise AlignError(f"stage {name} needs the output of {', '.join(missing)}, which has not completed in "
                             f"{run_dir}; run without --only first")
        records.append(_run_stage(name, cfg, digest, stage_dir, run_dir, recipe.seed, results, fresh=forced))
        results[name] = StageResult(records[-1].outputs, records[-1].metrics)
    if rank != 0:
        return records
    (run_dir / "summary.json").write_text(json.dumps([r.__dict__ for r in records], indent=2, default=str))
    from align.report import write_report

    md_path, _ = write_report(run_dir)
    log.info("report: %s (and report.html)", md_path)
    return records


def _run_stage(name: str, cfg: BaseModel, digest: str, stage_dir: Path, run_dir: Path, seed: int,
               upstream: dict[str, StageResult], fresh: bool) -> StageRecord:
    rank, _ = process_rank()
    if rank == 0:
        if stage_dir.exists() and (fresh or _read(stage_dir / IN_PROGRESS) != digest):
            shutil.rmtree(stage_dir)  # stale: other settings, or a forced re-run
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / COMPLETE).unlink(missing_ok=True)
        (stage_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        (stage_dir / IN_PROGRESS).write_text(digest)
    else:
        _wait_for(stage_dir / IN_PROGRESS, digest)
    handler = logging.FileHandler(stage_dir / ("log.txt" if rank == 0 else f"log.rank{rank}.txt"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("align", "transformers", "trl", "peft", "accelerate")]
    for lg in loggers:
        lg.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    log.info("stage %s: running (hash %s) in %s", name, digest, stage_dir)
    started = time.perf_counter()
    try:
        ctx = StageContext(name=name, stage_dir=stage_dir, run_dir=run_dir, seed=seed, upstream=dict(upstream))
        result: StageResult = stage_module(name).run(resolve_refs(cfg, upstream, name), ctx)
    except AlignError as exc:  # the reason goes into log.txt too (the CLI prints it once, on stderr)
        handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "stage %s failed: %s", (name, exc), None))
        raise
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    seconds = time.perf_counter() - started
    result.metrics.setdefault("seconds", round(seconds, 1))
    if rank == 0:
        if _read(stage_dir / IN_PROGRESS) != digest:  # only if something ignored the lock (e.g. another host)
            raise AlignError(f"stage {name}: {stage_dir} was changed by another run while this one ran "
                             f"({IN_PROGRESS} holds {_read(stage_dir / IN_PROGRESS)}, expected {digest}); "
                             f"not marked complete, run it again")
        (stage_dir / "result.json").write_text(result.to_json(stage_dir))
        (stage_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2, default=str))
        (stage_dir / COMPLETE).write_text(digest)
        (stage_dir / IN_PROGRESS).unlink(missing_ok=True)
        from align.sharing.model_card import write_stage_cards

        write_stage_cards(stage_dir, result.outputs)  # README.md model card in each model folder it wrote
    return StageRecord(name, "ran", seconds, result.metrics, result.outputs)
