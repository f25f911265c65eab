"""Does the reward model carry signal the policy could learn from? Best-of-n on held-out prompts.

For a finished run folder: the SFT policy samples n responses (temperature 1) to each held-out eval
prompt; the reward model picks one, and the simulated labeler (the gold score the eval reports) scores
every sample. Reported for n = 1, 2, 4, ... (Gao et al. 2022, "Scaling laws for reward model
overoptimization", use the same best-of-n curve):

- ``random``: the labeler's mean over all samples (what the SFT policy scores when sampling);
- ``rm best-of-n``: the labeler's score of the sample the reward model ranks first among the first n;
- ``oracle best-of-n``: the best labeler score among the first n (the ceiling a perfect reward model reaches);

with a paired bootstrap CI (resampling prompts) of rm best-of-n minus random. Best-of-n moves the
policy by KL = log n - (n-1)/n nats, so it shows what RL against this reward model could gain at that
KL if the optimiser were perfect: a reward model whose best-of-4 does not beat random sampling gives
PPO nothing real to climb.

    .venv/bin/python benchmarks/bench_reward_bon.py runs/quickstart [--n 8] [--prompts 75] [--rl LABEL=RUN ...]

Writes benchmarks/results/reward_bon.md (and .json, and .png: the best-of-n curve against KL, with the
held-out gold gain and KL of each ``--rl`` run's RL policy drawn on the same axes). ``--render`` redraws the
.md and .png from the .json without sampling again.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import yaml
from _common import RESULTS, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="a run folder with finished sft and reward stages")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (best-of-1, 2, 4, ... up to n)")
    parser.add_argument("--prompts", type=int, default=75, help="held-out eval prompts to use")
    parser.add_argument("--prompt-set", default=None,
                        help="a gold prompt set (default: the run's eval.prompts, else gold:heldout)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rl", nargs="*", default=[], metavar="LABEL=RUN",
                        help="finished runs whose eval gold gain and KL of their RL policy to plot on the curve")
    parser.add_argument("--render", action="store_true", help="redraw the .md and .png from the .json")
    parser.add_argument("--out", default=str(RESULTS / "reward_bon.md"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        result = json.loads(out.with_suffix(".json").read_text())
        result["rl"] = rl_points(args.rl) or result.get("rl", [])
        write(result, out)
        return
    if not args.run:
        parser.error("give a run folder (or --render)")

    import torch
    from peft import AutoPeftModelForCausalLM

    from align.eval.bootstrap import paired_bootstrap
    from align.eval.gold import load_prompt_set
    from align.eval.labeler import careful_scores
    from align.generation import generate_chat
    from align.models import load_tokenizer
    from align.preferences.reward_model import load_reward_model

    run = Path(args.run)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    spec = args.prompt_set or (recipe.get("eval") or {}).get("prompts") or "gold:heldout"
    prompts = load_prompt_set(spec, args.prompts)
    chats = [[{"role": "user", "content": p.prompt}] for p in prompts]

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    policy = AutoPeftModelForCausalLM.from_pretrained(str(run / "sft" / "model"))
    tokenizer = load_tokenizer(str(run / "sft" / "model"))
    samples = generate_chat(policy, tokenizer, chats, max_new_tokens=args.max_new_tokens, temperature=1.0,
                            num_return_sequences=args.n, batch_size=max(1, 64 // args.n), seed=args.seed)
    del policy
    generate_s = time.perf_counter() - started

    started = time.perf_counter()
    flat_records = [p for p, group in zip(prompts, samples) for _ in group]
    flat = [r for group in samples for r in group]
    gold_flat = careful_scores(flat_records, flat)
    rm = load_reward_model(str(run / "reward" / "model"))
    rm_flat = rm.score([p.prompt for p in flat_records], flat, batch_size=16)
    score_s = time.perf_counter() - started
    gold = [gold_flat[i * args.n:(i + 1) * args.n] for i in range(len(prompts))]
    reward = [rm_flat[i * args.n:(i + 1) * args.n] for i in range(len(prompts))]

    random_gold = [sum(g) / len(g) for g in gold]
    rows, sizes = [], [2 ** k for k in range(int(math.log2(args.n)) + 1)]
    for n in sizes:
        picked = [g[max(range(n), key=lambda j: r[j])] for g, r in zip(gold, reward)]
        oracle = [max(g[:n]) for g in gold]
        first_n_mean = [sum(g[:n]) / n for g in gold]
        change = paired_bootstrap(picked, first_n_mean, seed=args.seed)
        rows.append({"n": n, "kl_nats": math.log(n) - (n - 1) / n, "random": sum(first_n_mean) / len(prompts),
                     "rm_best": sum(picked) / len(prompts), "oracle_best": sum(oracle) / len(prompts),
                     "rm_minus_random": change["gain"], "ci": [change["ci_low"], change["ci_high"]]})
    # how often the reward model orders two samples of one prompt the way the labeler does (ties skipped)
    agree = total = 0
    for g, r in zip(gold, reward):
        for i in range(args.n):
            for j in range(i + 1, args.n):
                if abs(g[i] - g[j]) > 1e-9:
                    total += 1
                    agree += (g[i] > g[j]) == (r[i] > r[j])
    result = {"run": str(run), "prompt_set": spec, "prompts": len(prompts), "n": args.n,
              "max_new_tokens": args.max_new_tokens,
              "seed": args.seed, "sample_pair_accuracy": agree / max(total, 1), "sample_pairs": total,
              "generate_seconds": round(generate_s, 1), "score_seconds": round(score_s, 1), "rows": rows,
              "timing": f"Generation {generate_s:.0f} s, scoring {score_s:.0f} s (wall time, "
                        f"{torch.get_num_threads()} torch threads).",
              "mean_random_gold": sum(random_gold) / len(prompts)}

    result["rl"] = rl_points(args.rl)
    write(result, out)


def rl_points(specs: list[str]) -> list[dict]:
    """Each LABEL=RUN's RL policy: its held-out gold gain over the eval baseline (with CI) and KL."""
    points = []
    for spec in specs:
        label, _, run = spec.rpartition("=")
        metrics = json.loads((Path(run) / "eval" / "metrics.json").read_text())
        for name, policy in metrics["policies"].items():
            if name != metrics["baseline"] and "gold_gain" in policy:
                gain = policy["gold_gain"]
                points.append({"label": label or Path(run).name, "policy": name, "kl": policy.get("kl"),
                               "gain": gain["gain"], "ci": [gain["ci_low"], gain["ci_high"]]})
    return points


def write(result: dict, out: Path) -> None:
    rows, n = result["rows"], result["n"]
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Best-of-n by the reward model, scored by the labeler, on held-out prompts", "",
             f"Run `{Path(result['run']).name}`: the SFT policy's {n} samples (temperature 1, "
             f"{result['max_new_tokens']} new tokens) to each of {result['prompts']} held-out prompts "
             f"(`{result['prompt_set']}`), seed {result['seed']}. The reward model picks one of the first n; the "
             "labeler scores every sample. Written by `benchmarks/bench_reward_bon.py`.", "",
             "| n | KL (nats) | random sample | RM best-of-n | oracle best-of-n | RM − random [95% CI] |",
             "|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['n']} | {row['kl_nats']:.2f} | {row['random']:.3f} | {row['rm_best']:.3f} | "
                     f"{row['oracle_best']:.3f} | {row['rm_minus_random']:+.3f} "
                     f"[{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] |")
    lines += ["", f"The reward model orders {100 * result['sample_pair_accuracy']:.1f}% of {result['sample_pairs']} "
              "pairs of these samples (pairs the labeler does not tie) the way the labeler does.",
              result.get("timing", ""), ""]
    if result.get("rl"):
        lines += ["RL policies on the same held-out prompts (greedy responses; gain over the SFT policy's greedy "
                  "responses, KL to it from sampled responses):", "",
                  "| run | policy | KL (nats) | gold gain [95% CI] |", "|---|---|---:|---|"]
        lines += [f"| {p['label']} | {p['policy']} | {p['kl']:.2f} | {p['gain']:+.3f} "
                  f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] |" for p in result["rl"]]
        lines.append("")
    plot(result, out.with_suffix(".png"))
    lines += [f"![best-of-n vs RL]({out.with_suffix('.png').name})", ""]
    write_results(out.stem, result, "\n".join(lines), out.parent)


def plot(result: dict, path: Path) -> None:
    """Labeler gain against KL: the reward model's best-of-n, the oracle's, and each RL policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    kl = [r["kl_nats"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(kl, [r["oracle_best"] - r["random"] for r in rows], "o--", color="0.6", label="oracle best-of-n")
    gains = [r["rm_minus_random"] for r in rows]
    ax.errorbar(kl, gains, yerr=[[g - r["ci"][0] for g, r in zip(gains, rows)],
                                 [r["ci"][1] - g for g, r in zip(gains, rows)]],
                fmt="o-", color="tab:blue", capsize=3, label="reward model best-of-n")
    for r in rows:
        ax.annotate(f"n={r['n']}", (r["kl_nats"], r["rm_minus_random"]), textcoords="offset points",
                    xytext=(4, -12), fontsize=8, color="tab:blue")
    colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for i, p in enumerate(result.get("rl", [])):
        ax.errorbar([p["kl"]], [p["gain"]], yerr=[[p["gain"] - p["ci"][0]], [p["ci"][1] - p["gain"]]],
                    fmt="s", capsize=3, color=colors[i % len(colors)], label=f"RL: {p['label']}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("KL from the SFT policy (nats)")
    ax.set_ylabel("labeler score gain over SFT")
    ax.set_title("Held-out gain: best-of-n by the reward model vs RL", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
