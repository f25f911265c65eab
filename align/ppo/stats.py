"""Per-step statistics (alpaca_farm / TRL names) and where they go: stats.jsonl, the trackers, samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from align.jsonl import iter_jsonl
from align.ppo.queries import last_user_message
from align.ppo.rollout import Rollouts
from align.ppo.update import Advantages
from align.rl import masked_mean
from align.trackers import Trackers


def record_step_stats(r: Rollouts, adv: Advantages, update: dict[str, float], kl_coef: float) -> dict[str, float]:
    """What happened in one step. Sequence-level quantities are per-response sums, then batch means."""
    mask = r.response_mask.float()
    kl_per_seq = (adv.kl * mask).sum(dim=1)
    stats = {
        "objective/kl": float(kl_per_seq.mean()),
        "objective/kl_coef": kl_coef,
        "objective/rlhf_reward": float((r.scores - kl_coef * kl_per_seq).mean()),
        "objective/scores": float(r.scores.mean()),
        "objective/scores_raw": float(r.raw_scores.mean()),
        "objective/scores_std": float(r.scores.std()) if len(r) > 1 else 0.0,
        "objective/entropy": float((-r.logprobs * mask).sum(dim=1).mean()),
        "val/returns_mean": float(masked_mean(adv.returns, r.response_mask)),
        "tokens/response_len_mean": float(mask.sum(dim=1).mean()),
        "eos/fraction": float(r.has_eos.float().mean()),
        "val/advantages_whitened": float(adv.whitened),
    }
    if r.values is not None:
        stats["val/values_mean"] = float(masked_mean(r.values, r.response_mask))
    else:  # critic-free: how many query groups carried no signal (all samples scored the same)
        stats["objective/flat_groups"] = adv.flat_groups
    if r.gold is not None:
        stats["objective/gold"] = float(r.gold.mean())
    stats.update(r.seconds)
    stats.update(update)
    return stats


class StatsLog:
    """Append-only stats.jsonl / samples.jsonl; each step's stats also go to the trackers (train.report_to)."""

    def __init__(self, stage_dir: Path, trackers: Trackers) -> None:
        self.stats_file = stage_dir / "stats.jsonl"
        self.samples_file = stage_dir / "samples.jsonl"
        self.trackers = trackers

    def log(self, step: int, stats: dict[str, float]) -> None:
        with self.stats_file.open("a") as f:
            f.write(json.dumps({"step": step, **stats}) + "\n")
        self.trackers.log(step, stats)

    def samples(self, step: int, r: Rollouts, n: int) -> None:
        with self.samples_file.open("a") as f:
            for i in range(min(n, len(r))):
                rec: dict[str, Any] = {
                    "step": step, "prompt": last_user_message(r.queries[i]), "response": r.responses[i],
                    "score": float(r.scores[i]), "raw_score": float(r.raw_scores[i]), "eos": bool(r.has_eos[i]),
                }
                if r.gold is not None:
                    rec["gold"] = float(r.gold[i])
                f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        self.trackers.close()


def read_stats(path: Path) -> list[dict]:
    """Every step logged so far (a line cut off by a kill is not a step)."""
    return [rec for _, rec in iter_jsonl(path, torn_tail=True, missing_ok=True)]


def mean_of(values: list[float]) -> float | None:
    return float(torch.tensor(values).mean()) if values else None
