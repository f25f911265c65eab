"""The eval stage on tiny-llama: gold metrics, KL, win rates, lm-eval offline, report files."""

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


def test_report_files_and_plots(tmp_path):
    from align.report import write_report

    run = tmp_path / "run"
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "metrics.json").write_text(json.dumps({"last_loss": 1.2, "seconds": 3}))
    (run / "sft" / "loss_history.json").write_text(json.dumps([[1, 2.0], [2, 1.5], [3, 1.2]]))
    (run / "ppo").mkdir()
    (run / "ppo" / "metrics.json").write_text(json.dumps({"seconds": 5}))
    (run / "ppo" / "stats.jsonl").write_text("\n".join(json.dumps(
        {"step": i, "objective/scores": 0.1 * i, "objective/gold": 0.05 * i, "objective/kl": 0.01 * i})
        for i in range(5)) + "\n")
    (run / "ppo" / "samples.jsonl").write_text(json.dumps(
        {"step": 4, "query": "q", "response": "<script>alert(1)</script>", "score": 1.0}) + "\n")
    (run / "eval").mkdir()
    gain = {"n": 64, "gain": 0.12, "ci_low": 0.05, "ci_high": 0.19, "stderr": 0.035, "p_not_positive": 0.0}
    (run / "eval" / "metrics.json").write_text(json.dumps({"baseline": "sft", "policies": {
        "sft": {"gold_score": 0.3, "strict_accuracy": 0.1},
        "ppo": {"gold_score": 0.42, "strict_accuracy": 0.2, "gold_gain": gain, "strict_gain": gain}}}))
    md, html = write_report(run)
    text = md.read_text()
    assert "## sft" in text and "## ppo" in text and "plots/sft_loss.png" in text
    assert "| ppo | +0.120 [+0.050, +0.190] |" in text and "plots/eval_gain.png" in text
    pngs = sorted((run / "plots").glob("*.png"))
    assert len(pngs) >= 5 and all(p.stat().st_size > 2000 for p in pngs)
    page = html.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


def test_moving_average_smooths_long_series_only():
    from align.report import moving_average

    assert moving_average([1.0, 2.0]) is None  # too short to have a trend worth drawing
    ys = [0.0] * 8 + [1.0] * 8  # a step in the middle; 16 points -> a 3-point trailing window
    smooth = moving_average(ys)
    assert smooth is not None and len(smooth) == 16
    assert smooth[7] == 0.0 and smooth[10] == 1.0
    assert abs(smooth[8] - 1 / 3) < 1e-9 and abs(smooth[9] - 2 / 3) < 1e-9


def test_report_opens_with_the_result_guards_and_side_by_side(tmp_path):
    from align.report import write_report

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    gain = {"n": 3, "gain": 0.2, "ci_low": 0.1, "ci_high": 0.3, "stderr": 0.05, "p_not_positive": 0.0}
    drop = {"n": 3, "gain": -0.05, "ci_low": -0.1, "ci_high": 0.0, "stderr": 0.02, "p_not_positive": 1.0}
    (run / "eval" / "metrics.json").write_text(json.dumps({"baseline": "sft", "policies": {
        "sft": {"gold_score": 0.4, "compliance": 0.4, "degenerate_share": 0.04, "on_topic_cosine": 0.6},
        "ppo": {"gold_score": 0.6, "compliance": 0.7, "degenerate_share": 0.4, "on_topic_cosine": 0.38,
                "gold_gain": gain, "compliance_gain": gain, "degenerate_change": gain, "on_topic_change": drop}},
        "fixed_strings": {"Ok.": {"gold_score": 0.0, "compliance": 0.39, "degenerate_share": 0.0}}}))
    rows = [{"id": f"p{i}", "prompt": f"prompt {i}", "sft": {"response": f"sft answer {i}", "gold": 0.5, "reward": 0.1},
             "ppo": {"response": "[1] [1] [2]" if i == 2 else f"ppo answer {i}", "gold": 0.9 - 0.4 * i,
                     "reward": float(i)}} for i in range(3)]
    (run / "eval" / "responses.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    md, _ = write_report(run)
    text = md.read_text()
    result = text.index("## Result: each policy against sft")
    assert result < text.index("## eval")  # the answer comes before the per-stage sections
    assert "| ppo | +0.200 [+0.100, +0.300] | +0.200 [+0.100, +0.300] | +0.200 [+0.100, +0.300] | " \
           "-0.050 [-0.100, +0.000] | - |" in text
    assert '| fixed answer "Ok." | 0 | 0.39 |' in text
    # p2 is both the lowest-gold and the highest-reward response of ppo: shown once, next to sft's answer
    assert text.count("**p2** (lowest gold for ppo)") == 1 and "[1] [1] [2]" in text and "sft answer 2" in text


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
