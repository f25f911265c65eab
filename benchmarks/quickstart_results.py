"""Write benchmarks/results/quickstart.md from quickstart run folders: the result tables each run's report
opens with (gain with CI, gaming guards, fixed answers, IFEval), the reward model's held-out accuracy, the
PPO curve's end points and the stage times.

    .venv/bin/align run recipes/quickstart.yaml                       # runs/quickstart
    .venv/bin/python benchmarks/quickstart_results.py runs/quickstart [more run dirs, each with a label]

Each argument is RUN_DIR or LABEL=RUN_DIR; the recipe each run used is read from RUN_DIR/recipe.yaml.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from align.report import _read_jsonl, eval_headline

STAGES = ("self_instruct", "sft", "rank", "reward", "ppo", "eval")


def _metrics(run: Path, stage: str) -> dict:
    path = run / stage / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_section(label: str, run: Path) -> list[str]:
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    ppo_train = recipe["ppo"]["train"]
    reward = _metrics(run, "reward")
    ppo = _metrics(run, "ppo")
    seconds = {s: _metrics(run, s).get("seconds") for s in STAGES}
    times = ", ".join(f"{s} {v:.0f} s" for s, v in seconds.items() if isinstance(v, (int, float)))
    total = sum(v for v in seconds.values() if isinstance(v, (int, float))) / 60
    ci = reward.get("heldout_accuracy_ci") or [float("nan")] * 2
    lines = [f"## {label}", "",
             f"PPO (RLOO): {ppo_train['steps']} steps, lr {ppo_train['lr']}, KL coef "
             f"{ppo_train['kl']['init_coef']}, {ppo_train['rollout']['batch_size']} rollouts per step. "
             f"Reward model: held-out pair accuracy {reward.get('heldout_accuracy', float('nan')):.3f} "
             f"[{ci[0]:.3f}, {ci[1]:.3f}] on {reward.get('heldout_pairs')} pairs (train {reward.get('accuracy', 0):.3f}). "
             f"PPO's logged gold (the labeler on its own rollouts, one batch of 4 prompts per step, so noisy): "
             f"first step {ppo.get('first_gold', float('nan')):.3f}, last {ppo.get('last_gold', float('nan')):.3f}.",
             "",
             f"Stage times (2 CPU cores): {times}; {total:.1f} min in all.", ""]
    eval_metrics = _metrics(run, "eval")
    headline = eval_headline(eval_metrics, _read_jsonl(run / "eval" / "responses.jsonl"),
                             _read_jsonl(run / "eval" / "ifeval_responses.jsonl"))
    return lines + ["#" + line if line.startswith("##") else line for line in headline]  # one level down


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or LABEL=RUN_DIR")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quickstart.md"))
    args = parser.parse_args(argv)
    lines = ["# The quickstart on 2 CPU cores: SFT vs PPO on the careful labeler, guards and IFEval", "",
             "Written by `benchmarks/quickstart_results.py` from the run folders of `align run "
             "recipes/quickstart.yaml` (overrides, where a run used them, are in its recipe line below). "
             "Gains are on the 75 held-out prompts of the `focus` set with paired bootstrap 95% CIs; IFEval is "
             "the 541 official prompts, greedy, 64 new tokens.", ""]
    for spec in args.runs:
        label, _, path = spec.rpartition("=")
        lines += run_section(label or path, Path(path))
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
