"""`align label stats`: counts, flags, and how often labelers agree with each other.

Agreement is measured the way InstructGPT reports it (~73% between training labelers): over the
response pairs that two labelers both ranked, the fraction on which they prefer the same response.

- ``agreement``: pairs that both labelers put in a strict order (neither tied them); they agree
  when they prefer the same response.
- ``agreement_with_ties``: every pair both ranked, a tie counting as a third answer; they agree
  when they gave the same answer (both tied, or both preferred the same response).

Counts are pooled over tasks and over every pair of labelers who ranked a task (micro average),
and also given per pair of labelers. Skipped labels are counted but never compared.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.preferences.label.store import FLAGS, read_label_lines

NO_LABELER = "(none)"


def _rank_of(ranking: list, k: int, where: str) -> list[int]:
    """Tie groups → each response's group number (0 = best)."""
    from align.preferences.rankings import normalize_ranking

    rank = [0] * k
    for g, group in enumerate(normalize_ranking(ranking, k, where)):
        for i in group:
            rank[i] = g
    return rank


def _relation(rank: list[int], i: int, j: int) -> int:
    """-1: i is better, 1: j is better, 0: tied."""
    return (rank[i] > rank[j]) - (rank[i] < rank[j])


def latest_labels(path: str | Path) -> list[dict]:
    """The file's records, keeping only the last one per (task, labeler)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AlignError(f"rankings file not found: {path}")
    latest: dict[tuple[str, str], dict] = {}
    for rec in read_label_lines(path):
        if not isinstance(rec.get("responses"), list):
            raise AlignError(f"{path}: record {rec.get('task_id', '')!r} has no 'responses' list")
        task = json.dumps([rec.get("prompt"), rec["responses"]], sort_keys=True, ensure_ascii=False)
        latest.pop((task, str(rec.get("labeler", NO_LABELER))), None)  # re-insert: file order of the last one
        latest[(task, str(rec.get("labeler", NO_LABELER)))] = rec
    return list(latest.values())


def _agreement(c: Counter) -> dict[str, Any]:
    return {"agreement": round(c["agree"] / c["strict"], 4) if c["strict"] else None,
            "agreeing_pairs": c["agree"], "strict_pairs": c["strict"],
            "agreement_with_ties": round(c["same"] / c["pairs"], 4) if c["pairs"] else None,
            "same_answer_pairs": c["same"], "compared_pairs": c["pairs"]}


def label_stats(path: str | Path) -> dict[str, Any]:
    """Counts per labeler, flag counts and inter-labeler agreement of a labels file."""
    records = latest_labels(path)
    per_labeler: dict[str, Counter] = {}
    flag_counts: Counter = Counter()
    by_task: dict[str, dict[str, list[int]]] = {}
    for rec in records:
        labeler = str(rec.get("labeler", NO_LABELER))
        counts = per_labeler.setdefault(labeler, Counter())
        for response_flags in rec.get("flags") or []:
            flag_counts.update(response_flags)
            counts.update(f"flag:{f}" for f in response_flags)
        if rec.get("skipped"):
            counts["skipped"] += 1
            continue
        counts["ranked"] += 1
        task = json.dumps([rec.get("prompt"), rec["responses"]], sort_keys=True, ensure_ascii=False)
        where = f"{path} task {rec.get('task_id', '?')} labeler {labeler}"
        by_task.setdefault(task, {})[labeler] = _rank_of(rec.get("ranking"), len(rec["responses"]), where)

    pairs: dict[tuple[str, str], Counter] = {}
    for ranks in by_task.values():
        for a, b in combinations(sorted(ranks), 2):
            c = pairs.setdefault((a, b), Counter())
            c["tasks"] += 1
            ra, rb = ranks[a], ranks[b]
            for i, j in combinations(range(len(ra)), 2):
                rel_a, rel_b = _relation(ra, i, j), _relation(rb, i, j)
                c["pairs"] += 1
                c["same"] += rel_a == rel_b
                if rel_a and rel_b:
                    c["strict"] += 1
                    c["agree"] += rel_a == rel_b
    total = sum(pairs.values(), Counter())

    return {
        "records": len(records),
        "ranked": sum(c["ranked"] for c in per_labeler.values()),
        "skipped": sum(c["skipped"] for c in per_labeler.values()),
        "tasks": len({json.dumps([r.get("prompt"), r["responses"]], sort_keys=True) for r in records}),
        "tasks_ranked_by_2_or_more": sum(1 for ranks in by_task.values() if len(ranks) >= 2),
        "labelers": {
            name: {"ranked": c["ranked"], "skipped": c["skipped"],
                   "flags": {f: c[f"flag:{f}"] for f in FLAGS if c[f"flag:{f}"]}}
            for name, c in sorted(per_labeler.items())
        },
        "flags": {f: flag_counts[f] for f in FLAGS} | {f: n for f, n in flag_counts.items() if f not in FLAGS},
        **_agreement(total),
        "by_labeler_pair": [
            {"labelers": [a, b], "tasks": c["tasks"], **_agreement(c)}
            for (a, b), c in sorted(pairs.items())
        ],
    }


def format_stats(stats: dict[str, Any], path: str) -> str:
    """The stats as a few lines of text for the terminal."""

    def pct(n: int, d: int) -> str:
        return f"{n / d:.1%} ({n}/{d})" if d else "n/a"

    lines = [f"{path}: {stats['records']} labels ({stats['ranked']} ranked, {stats['skipped']} skipped) of "
             f"{stats['tasks']} tasks by {len(stats['labelers'])} labeler(s)"]
    width = max([7, *(len(n) for n in stats["labelers"])])
    lines.append(f"  {'labeler':<{width}}  ranked  skipped  flags")
    for name, c in stats["labelers"].items():
        flags = ", ".join(f"{f} {n}" for f, n in c["flags"].items()) or "-"
        lines.append(f"  {name:<{width}}  {c['ranked']:>6}  {c['skipped']:>7}  {flags}")
    lines.append("flags: " + ", ".join(f"{f} {n}" for f, n in stats["flags"].items()))
    lines.append(f"tasks ranked by 2+ labelers: {stats['tasks_ranked_by_2_or_more']}")
    by_pair = stats["by_labeler_pair"]
    if by_pair:
        lines.append("agreement over response pairs both labelers ranked (InstructGPT: ~73%):")
        rows = [(stats, "all labeler pairs")] if len(by_pair) > 1 else []
        for p, name in rows + [(p, " vs ".join(p["labelers"])) for p in by_pair]:
            lines.append(f"  {name}: {pct(p['agreeing_pairs'], p['strict_pairs'])} where both gave an order; "
                         f"{pct(p['same_answer_pairs'], p['compared_pairs'])} counting a tie as an answer")
    else:
        lines.append("agreement: n/a (no task was ranked by two labelers)")
    return "\n".join(lines)
