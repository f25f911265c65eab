"""`report.md` + `report.html` for a run directory: what ran, how long, key numbers, samples, plots.

Reads only the files stages leave behind (summary.json, <stage>/metrics.json, loss_history.json,
stats.jsonl, responses.jsonl, ...), so it can be re-made at any time with `align report RUN_DIR`.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from align.jsonl import iter_jsonl
from align.stages import STAGE_ORDER

PPO_CURVES = (
    ("objective/scores", "objective/gold", "Reward-model score vs gold score (over-optimisation shows as a gap)"),
    ("objective/kl", None, "KL(policy ‖ reference) per step"),
    ("objective/rlhf_reward", None, "Shaped reward (score − β·KL)"),
    ("tokens/response_len_mean", None, "Mean response length (tokens)"),
)

DPO_CURVES = (
    ("rewards/accuracies", "rewards/margins", "Implicit reward: accuracy (chosen > rejected) and margin"),
    ("logps/chosen", "logps/rejected", "Policy log-probs of chosen vs rejected responses"),
    ("kl", None, "KTO: KL(policy ‖ reference) estimate"),
)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """A run file's records; a report shows what a killed or damaged run left, so bad lines are skipped."""
    return [rec for _, rec in iter_jsonl(path, skip_bad=True, missing_ok=True)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def moving_average(ys: list[float], min_points: int = 8) -> list[float] | None:
    """Trailing mean over a window of ~1/8 of the run (at least 3 points), or None for short series.

    PPO logs one batch of rollouts per step, so per-step scores are noisy; the trend is what matters.
    """
    if len(ys) < min_points:
        return None
    window = max(3, len(ys) // 8)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _save(fig, path: Path) -> Path:
    """Write a finished figure as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_lines(path: Path, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str = "step",
                twin: str | None = None) -> Path | None:
    """One PNG with a line per series (the `twin` series on a second y-axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    axes = {name: ax for name in series}
    if twin and twin in series and len(series) > 1:
        axes[twin] = ax.twinx()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for (name, points), color in zip(series.items(), colors):
        xs, ys = zip(*points)
        smooth = moving_average(list(ys))
        faint = smooth is not None  # noisy per-step values: draw them faintly under their trend
        axes[name].plot(xs, ys, label=None if faint else name, color=color, alpha=0.35 if faint else 1.0,
                        marker="." if len(xs) < 40 else None)
        if faint:
            axes[name].plot(xs, smooth, label=f"{name} (moving avg)", color=color, linewidth=2)
        axes[name].set_ylabel(name, color=color if twin else "black")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    handles = [h for a in set(axes.values()) for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in set(axes.values()) for lab in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _plot_bars(path: Path, title: str, groups: dict[str, dict[str, float]]) -> Path | None:
    """Grouped bars: one group per policy, one bar per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        return None
    metrics = sorted({m for g in groups.values() for m in g})
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    width = 0.8 / max(len(metrics), 1)
    for j, metric in enumerate(metrics):
        xs = [i + j * width for i in range(len(groups))]
        ys = [groups[g].get(metric, 0.0) for g in groups]
        bars = ax.bar(xs, ys, width=width, label=metric)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(groups))], list(groups))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _plot_gains(path: Path, title: str, gains: dict[str, dict[str, float]]) -> Path | None:
    """One bar per policy: its gain over the baseline, with the bootstrap 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not gains:
        return None
    names = list(gains)
    ys = [gains[n]["gain"] for n in names]
    errs = [[y - gains[n]["ci_low"] for n, y in zip(names, ys)], [gains[n]["ci_high"] - y for n, y in zip(names, ys)]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    bars = ax.bar(range(len(names)), ys, yerr=errs, capsize=6, color="tab:green", alpha=0.8)
    ax.bar_label(bars, fmt="%+.3f", fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _flat_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 12:
            rows.extend(_flat_metrics(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((name, value))
        elif (key.endswith("_ci") and isinstance(value, list) and len(value) == 2
              and all(isinstance(v, (int, float)) for v in value)):
            rows.append((name, f"[{value[0]:.4g}, {value[1]:.4g}]"))  # an interval: one cell
    return rows


def _stage_section(stage: str, stage_dir: Path, plots_dir: Path) -> tuple[list[str], list[Path]]:
    """Markdown lines and plot files for one stage."""
    lines: list[str] = []
    plots: list[Path] = []
    metrics = _read_json(stage_dir / "metrics.json") or {}
    history = _read_json(stage_dir / "loss_history.json")
    if history:
        p = _plot_lines(plots_dir / f"{stage}_loss.png", f"{stage}: training loss", {"loss": history})
        plots += [p] if p else []
    if stage == "ppo":
        stats = _read_jsonl(stage_dir / "stats.jsonl")
        for i, (key, twin, title) in enumerate(PPO_CURVES):
            series = {key: [(s.get("step", j), s[key]) for j, s in enumerate(stats) if key in s]}
            if twin:
                series[twin] = [(s.get("step", j), s[twin]) for j, s in enumerate(stats) if twin in s]
            p = _plot_lines(plots_dir / f"ppo_{i}.png", title, series, twin=twin)
            plots += [p] if p else []
    if stage == "dpo":
        rows = _read_json(stage_dir / "history.json") or []
        for i, (key, other, title) in enumerate(DPO_CURVES):
            series = {key: [(r["step"], r[key]) for r in rows if key in r]}
            if other:
                series[other] = [(r["step"], r[other]) for r in rows if other in r]
            twin = other if key == "rewards/accuracies" else None  # accuracy in [0, 1], margin unbounded
            p = _plot_lines(plots_dir / f"dpo_{i}.png", title, series, twin=twin)
            plots += [p] if p else []
    if stage == "reward" and isinstance(metrics.get("accuracy_by_k"), dict):
        p = _plot_bars(plots_dir / "reward_accuracy_by_k.png", "Reward model held-out accuracy by K",
                       {f"K={k}": {"accuracy": float(v)} for k, v in metrics["accuracy_by_k"].items()
                        if isinstance(v, (int, float))})
        plots += [p] if p else []
    if stage == "eval" and isinstance(metrics.get("policies"), dict):
        groups = {name: {k: v for k, v in m.items() if k in ("gold_score", "strict_accuracy") and v is not None}
                  for name, m in metrics["policies"].items()}
        p = _plot_bars(plots_dir / "eval_gold.png", "Held-out gold score and strict accuracy", groups)
        plots += [p] if p else []
        gains = {name: m["gold_gain"] for name, m in metrics["policies"].items() if isinstance(m.get("gold_gain"), dict)}
        if gains:
            from align.eval.bootstrap import format_gain

            baseline = metrics.get("baseline", "baseline")
            lines += [f"| policy | gold gain over {baseline} (95% CI) | strict gain (95% CI) | prompts |",
                      "|---|---|---|---|"]
            lines += [f"| {name} | {format_gain(g)} | {format_gain(metrics['policies'][name]['strict_gain'])} | "
                      f"{g['n']} |" for name, g in gains.items() if isinstance(metrics["policies"][name].get("strict_gain"), dict)]
            lines.append("")
            p = _plot_gains(plots_dir / "eval_gain.png", f"Held-out gold gain over {baseline} (paired bootstrap 95% CI)",
                            gains)
            plots += [p] if p else []
    shown = [(k, v) for k, v in _flat_metrics(metrics) if not k.startswith(("pass_rate", "policies.") ) or
             k.count(".") <= 1 or k.split(".")[2] in ("gold_score", "strict_accuracy", "reward_score",
                                                      "kl", "kl_stderr", "response_words_mean")]
    if shown:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown[:40]]
        lines.append("")
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    lines += _samples(stage, stage_dir)
    return lines, plots


GUARD_COLUMNS = (
    ("gold_score", "gold (labeler)"), ("compliance", "constraints met"), ("strict_accuracy", "all met"),
    ("degenerate_share", "degenerate"), ("on_topic_cosine", "on-topic cos"), ("topic_recall", "task words"),
    ("words_mean", "words"), ("ifeval_prompt_strict", "IFEval prompt strict"),
    ("ifeval_instruction_strict", "IFEval instr. strict"), ("kl", "KL to ref"),
)


def _block(text: str) -> list[str]:
    """Model output in a fenced block (untrusted text; the fence keeps it inert)."""
    return ["```text", str(text).replace("```", "ˋˋˋ")[:800], "```"]


def eval_headline(metrics: dict[str, Any], rows: list[dict]) -> list[str]:
    """The answer a run is for, first: each policy vs the baseline with CIs, the gaming guards next to the
    gain, what a fixed answer scores, and side-by-side responses (first, worst-scored, highest-reward)."""
    from align.eval.bootstrap import format_gain

    policies = metrics.get("policies") or {}
    baseline = metrics.get("baseline") or next(iter(policies), "")
    lines = ["## Result: each policy against " + str(baseline), ""]
    gains = [(n, m) for n, m in policies.items() if isinstance(m.get("gold_gain"), dict)]
    if gains:
        lines += ["| policy | gold gain (95% CI) | constraints-met gain | degenerate change | on-topic change | "
                  "IFEval prompt-strict change |", "|---|---|---|---|---|---|"]
        for name, m in gains:
            cells = [format_gain(m[k]) if isinstance(m.get(k), dict) else "-" for k in
                     ("gold_gain", "compliance_gain", "degenerate_change", "on_topic_change", "ifeval_prompt_strict_change")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    columns = [(k, label) for k, label in GUARD_COLUMNS if any(k in m for m in policies.values())]
    fixed = metrics.get("fixed_strings") or {}
    if columns:
        lines += ["| | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, m in policies.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k, "-")) for k, _ in columns) + " |")
        for text, m in fixed.items():
            label = "fixed answer " + json.dumps(text, ensure_ascii=False).replace("|", "\\|")
            lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k, "-")) for k, _ in columns) + " |")
        lines += ["", "gold: the simulated labeler's score (quality × constraints met, `align.eval.labeler`); "
                  "degenerate: a line repeated 3+ times or under half the word 3-grams distinct; on-topic cos: "
                  "all-MiniLM-L6-v2 similarity to the task (the labeler uses it too); task words: share of the task's "
                  "own words used (a signal the labeler never sees); a fixed answer is one string given to every prompt.",
                  ""]
    lines += _side_by_side(rows, baseline, list(policies))
    return lines


def _side_by_side(rows: list[dict], baseline: str, names: list[str], n: int = 2) -> list[str]:
    """Responses of every policy to the same prompts: the first few, and per policy the ones the labeler
    scored worst and the reward model scored highest (where reward hacking shows first)."""
    if not rows or baseline not in rows[0]:
        return []
    picks: list[tuple[int, str]] = [(i, "first prompts") for i in range(min(n, len(rows)))]
    for name in names:
        if name == baseline:
            continue
        scored = [i for i, r in enumerate(rows) if isinstance(r.get(name), dict) and "gold" in r[name]]
        picks += [(i, f"lowest gold for {name}") for i in sorted(scored, key=lambda i: rows[i][name]["gold"])[:n]]
        rewarded = [i for i in scored if "reward" in rows[i][name]]
        picks += [(i, f"highest reward-model score for {name}")
                  for i in sorted(rewarded, key=lambda i: -rows[i][name]["reward"])[:n]]
    seen: set[int] = set()
    out = ["### Side by side", ""]
    for i, why in picks:
        if i in seen:
            continue
        seen.add(i)
        row = rows[i]
        out += [f"**{row.get('id', i)}** ({why})", *_block(row.get("prompt", ""))]
        for name in names:
            val = row.get(name)
            if isinstance(val, dict) and "response" in val:
                scores = ", ".join(f"{k} {_fmt(val[k])}" for k in ("gold", "compliance", "reward", "on_topic")
                                   if k in val)
                out += [f"*{name}* ({scores})", *_block(val["response"])]
    return [*out, ""]


def _samples(stage: str, stage_dir: Path, n: int = 3) -> list[str]:
    """A few outputs, in fenced blocks (model output is untrusted text; fences keep it inert)."""
    block = _block
    out: list[str] = []
    if stage == "ppo":
        for row in _read_jsonl(stage_dir / "samples.jsonl")[-n:]:
            out += [f"**step {row.get('step')}** score {_fmt(row.get('score'))}", *block(row.get("query", "")),
                    *block(row.get("response", ""))]
    elif stage == "rank":
        for row in _read_jsonl(stage_dir / "rankings.jsonl")[:1]:
            out += ["**Prompt**", *block(row.get("prompt", "")), f"ranking: `{row.get('ranking')}`"]
            for i, r in enumerate(row.get("responses", [])[:4]):
                out += [f"response {i}", *block(r)]
    elif stage == "self_instruct":
        data = sorted(stage_dir.glob("*.jsonl"))
        rows = _read_jsonl(data[0]) if data else []
        for row in rows[:n]:
            out += block(json.dumps(row, ensure_ascii=False, indent=1))
    if out:
        out = ["<details><summary>Samples</summary>", "", *out, "", "</details>", ""]
    return out


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html (with plots/ PNGs) into the run directory."""
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    summary = _read_json(run_dir / "summary.json") or []
    by_stage = {rec["name"]: rec for rec in summary if isinstance(rec, dict)}
    stages = [s for s in STAGE_ORDER if (run_dir / s).is_dir()]
    total = sum(float((_read_json(run_dir / s / "metrics.json") or {}).get("seconds", 0) or 0) for s in stages)
    lines = [f"# align run report: {run_dir.name}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}. Stages: {' → '.join(stages) or 'none'}. "
             f"Stage time (sum of last runs): {total:.0f} s.", "",
             "| stage | status | time (s) |", "|---|---|---|"]
    for stage in stages:
        rec = by_stage.get(stage, {})
        seconds = (_read_json(run_dir / stage / "metrics.json") or {}).get("seconds", "")
        status = rec.get("status", "complete" if (run_dir / stage / "COMPLETE").exists() else "incomplete")
        lines.append(f"| {stage} | {status} | {_fmt(seconds)} |")
    lines.append("")
    eval_metrics = _read_json(run_dir / "eval" / "metrics.json")
    if isinstance(eval_metrics, dict) and isinstance(eval_metrics.get("policies"), dict):
        lines += eval_headline(eval_metrics, _read_jsonl(run_dir / "eval" / "responses.jsonl"))
    for stage in stages:
        section, _ = _stage_section(stage, run_dir / stage, plots_dir)
        lines += [f"## {stage}", "", *section]
    md_text = "\n".join(lines) + "\n"
    md_path = run_dir / "report.md"
    md_path.write_text(md_text, encoding="utf-8")
    html_path = run_dir / "report.html"
    html_path.write_text(_to_html(md_text, run_dir.name), encoding="utf-8")
    return md_path, html_path


def _to_html(md_text: str, title: str) -> str:
    try:
        import markdown

        body = markdown.markdown(md_text, extensions=["tables", "fenced_code"])
    except ImportError:  # plain fallback: escaped text
        body = f"<pre>{html.escape(md_text)}</pre>"
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}"
             "pre{background:#f6f6f6;padding:8px;overflow-x:auto;white-space:pre-wrap}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>\n")
