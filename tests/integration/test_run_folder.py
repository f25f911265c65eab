"""One command at a time writes a run folder (RUN/.lock), and an unusable --out is one line, not a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from align.errors import AlignError
from align.runner import LOCK, run_folder_lock, run_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "sft-tiny.yaml"
HANG_GUARD_S = 600  # only against a hang: each step here takes about a second

# A process that takes the lock as `align run` does (same argv, so its command is what a user would see),
# says so on stdout and then holds it until killed; launch settings come from the environment.
HOLDER = """
import sys, time
sys.argv = ["align", "run", "recipes/sft-tiny.yaml", "--out", sys.argv[1]]
from align.runner import run_folder_lock
with run_folder_lock(sys.argv[-1]):
    print("held", flush=True)
    time.sleep(3600)
"""


def hold(run_dir: Path, **env: str) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def align(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "align.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=HANG_GUARD_S)


@pytest.fixture
def holder(tmp_path):
    run_dir = tmp_path / "run"
    proc = hold(run_dir)
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_second_run_into_a_folder_in_use_fails_at_once_naming_the_holder(holder):
    run_dir, proc = holder
    done = align("run", str(RECIPE), "sft.train.epochs=1", "--out", str(run_dir))
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert f"run folder {run_dir} is in use by pid {proc.pid} on {socket.gethostname()}, started " in line
    assert f"align run recipes/sft-tiny.yaml --out {run_dir}" in line and "Traceback" not in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]  # nothing written: no recipe.yaml, no stage folder
    report = align("report", str(run_dir))  # any command that writes the folder
    assert report.returncode == 2 and f"pid {proc.pid}" in report.stderr
    assert not (run_dir / "report.md").exists()


def test_a_killed_holders_lock_is_free_again(holder):
    run_dir, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / LOCK).read_text())["pid"] == proc.pid  # the file stays; its lock does not
    with run_folder_lock(run_dir):
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    done = align("report", str(run_dir))  # and another process can take it too
    assert done.returncode == 0, done.stderr[-2000:]


def test_other_ranks_follow_their_own_launch_and_never_take_the_lock(tmp_path, monkeypatch):
    """Under accelerate launch only rank 0 locks; a rank > 0 goes on once its launch holds the lock and
    stops at once when another live launch holds it (its own rank 0 has failed on that lock)."""
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    run_dir = tmp_path / "run"
    proc = hold(run_dir, RANK="0", **launch)
    try:
        monkeypatch.setenv("RANK", "1")
        for key, value in launch.items():
            monkeypatch.setenv(key, value)
        with run_folder_lock(run_dir):  # same launch: goes on, and the holder keeps the lock
            assert json.loads((run_dir / LOCK).read_text())["pid"] == proc.pid
        monkeypatch.setenv("MASTER_PORT", "29512")  # another launch
        with pytest.raises(AlignError, match=f"in use by pid {proc.pid} .*rank 1 stops too"), run_folder_lock(run_dir):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_stage_is_not_marked_complete_when_another_run_took_its_folder(tmp_path, monkeypatch):
    """Belt and braces for a run that ignored the lock (another host on a filesystem without flock)."""
    import align.runner as runner
    from align.stages import StageResult, stage_module

    def run(cfg, ctx):
        (ctx.stage_dir / runner.IN_PROGRESS).write_text("0123456789abcdef")  # the other run's settings
        return StageResult({}, {})

    monkeypatch.setattr(runner, "stage_module", lambda name: types.SimpleNamespace(
        run=run, Config=stage_module(name).Config))
    with pytest.raises(AlignError, match="was changed by another run while this one ran .*not marked complete"):
        run_recipe(RECIPE, tmp_path / "run")
    assert not (tmp_path / "run" / "sft" / "COMPLETE").exists()


# --------------------------------------------------------------------------- unusable --out


def test_out_naming_a_file_is_one_line(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("x")
    done = align("run", str(RECIPE), "--out", str(taken))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"run folder {taken} (--out): a file exists there; expected a folder" in line
    assert taken.read_text() == "x"


def test_out_under_a_file_names_the_file(tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("x")
    with pytest.raises(AlignError, match=f"{taken} is a file, not a folder"):
        run_recipe(RECIPE, taken / "sub" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder, whatever its mode")
def test_out_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    try:
        for out in (locked, locked / "run"):
            with pytest.raises(AlignError, match=f"run folder {out} \\(--out\\): (not writable|cannot create it)"):
                run_recipe(RECIPE, out)
    finally:
        locked.chmod(0o755)


def test_unwritable_lock_file_is_one_line(tmp_path):
    """What an unwritable folder does to `align run`, shown as root can (a folder where .lock should be)."""
    run_dir = tmp_path / "run"
    (run_dir / LOCK).mkdir(parents=True)
    with pytest.raises(AlignError, match=f"run folder {run_dir}: cannot write {run_dir / LOCK} .*expected a folder"):
        run_recipe(RECIPE, run_dir)
