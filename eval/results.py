"""What the eval stage writes: every prompt's responses and scores, and the run's headline numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.eval.gold import GoldPrompt


def write_responses(path: Path, prompts: list[GoldPrompt], responses: dict[str, list[str]],
                    gold: dict[str, list[float]], rm_scores: dict[str, list[float]]) -> None:
    """responses.jsonl: per prompt {id, prompt, <policy>: {response, gold[, reward]}}."""
    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            row: dict[str, Any] = {"id": p.id, "prompt": p.prompt}
            for name in responses:
                row[name] = {"response": responses[name][i], "gold": gold[name][i]}
                if name in rm_scores:
                    row[name]["reward"] = rm_scores[name][i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def headline(policies: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """The run summary's numbers: the last policy (usually the most aligned one) against the baseline."""
    last = list(policies)[-1]
    entry = policies[last]
    out = {"gold_score": entry["gold_score"], "strict_accuracy": entry["strict_accuracy"]}
    if "kl" in entry:
        out["kl"] = entry["kl"]
    if last != baseline:
        out["win_rate"] = entry["win_rate_vs_" + baseline]
        out["gold_gain_vs_baseline"] = entry["gold_gain"]["gain"]
        out["gold_gain_ci95"] = [entry["gold_gain"]["ci_low"], entry["gold_gain"]["ci_high"]]
    return out
