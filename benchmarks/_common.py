"""What the benchmarks share: step timers, peak memory, worker processes and writing results.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on ``sys.path`` and they
``import _common``. Only the standard library is imported when this module loads: bench_ppo's TRL
worker runs under another virtual env without align, and ``--help`` should not wait for torch.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_PREFIX = "RESULT "


def machine() -> str:
    """The machine a result was measured on: architecture and core count."""
    return f"{platform.machine()}, {os.cpu_count()} cores"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_timer():
    """A transformers TrainerCallback recording when each optimizer step begins and ends.

    The clock is looked up as ``time.perf_counter`` at every step, so a benchmark that swaps in
    ``time.process_time`` (CPU seconds, steadier on a shared machine) times the steps that way too.
    On CUDA a step ends when the device is done with it.
    """
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begins: list[float] = []
            self.ends: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

        @property
        def durations(self) -> list[float]:
            return [end - begin for begin, end in zip(self.begins, self.ends)]

        def summary(self, seconds: float, steps: int) -> dict:
            """Steps, total seconds and the median step (it resists other jobs' bursts)."""
            median = statistics.median(self.durations)
            return {"steps": steps, "train_seconds": round(seconds, 2),
                    "median_step_seconds": round(median, 4), "steps_per_second": round(1 / median, 2)}

    return StepTimer()


def train_timed(trainer) -> tuple[Any, float, Any]:
    """``trainer.train()`` with a step timer: (its output, seconds it took, the timer)."""
    timer = step_timer()
    trainer.add_callback(timer)
    started = time.perf_counter()
    output = trainer.train()
    return output, time.perf_counter() - started, timer


def print_result(data: dict) -> None:
    """A worker process's result, as the one line `run_worker` looks for in its output."""
    print(RESULT_PREFIX + json.dumps(data), flush=True)


def run_worker(cmd: list[str], env: dict[str, str] | None = None, name: str = "worker") -> dict:
    """Run a worker process to the end; its result from its last `print_result` line, or exit with the
    end of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit code {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_results(stem: str, data: Any, markdown: str, out: Path = RESULTS, echo: bool = True) -> Path:
    """A benchmark's result: ``out/<stem>.json`` (the numbers) and ``out/<stem>.md`` (the page people read,
    printed too unless `echo` is off). Returns the .md path."""
    write_json(out / f"{stem}.json", data)
    md = out / f"{stem}.md"
    md.write_text(markdown.rstrip("\n") + "\n")
    if echo:
        print(markdown)
    return md
