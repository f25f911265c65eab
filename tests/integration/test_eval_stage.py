"""The eval stage on tiny-llama: gold metrics, KL, win rates, lm-eval offline (the report: test_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.stages import StageContext
from align.stages.eval import Config, run

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "fixtures" / "lm_eval_tasks"


def test_eval_stage_gold_kl_winrate(tmp_path, tiny_model_dir):
    cfg = Config.model_validate({
        "policies": {"base": "tiny-llama", "same": tiny_model_dir},
        "num_prompts": 6, "max_new_tokens": 12, "reference": "tiny-llama", "judge": "gold",
    })
    result = run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))
    pol = result.metrics["policies"]
    assert 0.0 <= pol["base"]["gold_score"] <= 1.0
    # the same weights under two names: identical greedy outputs, zero KL, a 50% win rate (all ties)
    assert pol["same"]["gold_score"] == pol["base"]["gold_score"]
    # the reference's own weights: KL 0 by definition, no sampling (test_eval_kl.py covers the sampled estimate)
    assert pol["same"]["kl"] == 0.0 and pol["same"]["kl_samples"] == 0
    assert result.metrics["model_loads"] == 1  # one copy of the weights serves both names and the reference
    assert pol["same"]["win_rate_vs_base"] == 0.5
    # identical responses: a gain of exactly 0 with a zero-width interval, in metrics and headline
    gain = pol["same"]["gold_gain"]
    assert gain["n"] == 6 and gain["gain"] == gain["ci_low"] == gain["ci_high"] == 0.0
    assert result.metrics["gold_gain_ci95"] == [0.0, 0.0] and "gold_gain" not in pol["base"]
    rows = [json.loads(line) for line in Path(result.outputs["responses"]).read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["base"]["response"] == rows[0]["same"]["response"]
    assert {"gold", "compliance", "on_topic", "degenerate"} <= set(rows[0]["base"])
    # the gaming guards, for every policy, and their change from the baseline with a CI
    for key in ("degenerate_share", "distinct_3", "on_topic_cosine", "off_topic_share", "topic_recall", "compliance"):
        assert 0.0 <= pol["base"][key] <= 1.0 and pol["same"][key] == pol["base"][key], key
    assert pol["same"]["on_topic_change"]["gain"] == 0.0 and pol["same"]["degenerate_change"]["ci_high"] == 0.0
    # the trivial-answer rows: a fixed string answered to every prompt
    fixed = result.metrics["fixed_strings"]
    assert set(fixed) == {"Ok.", "Sure [name].", "[name] [place] *note* *tip* Ok."}
    assert all(row["gold_score"] < 0.2 and row["words_mean"] <= 7 for row in fixed.values())
    assert fixed["[name] [place] *note* *tip* Ok."]["compliance"] > fixed["Ok."]["compliance"] - 1e-9


def test_eval_stage_rejects_bad_baseline(tmp_path):
    from align.errors import AlignError

    cfg = Config.model_validate({"policies": {"a": "tiny-llama"}, "baseline": "b"})
    with pytest.raises(AlignError, match="baseline"):
        run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))


def test_lm_eval_offline_on_local_task(tmp_path, tiny_model_dir):
    pytest.importorskip("lm_eval")
    from align.eval.harness import LmEvalConfig, run_lm_eval

    results = run_lm_eval("tiny-llama", LmEvalConfig(tasks=["align_tiny_facts"], include_path=str(TASKS),
                                                      batch_size=4), tmp_path)
    acc = results["align_tiny_facts"]["acc,none"]
    assert 0.0 <= acc <= 1.0


def test_eval_stage_runs_ifeval_on_every_policy(tmp_path, tiny_model_dir):
    cfg = Config.model_validate({
        "policies": {"base": "tiny-llama", "same": tiny_model_dir}, "num_prompts": 3, "max_new_tokens": 8,
        "benchmarks": ["ifeval"], "ifeval": {"num_prompts": 5, "max_new_tokens": 8, "batch_size": 5},
        "fixed_strings": ["Ok."],
    })
    result = run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))
    pol = result.metrics["policies"]
    for key in ("ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_instruction_strict", "ifeval_instruction_loose"):
        assert 0.0 <= pol["base"][key] <= 1.0 and pol["same"][key] == pol["base"][key]
    assert pol["base"]["ifeval_prompts"] == 5
    change = pol["same"]["ifeval_prompt_strict_change"]
    assert change["n"] == 5 and change["gain"] == change["ci_low"] == change["ci_high"] == 0.0
    assert "ifeval_prompt_strict_change" not in pol["base"]
    from align.eval.ifeval import load_ifeval_prompts, trivial_baseline

    expected = trivial_baseline(load_ifeval_prompts(5), "Ok.").prompt_strict
    assert result.metrics["fixed_strings"]["Ok."]["ifeval_prompt_strict"] == expected
    rows = [json.loads(line) for line in Path(result.outputs["ifeval_responses"]).read_text().splitlines()]
    assert len(rows) == 5 and {"key", "instruction_id_list", "base", "same"} <= set(rows[0])
    assert len(rows[0]["base"]["strict"]) == len(rows[0]["instruction_id_list"])
