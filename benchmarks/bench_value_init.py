"""Does starting the value model as the reward model help? `ppo.train.value.init: zero` vs `reward`.

Runs recipes/ppo-tiny.yaml (tiny-llama: SFT -> rank -> reward -> PPO, 20 PPO steps) with
value_model: adapter, once per seed for the upstream stages and once per arm for PPO, and compares
the value error (mean squared error of the value predictions against the returns) early and over
the run, the reward-model score and the gold score. Run: `python benchmarks/bench_value_init.py`
(~10 min on 2 cores); writes benchmarks/results/value_init.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, write_results

from align.jsonl import iter_jsonl

REPO = Path(__file__).resolve().parents[1]
ARMS = ("zero", "reward")


def run_arm(out: Path, seed: int, init: str) -> list[dict]:
    command = [sys.executable, "-m", "align.cli", "run", str(REPO / "recipes" / "ppo-tiny.yaml"), "--out", str(out),
               f"seed={seed}", "ppo.train.value.model=adapter", f"ppo.train.value.init={init}",
               "ppo.train.log.progress=false"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [row for _, row in iter_jsonl(out / "ppo" / "stats.jsonl")]


def mean(history: list[dict], key: str, start: int, stop: int) -> float:
    return statistics.mean(row[key] for row in history[start:stop])


def summary(history: list[dict]) -> dict:
    n = len(history)
    return {"val_error_first5": mean(history, "val/error", 0, 5), "val_error_all": mean(history, "val/error", 0, n),
            "val_clipfrac_first5": mean(history, "val/clipfrac", 0, 5),
            "score_first5": mean(history, "objective/scores", 0, 5), "score_last5": mean(history, "objective/scores", n - 5, n),
            "gold_last5": mean(history, "objective/gold", n - 5, n), "kl_last5": mean(history, "objective/kl", n - 5, n),
            "step_seconds": mean(history, "time/step_s", 0, n)}


def render(results: dict) -> str:
    lines = [
        "# Value model start: zero head vs the reward model", "",
        "`recipes/ppo-tiny.yaml` (tiny-llama, 2 layers; 20 PPO steps of 8 rollouts) with `ppo.train.value.model: adapter`, "
        "`value.init: zero` vs `reward`; same upstream stages per seed. val/error: mean squared error of the value "
        "predictions against the returns (before clipping), averaged over steps. CPU, 2 cores shared with other jobs, "
        "OMP_NUM_THREADS=1. Produced by `benchmarks/bench_value_init.py`.", "",
        "| seed | value_init | val/error, steps 1-5 | val/error, all steps | val/clipfrac, steps 1-5 | RM score, steps 1-5 "
        "| RM score, last 5 | gold, last 5 | KL, last 5 | s/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, arms in results["runs"].items():
        for init in ARMS:
            x = arms[init]
            lines.append(f"| {seed} | {init} | {x['val_error_first5']:.3f} | {x['val_error_all']:.3f} | "
                         f"{x['val_clipfrac_first5']:.3f} | {x['score_first5']:.3f} | {x['score_last5']:.3f} | "
                         f"{x['gold_last5']:.4f} | {x['kl_last5']:.4f} | {x['step_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-value-init-"))
    try:
        runs = {str(seed): {init: summary(run_arm(work / f"s{seed}", seed, init)) for init in ARMS}
                for seed in range(args.seeds)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"runs": runs}
    write_results("value_init", results, render(results), args.out)


if __name__ == "__main__":
    main()
