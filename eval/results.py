"""What the eval stage writes: every prompt's responses and scores, and the run's headline numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from align.eval.gold import GoldPrompt


def write_responses(path: Path, prompts: list[GoldPrompt], responses: dict[str, list[str]],
                    scores: dict[str, dict[str, list[float]]]) -> None:
    """responses.jsonl: per prompt {id, prompt, <policy>: {response, <score>: value, ...}}.

    scores: score name (gold, compliance, reward, ...) -> policy -> one value per prompt; a policy
    missing from a score (no reward model) just lacks that key.
    """
    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            row: dict[str, Any] = {"id": p.id, "prompt": p.prompt}
            for name in responses:
                row[name] = {"response": responses[name][i]}
                row[name].update({key: values[name][i] for key, values in scores.items() if name in values})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def headline(policies: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """The run summary's numbers: the last policy (usually the most aligned one) against the baseline."""
    last = list(policies)[-1]
    entry = policies[last]
    out = {"gold_score": entry["gold_score"], "strict_accuracy": entry["strict_accuracy"],
           "degenerate_share": entry["degenerate_share"], "on_topic_cosine": entry["on_topic_cosine"]}
    if "kl" in entry:
        out["kl"] = entry["kl"]
    if last != baseline:
        out["win_rate"] = entry["win_rate_vs_" + baseline]
        out["gold_gain_vs_baseline"] = entry["gold_gain"]["gain"]
        out["gold_gain_ci95"] = [entry["gold_gain"]["ci_low"], entry["gold_gain"]["ci_high"]]
    return out
