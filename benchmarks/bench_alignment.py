"""The alignment frontier on CPU: held-out gold gain over SFT versus wall-clock, per RL algorithm.

Every arm starts from the same finished quickstart run (its self_instruct, sft, rank and reward stages
are copied, so every arm has the same SFT policy, rankings and reward model), trains one policy, and is
read at checkpoints: for each time mark (minutes of RL wall time, summed from the per-step times in
``stats.jsonl``; model loading not counted) the last checkpoint written before it. All checkpoints of
an arm and the SFT policy are then evaluated together by the eval stage on the 75 held-out prompts of
the focus gold set (greedy responses; gold score, strict accuracy, reward-model score, sampled KL to
SFT), and each gain gets a paired bootstrap 95% confidence interval over prompts.

Arms (``--arms``):
  rloo       the quickstart's RL stage (RLOO, 4 samples per query, reward model), trained for --minutes
  grpo       GRPO (group-normalised advantages, 4 samples per query), reward model
  gae        PPO with GAE and a value head (1 sample per query), reward model
  rloo-gold  RLOO with the gold checker itself as the reward (verifiable reward, no reward model)
  dpo        DPO on the same rankings (best vs each, beta 0.1), read at its end only

    python benchmarks/bench_alignment.py --base runs/quickstart --arms grpo gae --minutes 30
    python benchmarks/bench_alignment.py --base runs/quickstart --arms dpo
    python benchmarks/bench_alignment.py --render        # rewrite the .md and plot from the .json

Each arm runs in its own processes with OMP_NUM_THREADS=--threads (default 1, so two arms can share two
cores); arms named together run one after another. Results merge into benchmarks/results/alignment.json
(one entry per arm, replaced when re-run) and render to alignment.md and alignment.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, machine, write_results

from align.jsonl import iter_jsonl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECIPE = ROOT / "recipes" / "quickstart.yaml"
UPSTREAM = ("self_instruct", "sft", "rank", "reward")  # copied from the base run: the same start for every arm

ARMS: dict[str, dict] = {
    "rloo": {"label": "RLOO, group 4", "reward": "reward model", "stage": "ppo", "overrides": []},
    # the same recipe with another RL seed: how much of an arm's gain is the seed's
    "rloo-seed7": {"label": "RLOO, group 4, RL seed 7", "reward": "reward model", "stage": "ppo",
                   "overrides": ["seed=7"]},
    # 4x the KL weight: does a stronger pull to the SFT policy stop the over-optimisation past ~20 steps?
    "rloo-kl0.2": {"label": "RLOO, group 4, KL coef 0.2", "reward": "reward model", "stage": "ppo",
                   "overrides": ["ppo.train.kl.init_coef=0.2"]},
    # not trainable here: the quickstart run's own final policy, read from its eval (--quickstart-run)
    "rloo-quickstart": {"label": "RLOO, group 4 (the quickstart run, 20 steps)", "reward": "reward model",
                        "stage": None, "overrides": []},
    "grpo": {"label": "GRPO, group 4", "reward": "reward model", "stage": "ppo",
             "overrides": ["ppo.train.advantage.estimator=grpo", "ppo.train.rollout.group_size=4"]},
    "gae": {"label": "PPO-GAE, value head", "reward": "reward model", "stage": "ppo",
            "overrides": ["ppo.train.advantage.estimator=gae", "ppo.train.rollout.group_size=1"]},
    "rloo-gold": {"label": "RLOO, group 4", "reward": "gold checker (RLVR)", "stage": "ppo",
                  "overrides": ["ppo.reward=align.eval.labeler:gold_score_fn"]},
    "dpo": {"label": "DPO (sigmoid, beta 0.1, best vs each, 1 epoch, lr 1e-4)", "reward": "rankings (offline)",
            "stage": "dpo",
            "overrides": ["dpo.model='@sft'", "dpo.data='@rank'", "dpo.pairs=best_vs_each", "dpo.eval_fraction=0.2",
                          "dpo.method.loss_type=sigmoid", "dpo.method.beta=0.1", "dpo.train.lr=1e-4", "dpo.train.epochs=1",
                          "dpo.train.batch_size=4", "dpo.train.max_length=256", "dpo.train.logging_steps=2",
                          "dpo.train.save_steps=1000", "dpo.train.warmup_ratio=0.1"]},
}


def align_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "align.cli", *args]


def prepare_arm(base: Path, arm_dir: Path) -> None:
    """A new run dir holding copies of the base run's finished upstream stages."""
    for stage in UPSTREAM:
        if not (base / stage / "COMPLETE").exists():
            sys.exit(f"{base}/{stage} is not a finished stage: run the quickstart first "
                     f"(align run recipes/quickstart.yaml --out {base})")
    arm_dir.mkdir(parents=True, exist_ok=True)
    for stage in UPSTREAM:
        if not (arm_dir / stage).exists():
            shutil.copytree(base / stage, arm_dir / stage, symlinks=True)


def train_arm(arm: str, arm_dir: Path, minutes: float, steps: int, threads: int) -> float:
    """Run the arm's training stage until it finishes or `minutes` of wall time (plus loading) pass;
    returns the wall seconds. A stopped PPO run keeps its checkpoints (that is what we read)."""
    spec = ARMS[arm]
    overrides = list(spec["overrides"])
    if spec["stage"] == "ppo":
        overrides += [f"ppo.train.steps={steps}", "ppo.train.save_steps=2", "ppo.train.save_total_limit=1000"]
    cmd = align_cmd("run", str(RECIPE), "--out", str(arm_dir), "--only", spec["stage"], *overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print(f"[{arm}] {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    limit = minutes * 60 + 180  # + model loading and the first checkpoint's write
    with open(arm_dir / f"{spec['stage']}.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            print(f"[{arm}] stopped after {limit:.0f} s (the mark); reading its checkpoints", flush=True)
    failed = proc.returncode not in (0, -signal.SIGTERM)
    if failed and (spec["stage"] == "dpo" or not (arm_dir / "ppo" / "checkpoints").exists()):
        sys.exit(f"[{arm}] training failed (exit {proc.returncode}); see {arm_dir / (spec['stage'] + '.log')}")
    return time.time() - t0


def read_stats(path: Path) -> list[dict]:
    """A ppo stage's stats.jsonl; an arm stopped at its time limit may leave a cut-off last line."""
    return [row for _, row in iter_jsonl(path, torn_tail=True)]


def ppo_points(arm_dir: Path, marks: list[float]) -> list[dict]:
    """For each time mark, the last checkpoint written before it: {minutes, step, path, rl_seconds}."""
    stats = read_stats(arm_dir / "ppo" / "stats.jsonl")
    elapsed, total = {}, 0.0
    for row in stats:
        total += row["time/step_s"]
        elapsed[int(row["step"])] = total
    ckpts = sorted((int(p.name.split("-")[1]), p) for p in (arm_dir / "ppo" / "checkpoints").glob("step-*")
                   if (p / "policy" / "adapter_config.json").exists())
    points = []
    for mark in sorted(marks):
        within = [(s, p) for s, p in ckpts if elapsed.get(s, float("inf")) <= mark * 60]
        if within and (not points or within[-1][0] != points[-1]["step"]):
            step, path = within[-1]
            points.append({"minutes": mark, "step": step, "path": str(path / "policy"), "rl_seconds": elapsed[step]})
    return points


def dpo_points(arm_dir: Path) -> list[dict]:
    metrics = json.loads((arm_dir / "dpo" / "metrics.json").read_text())
    seconds = metrics.get("train_runtime") or metrics.get("train_seconds") or 0.0
    steps = metrics.get("steps") or metrics.get("global_step")
    return [{"minutes": round(seconds / 60, 1), "step": steps, "path": str(arm_dir / "dpo" / "model"),
             "rl_seconds": seconds}]


def evaluate(arm_dir: Path, points: list[dict], threads: int) -> dict:
    """One eval stage over SFT and every point's policy; returns its metrics.json."""
    policies = {"sft": str(arm_dir / "sft" / "model")}
    for p in points:
        policies[f"t{p['minutes']:g}m_step{p['step']}"] = p["path"]
    recipe = {
        "name": "frontier-eval", "seed": 42,
        "eval": {"policies": policies, "prompts": "gold:focus:heldout", "num_prompts": 75, "batch_size": 75,
                 "max_new_tokens": 64, "reward_model": str(arm_dir / "reward" / "model"),
                 "reference": str(arm_dir / "sft" / "model"), "judge": "gold"},
    }
    path = arm_dir / "frontier-eval.yaml"
    path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
    out = arm_dir / "frontier-eval"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(arm_dir / "eval.log", "w") as log:
        subprocess.run(align_cmd("run", str(path), "--out", str(out)), env=env, stdout=log, stderr=subprocess.STDOUT,
                       cwd=ROOT, check=True)
    return json.loads((out / "eval" / "metrics.json").read_text())


def quickstart_arm(run: Path, threads: int) -> dict:
    """The rloo arm read from a finished quickstart run itself: its eval stage already compared the final
    PPO policy with SFT on the same 75 prompts with the same settings, so nothing is evaluated again."""
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    stats = read_stats(run / "ppo" / "stats.jsonl")
    seconds, steps = sum(r["time/step_s"] for r in stats), max(int(r["step"]) for r in stats)
    renamed = {"sft": metrics["policies"]["sft"], f"t{seconds / 60:.0f}m_step{steps}": metrics["policies"]["ppo"]}
    point = {"minutes": float(f"{seconds / 60:.0f}"), "step": steps, "path": str(run / "ppo" / "policy"),
             "rl_seconds": seconds}
    arm = summarize("rloo-quickstart", [point], {**metrics, "policies": renamed}, seconds + metrics.get("seconds", 0), threads)
    arm["command"] = ("align run recipes/quickstart.yaml --out runs/quickstart (the quickstart itself, read from "
                      "its eval stage: python benchmarks/bench_alignment.py --render --quickstart-run runs/quickstart)")
    return arm


def summarize(arm: str, points: list[dict], metrics: dict, wall_s: float, threads: int, reproduce: str = "") -> dict:
    """One arm's results entry; `reproduce`: the options (minutes, marks, threads, store) it ran with."""
    pol = metrics["policies"]
    sft = pol["sft"]
    rows = []
    for p in points:
        m = pol[f"t{p['minutes']:g}m_step{p['step']}"]
        g, s = m["gold_gain"], m["strict_gain"]
        rows.append({
            "minutes": p["minutes"], "step": p["step"], "rl_seconds": round(p["rl_seconds"], 1),
            "gold_sft": sft["gold_score"], "gold": m["gold_score"],
            "gain": g["gain"], "ci_low": g["ci_low"], "ci_high": g["ci_high"],
            "strict_sft": sft["strict_accuracy"], "strict": m["strict_accuracy"],
            "strict_gain": s["gain"], "strict_ci": [s["ci_low"], s["ci_high"]],
            "kl": m.get("kl"), "kl_stderr": m.get("kl_stderr"), "reward_score": m.get("reward_score"),
            "win_rate": m.get("win_rate_vs_sft"),
        })
    spec = ARMS[arm]
    cmd = f"python benchmarks/bench_alignment.py --base runs/quickstart --arms {arm} {reproduce}".strip()
    return {"label": spec["label"], "reward": spec["reward"], "threads": threads, "wall_seconds": round(wall_s),
            "prompts": metrics.get("num_prompts") or 75, "command": cmd, "points": rows,
            "date": time.strftime("%Y-%m-%d"), "machine": machine()}


def ordered(res: dict) -> list[tuple[str, dict]]:
    """The measured arms in ARMS order (a user compares algorithms, not run order)."""
    names = sorted(res.get("arms", {}), key=lambda n: list(ARMS).index(n) if n in ARMS else len(ARMS))
    return [(name, res["arms"][name]) for name in names]


def save(res: dict, store: Path) -> None:
    """The results JSON, and markdown and plot next to it (alignment.json → alignment.md, alignment.png)."""
    write_results(store.stem, res, render(res), store.parent, echo=False)
    plot(res, store.with_suffix(".png"))


def render(res: dict) -> str:
    lines = [
        "# Alignment on 2 CPU cores: held-out gold gain over SFT, per algorithm and wall-clock",
        "",
        "What a user reads to choose an RL recipe: the gain in held-out gold score (fraction of verifiable",
        "constraints met by greedy responses) over the SFT policy, with a paired bootstrap 95% confidence interval",
        "over prompts (`align.eval.bootstrap`), on the 75 held-out prompts of the `focus` gold set (base tasks",
        "never seen in rank, reward or RL). Every arm starts from the same quickstart run (same SFT policy,",
        "rankings and reward model) and is read at checkpoints: the last one written before each mark of RL wall",
        "time (per-step times summed; model loading not counted). Written by `benchmarks/bench_alignment.py`.",
        "",
        "| arm | reward | RL time (min) | steps | gold SFT → RL | gain [95% CI] | strict SFT → RL | KL(RL‖SFT) | win rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, arm in ordered(res):
        for p in arm["points"]:
            kl = "" if p.get("kl") is None else f"{p['kl']:.2f} ± {p.get('kl_stderr') or 0:.2f}"
            win = "" if p.get("win_rate") is None else f"{p['win_rate']:.2f}"
            lines.append(
                f"| {arm['label']} | {arm['reward']} | {p['rl_seconds'] / 60:.1f} | {p['step']} | "
                f"{p['gold_sft']:.3f} → {p['gold']:.3f} | {p['gain']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | "
                f"{p['strict_sft']:.3f} → {p['strict']:.3f} | {kl} | {win} |")
    lines += ["", "Per arm: threads, date, and the command that reproduces it (after "
              "`align run recipes/quickstart.yaml --out runs/quickstart`).", ""]
    for name, arm in ordered(res):
        lines.append(f"- **{name}** ({arm['threads']} thread(s), {arm['date']}, {arm['machine']}, "
                     f"whole arm incl. eval {arm['wall_seconds'] / 60:.0f} min): `{arm['command']}`")
    notes = res.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *notes]
    if res.get("env"):
        lines += ["", f"Environment: {res['env']}."]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for i, (_, arm) in enumerate(ordered(res)):
        pts = arm["points"]
        x = [p["rl_seconds"] / 60 + 0.08 * i for p in pts]  # a small offset keeps error bars apart
        y = [p["gain"] for p in pts]
        err = [[p["gain"] - p["ci_low"] for p in pts], [p["ci_high"] - p["gain"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{arm['label']} ({arm['reward']})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("RL wall time (minutes)")
    ax.set_ylabel("held-out gold gain over SFT (95% CI)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: it hid points inside
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/quickstart", help="A finished quickstart run (its upstream stages).")
    parser.add_argument("--arms", nargs="*", default=["grpo", "gae", "rloo-gold"],
                        choices=sorted(name for name, spec in ARMS.items() if spec["stage"]))
    parser.add_argument("--out", default="runs/frontier", help="One run dir per arm under this folder.")
    parser.add_argument("--minutes", type=float, default=30.0, help="Stop each RL arm after this much wall time.")
    parser.add_argument("--marks", type=float, nargs="*", default=[5, 10, 15, 20, 30],
                        help="Read the last checkpoint before each of these minutes of RL time.")
    parser.add_argument("--steps", type=int, default=200, help="Upper bound on RL steps (the time limit stops first).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="Only rewrite alignment.md/png from alignment.json.")
    parser.add_argument("--store", default=str(RESULTS / "alignment.json"),
                        help="Results JSON the arms merge into (arms measured elsewhere: merge with --merge).")
    parser.add_argument("--merge", nargs="*", default=[], help="Other results JSONs whose arms to merge in.")
    parser.add_argument("--quickstart-run", help="Add the rloo-quickstart arm from this finished quickstart run's "
                                                 "own eval (its final policy only: no intermediate checkpoints).")
    parser.add_argument("--note", action="append", default=[], help="A line for the Notes section (repeatable).")
    args = parser.parse_args()

    store = Path(args.store)
    res = json.loads(store.read_text()) if store.exists() else {"arms": {}}
    for other in args.merge:
        res["arms"].update(json.loads(Path(other).read_text())["arms"])
    if args.quickstart_run:
        res["arms"]["rloo-quickstart"] = quickstart_arm(Path(args.quickstart_run), args.threads)
    if args.note:
        res["notes"] = args.note
    if not args.render:
        import torch
        import transformers
        import trl

        res["env"] = (f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
                      f"Python {platform.python_version()}")
        base = Path(args.base)
        for arm in args.arms:
            arm_dir = Path(args.out) / arm
            prepare_arm(base, arm_dir)
            t0 = time.time()
            if ARMS[arm]["stage"] == "ppo" or not (arm_dir / "dpo" / "COMPLETE").exists():
                train_arm(arm, arm_dir, args.minutes, args.steps, args.threads)
            points = dpo_points(arm_dir) if ARMS[arm]["stage"] == "dpo" else ppo_points(arm_dir, args.marks)
            if not points:
                sys.exit(f"[{arm}] no checkpoint within the marks; see {arm_dir}")
            metrics = evaluate(arm_dir, points, args.threads)
            options = [f"--threads {args.threads}", f"--store {store.relative_to(ROOT) if store.is_relative_to(ROOT) else store}"]
            if ARMS[arm]["stage"] == "ppo":
                options[:0] = [f"--minutes {args.minutes:g}", "--marks " + " ".join(f"{m:g}" for m in args.marks),
                               f"--steps {args.steps}"]
            res["arms"][arm] = summarize(arm, points, metrics, time.time() - t0, args.threads, " ".join(options))
            if store.exists():  # arms another process wrote meanwhile stay
                res["arms"] = {**json.loads(store.read_text())["arms"], **res["arms"]}
            save(res, store)
            print(f"[{arm}] " + "; ".join(f"{p['rl_seconds'] / 60:.1f} min: {p['gain']:+.3f} "
                                          f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]" for p in res["arms"][arm]["points"]),
                  flush=True)
    save(res, store)


if __name__ == "__main__":
    main()
