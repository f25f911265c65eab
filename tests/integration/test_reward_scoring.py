"""The reward stage's scoring after training is sized to what it reports: training accuracy on a sample of
prompts (accuracy_pairs), normalisation on a sample of responses (normalize_samples), held-out on all."""

from __future__ import annotations

import json

import pytest

from align.preferences.rankings import PromptGroup
from align.stages import StageContext
from align.stages.reward import Config, run, scoring_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def _group(k: int) -> PromptGroup:
    return PromptGroup([{"role": "user", "content": "q"}], [str(i) for i in range(k)],
                       [(i, j) for i in range(k) for j in range(i + 1, k)], k)


def test_scoring_sample_is_the_shortest_seeded_prefix_meeting_both_minimums():
    groups = [_group(k) for k in (2, 3, 4, 2, 3, 4, 2, 3)]  # pairs 1, 3, 6, 1, 3, 6, 1, 3
    full = scoring_sample(groups, 10, 12, seed=0)
    assert sum(len(groups[i].pairs) for i in full) >= 10 and sum(groups[i].k for i in full) >= 12
    shorter = full[:-1]
    assert sum(len(groups[i].pairs) for i in shorter) < 10 or sum(groups[i].k for i in shorter) < 12
    few = scoring_sample(groups, 4, 0, seed=0)
    assert few == full[: len(few)] and len(few) < len(full)  # a smaller sample is a prefix: scored once
    assert scoring_sample(groups, None, 12, seed=0) == list(range(8)) == scoring_sample(groups, 10, None, seed=0)
    assert scoring_sample(groups, 10, 12, seed=0) == full and scoring_sample(groups, 10, 12, seed=1) != full


def test_stage_scores_a_sample_of_training_pairs_and_reports_it(tmp_path, caplog):
    rows = [{"prompt": f"Tell me about item {i}.", "chosen": f"excellent answer {i}", "rejected": f"answer {i}"}
            for i in range(60)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = Config.model_validate({
        "model": "tiny-llama", "data": str(data), "eval_fraction": 0.2, "accuracy_pairs": 10, "normalize_samples": 30,
        "train": {"lr": 1e-3, "max_steps": 1, "batch_size": 8, "max_length": 32, "save_steps": 100,
                  "report_to": ["none"]}})
    ctx = StageContext(name="reward", stage_dir=tmp_path / "reward", run_dir=tmp_path, seed=0, upstream={})
    ctx.stage_dir.mkdir()
    with caplog.at_level("INFO", logger="align"):
        m = run(cfg, ctx).metrics
    assert m["train_pairs"] == 48 and m["accuracy_pairs"] == 10  # one pair per prompt: exactly 10 prompts
    assert m["normalization_responses"] == 30  # 15 prompts x 2 responses: the accuracy sample plus 5 more
    assert m["heldout_pairs"] == 12  # held-out accuracy on every held-out pair
    assert m["scoring_seconds"] >= 0 and "scored 10 of 48 training pairs for accuracy and 30 responses" in caplog.text
    norm = json.loads((tmp_path / "reward" / "model" / "reward_normalization.json").read_text())
    assert norm["n"] == 30
