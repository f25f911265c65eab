"""`report.md` + `report.html` for a run folder: the answer first, then one section per stage.

The result comes first: each policy against the baseline (gold score and gains with 95% intervals, the
gaming guards, benchmarks, what a fixed answer scores, side-by-side responses). Then one section per stage:
a line of its key numbers, its plots, and its samples and full metric table folded into ``<details>``
(GitHub renders them; plain text stays readable). A series with fewer than `MIN_PLOT_POINTS` points is
written as numbers: a line through two or three noisy points reads as a trend it is not.

Reads only the files stages leave behind (summary.json, <stage>/metrics.json, loss_history.json,
stats.jsonl, responses.jsonl, ...), so it can be re-made at any time with `align report RUN_DIR`.
"""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

from align.jsonl import iter_jsonl
from align.report_plots import plot_bars, plot_gains, plot_lines
from align.stages import STAGE_ORDER

MIN_PLOT_POINTS = 5  # fewer points than this: numbers, not a line
BOOTSTRAP_RESAMPLES = 2000  # for the intervals the report computes itself (absolute scores)

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

# One line of key numbers per stage: each piece is shown when every metric it names is present.
KEY_NUMBERS: dict[str, tuple[str, ...]] = {
    "self_instruct": ("kept {kept} of {raw_generations} generated instructions (target {target})",
                      "{dropped/near_duplicate} dropped as near-duplicates", "{unique_verbs} distinct leading verbs",
                      "{teacher_calls} teacher calls"),
    "sft": ("{examples} training examples", "{steps} steps", "{tokens} tokens", "{adapter} adapter, {precision}",
            "{trainable_params} trainable parameters"),
    "rank": ("{rankings} rankings of K={k} responses by the {judge} judge",
             "{informative} informative, {all_tied} all tied",
             "gold score of the responses {gold_mean} on average, {gold_best_mean} for the best of each K"),
    "reward": ("held-out accuracy {heldout_accuracy} {heldout_accuracy_ci} on {heldout_pairs} pairs "
               "({heldout_prompts} prompts)", "training accuracy {accuracy}", "{train_pairs} training pairs",
               "{loss} loss"),
    "dpo": ("{method}, loss {loss_type}", "{steps} steps on {train_rows} pairs",
            "implicit-reward accuracy {reward_accuracy_first} → {reward_accuracy_last}",
            "held-out implicit-reward accuracy {heldout_reward_accuracy}"),
    "ppo": ("{steps} steps, advantage {advantage}",
            "reward-model score {first_score} → {last_score}", "{last_10pct_score} over the last 10% of steps",
            "gold {first_gold} → {last_gold}", "final KL {final_kl} (coefficient {final_kl_coef})",
            "{mean_step_seconds} s per step"),
    "eval": ("{n_prompts} held-out prompts", "judge {judge}", "baseline {baseline}",
             "the result is at the top of this report"),
}

SCORE_COLUMNS = (
    ("gold_score", "gold"), ("compliance", "constraints met"), ("strict_accuracy", "all met"),
    ("degenerate_share", "degenerate"), ("on_topic_cosine", "on-topic cos"), ("topic_recall", "task words"),
    ("distinct", "distinct-1/2/3"), ("words_mean", "words"), ("reward_score", "reward model"), ("kl", "KL to ref"),
)

# A policy's change from the baseline, with the direction that is better.
CHANGES = (
    ("compliance_gain", "constraints met", +1), ("degenerate_change", "degenerate share", -1),
    ("on_topic_change", "on-topic cosine", +1), ("topic_recall_change", "task words", +1),
    ("ifeval_prompt_strict_change", "IFEval prompt strict", +1),
    ("ifeval_instruction_strict_change", "IFEval instruction strict", +1),
)

IFEVAL_COLUMNS = (("prompt_strict", "prompt strict"), ("instruction_strict", "instruction strict"),
                  ("prompt_loose", "prompt loose"), ("instruction_loose", "instruction loose"))


# ---- reading and formatting

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    """A run file's records; a report shows what a killed or damaged run left, so bad lines are skipped."""
    return [rec for _, rec in iter_jsonl(path, skip_bad=True, missing_ok=True)]


def _fmt(value: Any) -> str:
    """A metric-table cell: 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _num(value: Any) -> str:
    """A number for prose and headline tables: 3 decimals for scores, fewer for big values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return f"[{value[0]:.3f}, {value[1]:.3f}]"  # an interval
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value:,.0f} s"


def _with_ci(value: float, interval: tuple[float, float]) -> str:
    """'0.462 [0.390, 0.533]': an absolute score and its interval (`format_gain` signs a change instead)."""
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _code(text: str) -> str:
    """Untrusted text inline: a code span (no markdown or html inside), pipes escaped for tables."""
    text = str(text).replace("\n", " ").replace("|", "\\|")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _block(text: str) -> list[str]:
    """Model output in a fenced block (untrusted text; the fence keeps it inert)."""
    return ["```text", str(text).replace("```", "ˋˋˋ")[:800], "```"]


def _details(summary: str, body: list[str]) -> list[str]:
    """A collapsed block: closed until clicked, in the html and on GitHub alike."""
    if not body:
        return []
    return [f"<details><summary>{html.escape(summary)}</summary>", "", *body, "", "</details>", ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _flat_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) rows: nested small dicts flattened, a gain with its interval and a 2-number interval
    in one cell each; other lists left out."""
    from align.eval.bootstrap import format_gain

    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and {"gain", "ci_low", "ci_high"} <= set(value):
            rows.append((name, format_gain(value)))
        elif isinstance(value, dict) and len(value) <= 12:
            rows.extend(_flat_metrics(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((name, value))
        elif (key.endswith(("_ci", "_ci95")) and isinstance(value, list) and len(value) == 2
              and all(isinstance(v, (int, float)) for v in value)):
            rows.append((name, f"[{value[0]:.4g}, {value[1]:.4g}]"))  # an interval: one cell
    return rows


def _slug(heading: str) -> str:
    """The anchor GitHub and Python-Markdown's toc extension both give a heading."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


# ---- the result: each policy against the baseline

def _mean_ci(values: list[float]) -> str | None:
    """'mean [low, high]' with a percentile bootstrap interval over prompts (None for fewer than 2 values)."""
    from align.eval.bootstrap import paired_bootstrap

    if len(values) < 2:
        return None
    result = paired_bootstrap(values, [0.0] * len(values), resamples=BOOTSTRAP_RESAMPLES)
    return _with_ci(result["gain"], (result["ci_low"], result["ci_high"]))


def _verdict(name: str, m: dict[str, Any], baseline: str) -> str:
    """One sentence: did the policy beat the baseline beyond noise, and which guards moved."""
    from align.eval.bootstrap import format_gain

    gain = m["gold_gain"]
    if gain["ci_low"] > 0:
        call = "**better** (the 95% interval is above 0)"
    elif gain["ci_high"] < 0:
        call = "**worse** (the 95% interval is below 0)"
    else:
        call = "**no clear change** (the 95% interval includes 0)"
    line = f"- **{name}** against {baseline}: gold {format_gain(gain)} on {gain['n']} prompts: {call}."
    moved, worse = [], False
    for key, label, better in CHANGES:
        change = m.get(key)
        if not isinstance(change, dict) or change["ci_low"] <= 0 <= change["ci_high"]:
            continue
        up = change["ci_low"] > 0
        worse |= up != (better > 0)
        moved.append(f"{label} {format_gain(change)} ({'better' if up == (better > 0) else 'worse'})")
    if moved:
        line += " Moved beyond noise: " + ", ".join(moved) + "."
    else:
        line += " No guard or benchmark moved beyond noise."
    if gain["ci_low"] > 0 and worse:
        line += " A gain next to a guard that got worse: read the side-by-side responses before trusting it."
    return line


def _scores_table(policies: dict[str, dict], fixed: dict[str, dict], gold_ci: dict[str, str]) -> list[str]:
    """Every policy and fixed answer on the gold score and the gaming guards."""
    def cell(m: dict[str, Any], key: str, name: str | None = None) -> str:
        if key == "gold_score" and name in gold_ci:
            return gold_ci[name]
        if key == "distinct":
            parts = [m.get(f"distinct_{n}") for n in (1, 2, 3)]
            return "/".join(f"{p:.2f}" for p in parts) if all(isinstance(p, (int, float)) for p in parts) else "-"
        value = m.get(key)
        if key == "words_mean" and isinstance(value, (int, float)):
            return f"{value:.1f}"
        return _num(value) if isinstance(value, (int, float)) else "-"

    def present(key: str) -> bool:
        return any((key if key != "distinct" else "distinct_1") in m for m in [*policies.values(), *fixed.values()])

    columns = [(k, label) for k, label in SCORE_COLUMNS if present(k)]
    if not columns:
        return []
    header = ["", *(label + (" (95% CI)" if k == "gold_score" and gold_ci else "") for k, label in columns)]
    rows = [[name, *(cell(m, k, name) for k, _ in columns)] for name, m in policies.items()]
    rows += [["fixed answer " + _code(text), *(cell(m, k) for k, _ in columns)] for text, m in fixed.items()]
    return [*_table(header, rows),
            "gold: the simulated labeler's score (quality × constraints met, `align.eval.labeler`); 95% CI: "
            "bootstrap over prompts. Gaming guards: degenerate = a line repeated 3+ times or under half the word "
            "3-grams distinct; on-topic cos = all-MiniLM-L6-v2 similarity to the task (the labeler uses it too); "
            "task words = share of the task's own words used (a signal the labeler never sees); distinct-n = "
            "distinct word n-grams; words = mean response length. A fixed answer is one string given to every "
            "prompt: a gain should be read against it.", ""]


def _ifeval_intervals(rows: list[dict], names: list[str]) -> dict[str, dict[str, str]]:
    """Per policy, prompt- and instruction-level strict accuracy with bootstrap intervals over prompts (the
    instruction level resamples whole prompts, whose instructions are not independent)."""
    from align.eval.bootstrap import prompt_bootstrap_accuracy

    out: dict[str, dict[str, str]] = {}
    for name in names:
        flags = [[bool(f) for f in r[name]["strict"]] for r in rows
                 if isinstance(r.get(name), dict) and isinstance(r[name].get("strict"), list) and r[name]["strict"]]
        if len(flags) < 2:
            continue
        out[name] = {}
        for level, correct, total in (("prompt_strict", [float(all(f)) for f in flags], [1] * len(flags)),
                                      ("instruction_strict", [float(sum(f)) for f in flags], [len(f) for f in flags])):
            acc = prompt_bootstrap_accuracy(correct, total, resamples=BOOTSTRAP_RESAMPLES)
            out[name][level] = _with_ci(acc["accuracy"], (acc["ci_low"], acc["ci_high"]))
    return out


def _benchmarks(policies: dict[str, dict], fixed: dict[str, dict], baseline: str, ifeval_rows: list[dict]) -> list[str]:
    """IFEval (with intervals where the per-prompt results are on disk) and lm-evaluation-harness tasks."""
    from align.eval.bootstrap import format_gain

    lines: list[str] = []
    if any("ifeval_prompt_strict" in m for m in policies.values()):
        intervals = _ifeval_intervals(ifeval_rows, list(policies))
        header = ["", *(label + (" (95% CI)" if intervals and k.endswith("strict") else "") for k, label in IFEVAL_COLUMNS),
                  f"prompt-strict change vs {baseline} (95% CI)"]
        rows = []
        for name, m in [*policies.items(), *(("fixed answer " + _code(t), m) for t, m in fixed.items())]:
            cells = [intervals[name][k] if k in intervals.get(name, {}) else
                     _num(m.get(f"ifeval_{k}", "-")) for k, _ in IFEVAL_COLUMNS]
            change = m.get("ifeval_prompt_strict_change")
            rows.append([name, *cells, format_gain(change) if isinstance(change, dict) else "-"])
        n = next((m["ifeval_prompts"] for m in policies.values() if "ifeval_prompts" in m), "?")
        lines += [f"**IFEval** ({n} prompts, the official checkers; strict = the response as written, loose = also "
                  "after stripping markup and first/last lines):", "", *_table(header, rows)]
    tasks = {(task, key) for m in policies.values() if isinstance(m.get("lm_eval"), dict)
             for task, vals in m["lm_eval"].items() if isinstance(vals, dict)
             for key in vals if "stderr" not in key}
    if tasks:
        def cell(m: dict[str, Any], task: str, key: str) -> str:
            vals = (m.get("lm_eval") or {}).get(task) or {}
            value, stderr = vals.get(key), vals.get(key.replace(",", "_stderr,", 1))
            if not isinstance(value, (int, float)):
                return "-"
            if isinstance(stderr, (int, float)):
                return f"{value:.3f} [{value - 1.96 * stderr:.3f}, {value + 1.96 * stderr:.3f}]"
            return _num(value)

        rows = [[f"{task} {_code(key)}", *(cell(m, task, key) for m in policies.values())] for task, key in sorted(tasks)]
        lines += ["**lm-evaluation-harness** (95% CI: ±1.96 × the harness's standard error):", "",
                  *_table(["task", *policies], rows)]
    return ["### Benchmarks", "", *lines] if lines else []


def _picks(rows: list[dict], baseline: str, names: list[str], n: int) -> list[tuple[int, str]]:
    """Which prompts to show: the first n, and per policy the n the labeler scored worst and the n the reward
    model scored highest (where reward hacking shows first)."""
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
    out = []
    for i, why in picks:
        if i not in seen:
            seen.add(i)
            out.append((i, why))
    return out


def _side_by_side(rows: list[dict], baseline: str, names: list[str]) -> list[str]:
    """Responses of every policy to the same prompts: one of each kind shown, more folded away."""
    if not rows or baseline not in rows[0]:
        return []

    def render(i: int, why: str) -> list[str]:
        row = rows[i]
        out = [f"**{_code(row.get('id', i))}** ({why})", *_block(row.get("prompt", ""))]
        for name in names:
            val = row.get(name)
            if isinstance(val, dict) and "response" in val:
                scores = " · ".join(f"{label} {_num(val[k])}" for k, label in (
                    ("gold", "gold"), ("compliance", "constraints"), ("reward", "reward"), ("on_topic", "on-topic"))
                    if isinstance(val.get(k), (int, float)))
                out += [f"*{name}* ({scores})", *_block(val["response"])]
        return out

    shown = _picks(rows, baseline, names, 1)
    more = [p for p in _picks(rows, baseline, names, 3) if p[0] not in {i for i, _ in shown}]
    lines = ["### Side by side", ""]
    for i, why in shown:
        lines += render(i, why)
    lines.append("")
    lines += _details(f"{len(more)} more prompts side by side", [x for i, why in more for x in render(i, why)])
    return lines


def eval_headline(metrics: dict[str, Any], rows: list[dict], ifeval_rows: list[dict] | None = None) -> list[str]:
    """The answer a run is for, first: each policy vs the baseline with intervals, the gaming guards beside the
    gain, benchmarks, what a fixed answer scores, and side-by-side responses (first, worst-scored,
    highest-reward)."""
    from align.eval.bootstrap import format_gain

    policies = metrics.get("policies") or {}
    baseline = metrics.get("baseline") or next(iter(policies), "")
    fixed = metrics.get("fixed_strings") or {}
    lines = [f"## Result: each policy against {baseline}", ""]
    gains = [(n, m) for n, m in policies.items() if isinstance(m.get("gold_gain"), dict)]
    if gains:
        lines += [_verdict(n, m, baseline) for n, m in gains] + [""]
        header = ["policy", "gold gain (95% CI)", "constraints-met gain", "degenerate change", "on-topic change",
                  "IFEval prompt-strict change"]
        lines += _table(header, [[n, *(format_gain(m[k]) if isinstance(m.get(k), dict) else "-" for k in (
            "gold_gain", "compliance_gain", "degenerate_change", "on_topic_change", "ifeval_prompt_strict_change"))]
            for n, m in gains])
    gold_ci = {}
    for name in policies:
        scores = [r[name]["gold"] for r in rows if isinstance(r.get(name), dict)
                  and isinstance(r[name].get("gold"), (int, float))]
        if (ci := _mean_ci(scores)) is not None:
            gold_ci[name] = ci
    lines += _scores_table(policies, fixed, gold_ci)
    lines += _benchmarks(policies, fixed, baseline, ifeval_rows or [])
    lines += _side_by_side(rows, baseline, list(policies))
    return lines


# ---- one section per stage

def _key_numbers(stage: str, metrics: dict[str, Any]) -> list[str]:
    values = {k: _num(v) for k, v in metrics.items() if v is not None}
    pieces = []
    for template in KEY_NUMBERS.get(stage, ()):
        try:
            pieces.append(template.format_map(values))
        except (KeyError, ValueError):
            continue  # a metric this run did not record
    return pieces


def _status(stage_dir: Path, record: dict[str, Any], metrics: dict[str, Any]) -> str:
    seconds = metrics.get("seconds")
    took = _seconds(seconds) if isinstance(seconds, (int, float)) else "time unknown"
    status = record.get("status") or ("complete" if (stage_dir / "COMPLETE").exists() else "incomplete")
    if status == "skipped":
        return f"reused from an earlier run (took {took})"
    return f"{status} ({took})" if status != "ran" else f"ran in {took}"


def _curve(path: Path, title: str, series: dict[str, list[tuple[float, float]]], steps: Any = None,
           twin: str | None = None) -> tuple[Path | None, list[str]]:
    """A plot for a series long enough to show a trend; for a short one, lines with its first and last values."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None, []
    if max(len(v) for v in series.values()) >= MIN_PLOT_POINTS:
        return plot_lines(path, title, series, twin=twin), []
    lines = []
    for name, points in series.items():
        xs = ", ".join(_num(x) for x, _ in points)
        over = f" over {_num(steps)} steps" if isinstance(steps, int) else ""
        if len(points) == 1:
            lines.append(f"- {name}: {_num(points[0][1])} (one logged point, step {xs})")
        else:
            lines.append(f"- {name}: {_num(points[0][1])} → {_num(points[-1][1])}{over} (logged at steps {xs})")
    return None, lines


FEW_POINTS_NOTE = (f"Fewer than {MIN_PLOT_POINTS} logged points, so numbers instead of a plot: a handful of steps "
                   "on few examples is noisy; read these as a check that training ran, not as a trend.")


def _stage_curves(stage: str, stage_dir: Path, plots_dir: Path, metrics: dict[str, Any]) -> tuple[list[str], list[Path]]:
    """The stage's plots, side by side in one paragraph, and numbers for the series too short to plot."""
    curves: list[tuple[Path, str, dict, str | None]] = []
    history = _read_json(stage_dir / "loss_history.json")
    if isinstance(history, list) and history:
        curves.append((plots_dir / f"{stage}_loss.png", f"{stage}: training loss",
                       {"training loss": [tuple(p) for p in history if isinstance(p, list) and len(p) == 2]}, None))
    if stage == "ppo":
        stats = _read_jsonl(stage_dir / "stats.jsonl")
        for i, (key, twin, title) in enumerate(PPO_CURVES):
            series = {k: [(s.get("step", j), s[k]) for j, s in enumerate(stats) if k in s] for k in (key, twin) if k}
            curves.append((plots_dir / f"ppo_{i}.png", title, series, twin))
    if stage == "dpo":
        rows = [r for r in (_read_json(stage_dir / "history.json") or []) if isinstance(r, dict) and "step" in r]
        for i, (key, other, title) in enumerate(DPO_CURVES):
            series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in (key, other) if k}
            twin = other if key == "rewards/accuracies" else None  # accuracy in [0, 1], margin unbounded
            curves.append((plots_dir / f"dpo_{i}.png", title, series, twin))
    plots: list[tuple[Path | None, str]] = []
    few: list[str] = []
    for path, title, series, twin in curves:
        p, numbers = _curve(path, title, series, metrics.get("steps"), twin)
        plots.append((p, title))
        few += numbers
    by_k = metrics.get("accuracy_by_k")
    if stage == "reward" and isinstance(by_k, dict) and len(by_k) > 1:  # one K is the held-out accuracy above
        title = "Reward model held-out accuracy by K"
        plots.append((plot_bars(plots_dir / "reward_accuracy_by_k.png", title, {
            f"K={k}": {"accuracy": float(v)} for k, v in by_k.items() if isinstance(v, (int, float))}), title))
    gains = {n: m["gold_gain"] for n, m in (metrics.get("policies") or {}).items()
             if isinstance(m, dict) and isinstance(m.get("gold_gain"), dict)}
    if stage == "eval" and len(gains) > 1:  # one policy's gain is one number, already in the result
        title = f"Held-out gold gain over {metrics.get('baseline', 'the baseline')} (paired bootstrap 95% CI)"
        plots.append((plot_gains(plots_dir / "eval_gain.png", title, gains), title))
    drawn = [(p, title) for p, title in plots if p is not None]
    lines = [" ".join(f"![{title}](plots/{p.name})" for p, title in drawn), ""] if drawn else []
    if few:
        lines += [*few, "", FEW_POINTS_NOTE, ""]
    return lines, [p for p, _ in drawn]


def _samples(stage: str, stage_dir: Path, n: int = 3) -> list[str]:
    """A few outputs, in fenced blocks (model output is untrusted text; fences keep it inert)."""
    out: list[str] = []
    if stage == "ppo":
        for row in _read_jsonl(stage_dir / "samples.jsonl")[-n:]:
            out += [f"**step {row.get('step')}**, score {_num(row.get('score'))}",
                    *_block(row.get("prompt", row.get("query", ""))), *_block(row.get("response", ""))]
    elif stage == "rank":
        for row in _read_jsonl(stage_dir / "rankings.jsonl")[:1]:
            out += ["**Prompt**", *_block(row.get("prompt", "")), f"ranking: {_code(row.get('ranking'))}", ""]
            for i, r in enumerate(row.get("responses", [])[:4]):
                out += [f"response {i}", *_block(r)]
    elif stage == "self_instruct":
        data = sorted(stage_dir.glob("*.jsonl"))
        for row in (_read_jsonl(data[0]) if data else [])[:n]:
            messages = row.get("messages")
            if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
                for m in messages:
                    out += [f"*{html.escape(str(m.get('role')))}*", *_block(m.get("content", ""))]
            else:
                out += _block(json.dumps(row, ensure_ascii=False, indent=1))
    return _details("Samples", out)


def _metric_tables(stage: str, metrics: dict[str, Any]) -> list[str]:
    """Every recorded metric, folded away: one table, or for eval one column per policy."""
    policies = metrics.get("policies") if stage == "eval" else None
    top = {k: v for k, v in metrics.items() if k not in ("policies", "fixed_strings")} if policies else metrics
    lines = _table(["metric", "value"], [[k, _fmt(v)] for k, v in _flat_metrics(top)]) if top else []
    if isinstance(policies, dict) and policies:
        per = {name: dict(_flat_metrics(m)) for name, m in policies.items() if isinstance(m, dict)}
        keys = list(dict.fromkeys(k for flat in per.values() for k in flat))
        lines += ["Per policy:", "", *_table(["metric", *per], [[k, *(_fmt(per[n].get(k, "-")) for n in per)]
                                                                  for k in keys])]
    return _details(f"All {stage} metrics", lines)


def stage_section(stage: str, stage_dir: Path, plots_dir: Path, record: dict[str, Any] | None = None
                  ) -> tuple[list[str], list[Path]]:
    """Markdown lines and plot files for one stage: key numbers, plots, then samples and metrics folded."""
    metrics = _read_json(stage_dir / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    key = " · ".join([*_key_numbers(stage, metrics), _status(stage_dir, record or {}, metrics)])
    curves, plots = _stage_curves(stage, stage_dir, plots_dir, metrics)
    lines = [f"## {stage}", "", key, "", *curves, *_samples(stage, stage_dir), *_metric_tables(stage, metrics)]
    return lines, plots


# ---- the files

def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html (with plots/ PNGs) into the run directory."""
    run_dir = Path(run_dir)
    plots_dir = run_dir / "plots"
    summary = _read_json(run_dir / "summary.json") or []
    by_stage = {rec["name"]: rec for rec in summary if isinstance(rec, dict) and "name" in rec}
    stages = [s for s in STAGE_ORDER if (run_dir / s).is_dir()]
    seconds = [(_read_json(run_dir / s / "metrics.json") or {}).get("seconds") for s in stages]
    total = sum(float(s) for s in seconds if isinstance(s, (int, float)))
    eval_metrics = _read_json(run_dir / "eval" / "metrics.json")
    if isinstance(eval_metrics, dict) and isinstance(eval_metrics.get("policies"), dict):
        result = eval_headline(eval_metrics, _read_jsonl(run_dir / "eval" / "responses.jsonl"),
                               _read_jsonl(run_dir / "eval" / "ifeval_responses.jsonl"))
    else:
        result = ["## Result", "", "This run has no eval stage, so no policy is compared with a baseline: add an "
                  "`eval:` section to the recipe (see docs/evaluation.md).", ""]
    sections = [result[0].removeprefix("## ")] + list(stages)
    lines = [f"# align run report: {run_dir.name}", "",
             f"Stages: {' → '.join(stages) or 'none'} ({_seconds(total)} of stage time). "
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `align report`.", "",
             "Sections: " + " · ".join(f"[{s}](#{_slug(s)})" for s in sections), "", *result]
    written: list[Path] = []
    for stage in stages:
        section, plots = stage_section(stage, run_dir / stage, plots_dir, by_stage.get(stage))
        lines += section
        written += plots
    for old in plots_dir.glob("*.png") if plots_dir.is_dir() else []:
        if old not in written:  # a plot an earlier report drew that this one does not show
            old.unlink()
    md_text = "\n".join(lines) + "\n"
    md_path = run_dir / "report.md"
    md_path.write_text(md_text, encoding="utf-8")
    html_path = run_dir / "report.html"
    html_path.write_text(to_html(md_text, run_dir.name), encoding="utf-8")
    return md_path, html_path


def _markdown_in_details(md_text: str) -> str:
    """Mark the report's own <details> lines (outside fenced blocks) so Python-Markdown renders the markdown
    inside them (its md_in_html extension); GitHub does that without the mark, so report.md stays plain."""
    out, fenced = [], False
    for line in md_text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("<details><summary>"):
            line = line.replace("<details>", '<details markdown="1">', 1)
        out.append(line)
    return "\n".join(out)


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
         "line-height:1.45}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}"
         "td+td{white-space:nowrap}code{background:#f3f3f3;padding:0 2px}"
         "pre{background:#f6f6f6;padding:8px;overflow-x:auto;white-space:pre-wrap}img{max-width:49%;margin:0 .5% .5em 0}"
         "details{margin:.6em 0;padding:.3em .6em;border:1px solid #e3e3e3;border-radius:4px}"
         "summary{cursor:pointer;color:#555}")


def to_html(md_text: str, title: str) -> str:
    """The report as one self-contained html page (plots are the PNG files beside it)."""
    import markdown

    body = markdown.markdown(_markdown_in_details(md_text), extensions=["tables", "fenced_code", "md_in_html", "toc"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
