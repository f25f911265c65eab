"""How much ranked data the quickstart's reward model needs: held-out pairwise accuracy vs ranked prompts.

Takes one rank stage's rankings (run it with every training prompt drawn, e.g.
`align run recipes/quickstart.yaml --only rank rank.informative=225 rank.prompts.max_samples=225`), holds out
a fixed set of informative prompts (rankings not all tied), and trains the quickstart's reward model (its
`reward:` section, through the real stage: `align run` on a one-stage recipe) on nested subsets of the rest:
the first 48 prompts, the first 96, ... so every arm is scored on the same held-out pairs (and `--epochs`
several training lengths). Each size runs
with several seeds (the score head's random start moves held-out accuracy by ~0.07 at 48 prompts), and each
accuracy comes with a 95% interval from resampling held-out prompts.

    python benchmarks/bench_reward_data.py --rankings runs/quickstart/rank/rankings.jsonl \\
        --sizes 48 96 0 --seeds 1 2 --jobs 2           # 0 = every non-held-out prompt

Arms run `--jobs` at a time, each with `--threads` intra-op threads; finished arms are kept in their run
folders (`--out`), so a re-run only trains what is missing, and the results cover every finished arm
in that folder. Writes benchmarks/results/reward_data.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from _common import RESULTS, write_results

from align.jsonl import iter_jsonl

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def split(records: list[dict], heldout: int, seed: int) -> tuple[list[dict], list[dict], int]:
    """Informative records shuffled once: the first `heldout` are the test set, the rest the training pool."""
    informative = [r for r in records if len(r["ranking"]) > 1]
    rng = random.Random(seed)
    rng.shuffle(informative)
    if heldout >= len(informative):
        sys.exit(f"--heldout {heldout}: only {len(informative)} informative rankings in the file")
    return informative[heldout:], informative[:heldout], len(records) - len(informative)


def arm_recipe(recipe: dict, train_file: Path, heldout_file: Path, seed: int, epochs: float) -> dict:
    reward = dict(recipe["reward"])
    reward.update(data=str(train_file), eval_fraction=0.0, eval_data=str(heldout_file))
    reward["train"] = {**reward["train"], "epochs": epochs}
    return {"name": "reward-data", "seed": seed, "vars": recipe.get("vars", {}), "reward": reward}


def run_arm(arm: dict, threads: int) -> None:
    """Train one arm through `align run`, unless its folder already holds a finished reward stage."""
    metrics_file = Path(arm["dir"]) / "reward" / "metrics.json"
    if not metrics_file.exists():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        started = time.time()
        with open(Path(arm["dir"]) / "run.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "align.cli", "run", str(arm["recipe"]), "--out", arm["dir"]],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"arm {arm['name']} failed (rc {proc.returncode}); see {arm['dir']}/run.log")
        print(f"{arm['name']}: {time.time() - started:.0f} s", flush=True)


def arm_row(arm: dict) -> dict:
    """One finished arm's numbers for the tables."""
    m = json.loads((Path(arm["dir"]) / "reward" / "metrics.json").read_text())
    return {"name": arm["name"], "train_prompts": arm["size"], "seed": arm["seed"], "epochs": arm["epochs"],
            "train_pairs": m["train_pairs"], "train_accuracy": m["accuracy"],
            "heldout_accuracy": m["eval_data_accuracy"], "heldout_ci": m.get("eval_data_accuracy_ci"),
            "heldout_pairs": m.get("eval_data_pairs"), "steps": m["steps"], "train_seconds": m["train_seconds"]}


def summarize(rows: list[dict]) -> list[dict]:
    by_size: dict[tuple, list[dict]] = {}
    for r in rows:
        by_size.setdefault((r["train_prompts"], r["epochs"]), []).append(r)
    out = []
    for (size, epochs), rs in sorted(by_size.items()):
        accs = [r["heldout_accuracy"] for r in rs]
        out.append({"train_prompts": size, "epochs": epochs, "seeds": len(rs), "train_pairs": rs[0]["train_pairs"],
                    "heldout_mean": round(statistics.mean(accs), 4), "heldout_min": min(accs), "heldout_max": max(accs),
                    "train_accuracy_mean": round(statistics.mean(r["train_accuracy"] for r in rs), 4),
                    "train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in rs), 1)})
    return out


def render(res: dict) -> str:
    lines = [
        "# Reward model: held-out pairwise accuracy vs ranked prompts",
        "",
        f"The quickstart's reward model (SmolLM2-135M-Instruct, LoRA r 16 on the top 8 of 30 blocks + a fresh score "
        f"head; {res['reward_settings']}) trained through the reward stage on nested subsets of one rank stage's "
        f"rankings ({res['records']} prompts drawn, {res['all_tied']} all tied, K = {res['k']}; gold labeler on the "
        f"quickstart's focus prompts). All arms are scored on the same {res['heldout_prompts']} held-out informative "
        f"prompts ({res['heldout_pairs']} pairs). {res['threads']} intra-op thread(s) per arm, {res['jobs']} arm(s) at "
        f"a time ({res['date']}, {res['env']}).",
        "",
        "| train prompts | train pairs | epochs | seeds | held-out accuracy: mean (min-max) | train accuracy | "
        "training s (mean) |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in res["summary"]:
        lines.append(f"| {s['train_prompts']} | {s['train_pairs']} | {s['epochs']:g} | {s['seeds']} | "
                     f"{s['heldout_mean']:.3f} ({s['heldout_min']:.3f}-{s['heldout_max']:.3f}) | "
                     f"{s['train_accuracy_mean']:.3f} | {s['train_seconds_mean']:.0f} |")
    lines += ["", "Every arm, with the 95% interval of its held-out accuracy (resampling held-out prompts):", "",
              "| arm | held-out accuracy [95% CI] | train accuracy | steps | training s |", "|---|---|---:|---:|---:|"]
    for r in res["arms"]:
        ci = r["heldout_ci"] or [float("nan")] * 2
        lines.append(f"| {r['name']} | {r['heldout_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{r['train_accuracy']:.3f} | {r['steps']} | {r['train_seconds']:.0f} |")
    lines += ["", "Reproduce:", "", f"    {res['command']}", ""]
    lines += [f"{n}" for n in res.get("notes", [])]
    return "\n".join(lines)


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for epochs in sorted({r["epochs"] for r in res["arms"]}):
        rows = [r for r in res["arms"] if r["epochs"] == epochs]
        ax.scatter([r["train_prompts"] for r in rows], [r["heldout_accuracy"] for r in rows], alpha=0.6,
                   label=f"{epochs:g} epochs, one point per seed")
        means = [s for s in res["summary"] if s["epochs"] == epochs]
        ax.plot([s["train_prompts"] for s in means], [s["heldout_mean"] for s in means])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("ranked training prompts")
    ax.set_ylabel(f"held-out pairwise accuracy ({res['heldout_pairs']} pairs)")
    ax.set_title("Quickstart reward model: accuracy vs ranked data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "reward_data.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", required=True, help="A rank stage's rankings.jsonl.")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"), help="Whose reward: section.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 0], help="Training prompts (0: all).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=float, nargs="*", default=[], help="Epoch counts (default: the recipe's).")
    parser.add_argument("--heldout", type=int, default=40, help="Informative prompts held out for every arm.")
    parser.add_argument("--out", default="runs/reward-data")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    records = [rec for _, rec in iter_jsonl(args.rankings)]
    pool, heldout, all_tied = split(records, args.heldout, seed=0)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    heldout_file = out / "heldout.jsonl"
    if heldout_file.exists() and [rec for _, rec in iter_jsonl(heldout_file)] != heldout:
        sys.exit(f"{out} holds arms scored on other held-out prompts; use another --out")
    write_jsonl(heldout_file, heldout)
    arms = []
    for size in args.sizes:
        n = size or len(pool)
        if n > len(pool):
            sys.exit(f"--sizes {size}: only {len(pool)} informative prompts left after holding out {args.heldout}")
        train_file = out / f"train-{n}.jsonl"
        write_jsonl(train_file, pool[:n])
        for epochs in args.epochs or [recipe["reward"]["train"]["epochs"]]:
            for seed in args.seeds:
                name = f"n{n}-e{epochs:g}-s{seed}"
                arm_dir = out / name
                arm_dir.mkdir(exist_ok=True)
                recipe_file = arm_dir / "recipe.yaml"
                recipe_file.write_text(yaml.safe_dump(arm_recipe(recipe, train_file, heldout_file, seed, epochs)))
                arm = {"name": name, "dir": str(arm_dir), "recipe": str(recipe_file), "size": n, "seed": seed,
                       "epochs": epochs}
                (arm_dir / "arm.json").write_text(json.dumps(arm))
                arms.append(arm)
    with ThreadPoolExecutor(args.jobs) as pool_exec:
        list(pool_exec.map(lambda a: run_arm(a, args.threads), arms))
    # every finished arm in the folder (earlier invocations' too): they share its held-out prompts
    finished = [json.loads(f.read_text()) for f in sorted(out.glob("*/arm.json"))]
    rows = [arm_row(a) for a in finished if (Path(a["dir"]) / "reward" / "metrics.json").exists()]
    rows.sort(key=lambda r: (r["train_prompts"], r["epochs"], r["seed"]))

    import torch
    import transformers

    settings = recipe["reward"]["train"]
    heldout_pairs = rows[0]["heldout_pairs"]
    res = {
        "rankings": Path(args.rankings).name, "records": len(records), "all_tied": all_tied,
        "k": max(len(r["responses"]) for r in records), "heldout_prompts": len(heldout), "heldout_pairs": heldout_pairs,
        "reward_settings": f"lr {settings['lr']:g}, batch {settings['batch_size']} prompts",
        "arms": rows, "summary": summarize(rows), "threads": args.threads, "jobs": args.jobs,
        "date": time.strftime("%Y-%m-%d"),
        "env": f"{platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}",
        "command": "python benchmarks/bench_reward_data.py --rankings RUN/rank/rankings.jsonl --sizes "
                   + " ".join(map(str, args.sizes)) + " --seeds " + " ".join(map(str, args.seeds))
                   + (" --epochs " + " ".join(f"{e:g}" for e in args.epochs) if args.epochs else "")
                   + f" --heldout {args.heldout}",
        "notes": args.note,
    }
    write_results("reward_data", res, render(res))
    plot(res)


if __name__ == "__main__":
    main()
