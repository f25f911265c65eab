"""`align report` on a small synthetic run folder: the answer first, one section per stage, raw tables folded,
short series as numbers, and the html checked in a real browser (skipped without chromium, see conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from align.report import FEW_POINTS_NOTE, write_report

STAGES = ["self_instruct", "sft", "rank", "reward", "ppo", "eval"]
HOSTILE = "<script>alert(1)</script></details><details open><summary>x</summary>"


def gain(value: float, low: float, high: float, n: int = 4) -> dict:
    return {"n": n, "gain": value, "ci_low": low, "ci_high": high, "stderr": 0.05, "p_not_positive": 0.0}


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(run: Path) -> Path:
    """A run folder as `align run` leaves it, small: every stage's metrics and the files the report reads."""
    write(run / "summary.json", [{"name": s, "status": "skipped" if s == "self_instruct" else "ran"} for s in STAGES])
    write(run / "self_instruct" / "metrics.json", {"kept": 3, "target": 3, "raw_generations": 9, "teacher_calls": 2,
                                                   "dropped/near_duplicate": 5, "unique_verbs": 2, "seconds": 4.0})
    write_jsonl(run / "self_instruct" / "chat_data.jsonl", [{"messages": [
        {"role": "user", "content": f"instruction {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(3)])
    # three SFT steps: too few points for a plot
    write(run / "sft" / "metrics.json", {"steps": 3, "examples": 6, "first_loss": 2.0, "last_loss": 1.5, "seconds": 3.2})
    write(run / "sft" / "loss_history.json", [[1, 2.0], [2, 1.7], [3, 1.5]])
    write(run / "rank" / "metrics.json", {"rankings": 8, "k": 4, "judge": "gold", "informative": 7, "all_tied": 1,
                                          "gold_mean": 0.4, "gold_best_mean": 0.6, "seconds": 20.0})
    write_jsonl(run / "rank" / "rankings.jsonl", [{"prompt": "p", "responses": ["a", "b", "c", "d"],
                                                   "ranking": [[0], [1, 2], [3]]}])
    write(run / "reward" / "metrics.json", {
        "heldout_accuracy": 0.65, "heldout_accuracy_ci": [0.55, 0.75], "heldout_pairs": 60, "heldout_prompts": 10,
        "accuracy": 0.9, "accuracy_by_k": {"4": 0.65}, "loss": "pairwise", "seconds": 30.0})
    write(run / "reward" / "loss_history.json", [[i, 0.7 - 0.04 * i] for i in range(1, 13)])
    write(run / "ppo" / "metrics.json", {"steps": 8, "advantage": "rloo", "first_score": 0.1, "last_score": 0.8,
                                         "first_gold": 0.3, "last_gold": 0.35, "final_kl": 0.2, "seconds": 60.0})
    write_jsonl(run / "ppo" / "stats.jsonl", [
        {"step": i, "objective/scores": 0.1 * i, "objective/gold": 0.3 + 0.01 * i, "objective/kl": 0.02 * i,
         "objective/rlhf_reward": 0.08 * i, "tokens/response_len_mean": 20 + i} for i in range(1, 9)])
    write_jsonl(run / "ppo" / "samples.jsonl", [{"step": 8, "prompt": "say hi", "response": HOSTILE, "score": 1.0}])
    common = {"compliance": 0.5, "strict_accuracy": 0.25, "degenerate_share": 0.0, "distinct_1": 0.7,
              "distinct_2": 0.85, "distinct_3": 0.9, "on_topic_cosine": 0.6, "topic_recall": 0.5, "words_mean": 30.0,
              "ifeval_prompts": 4, "ifeval_prompt_loose": 0.5, "ifeval_instruction_loose": 0.7}
    policies = {
        "sft": {**common, "gold_score": 0.4, "ifeval_prompt_strict": 0.5, "ifeval_instruction_strict": 4 / 6, "kl": 0.0},
        "ppo": {**common, "gold_score": 0.6, "degenerate_share": 0.3, "ifeval_prompt_strict": 0.25,
                "ifeval_instruction_strict": 0.5, "kl": 0.8, "gold_gain": gain(0.2, 0.1, 0.3),
                "degenerate_change": gain(0.3, 0.1, 0.5), "on_topic_change": gain(-0.05, -0.1, 0.02),
                "ifeval_prompt_strict_change": gain(-0.25, -0.75, 0.25)},
        "dpo": {**common, "gold_score": 0.42, "ifeval_prompt_strict": 0.5, "ifeval_instruction_strict": 4 / 6,
                "kl": 0.1, "gold_gain": gain(0.02, -0.05, 0.09)},
    }
    write(run / "eval" / "metrics.json", {"n_prompts": 4, "baseline": "sft", "judge": "gold", "seconds": 9.0,
                                          "policies": policies, "fixed_strings": {"Ok.": {
                                              "gold_score": 0.0, "compliance": 0.39, "words_mean": 1.0,
                                              "ifeval_prompt_strict": 0.25, "ifeval_instruction_strict": 0.5}}})
    write_jsonl(run / "eval" / "responses.jsonl", [
        {"id": f"p{i}", "prompt": f"prompt {i}", "sft": {"response": f"sft answer {i}", "gold": 0.4, "reward": 0.1},
         "ppo": {"response": "[1] [1] [2]" if i == 2 else f"ppo answer {i}", "gold": [0.9, 0.7, 0.1, 0.7][i],
                 "reward": float(i)},
         "dpo": {"response": f"dpo answer {i}", "gold": 0.42, "reward": 0.2}} for i in range(4)])
    flags = {"sft": [[True], [True, False], [False], [True, True]], "ppo": [[True], [False, False], [False], [True, False]],
             "dpo": [[True], [True, False], [False], [True, True]]}
    write_jsonl(run / "eval" / "ifeval_responses.jsonl", [
        {"key": i, "prompt": f"ifeval {i}", **{n: {"response": "r", "strict": f[i], "loose": f[i]}
                                               for n, f in flags.items()}} for i in range(4)])
    return run


def _outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def test_the_result_comes_first_then_one_section_per_stage(tmp_path):
    md, _ = write_report(make_run(tmp_path / "run"))
    text = md.read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == ["Result: each policy against sft", *STAGES]
    # each stage opens with a line of its key numbers and how it ran
    assert "held-out accuracy 0.650 [0.550, 0.750] on 60 pairs (10 prompts)" in text
    assert "kept 3 of 9 generated instructions (target 3)" in text and "reused from an earlier run (took 4.0 s)" in text
    assert "reward-model score 0.100 → 0.800" in text and "ran in 60.0 s" in text
    # every raw metric table is folded away: "| metric |" only inside <details>
    depth, tables = 0, 0
    for line in _outside_fences(text):
        depth += line.startswith("<details>") - line.startswith("</details>")
        assert depth in (0, 1), line
        if line.startswith("| metric |"):
            tables += 1
            assert depth == 1, "a raw metric table outside <details>"
    assert depth == 0 and tables == len(STAGES) + 1  # eval has a second table, one column per policy


def test_a_short_series_becomes_numbers_and_a_long_one_a_plot(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "plots").mkdir()
    (run / "plots" / "eval_gold.png").write_bytes(b"an earlier report's plot")
    md, _ = write_report(run)
    text = md.read_text()
    assert "- training loss: 2.000 → 1.500 over 3 steps (logged at steps 1, 2, 3)" in text
    assert FEW_POINTS_NOTE in text and text.count(FEW_POINTS_NOTE) == 1  # only sft is short
    plots = {p.name for p in (run / "plots").glob("*.png")}
    # 12 reward losses, 8 PPO steps, two policies' gains: plots; one K's accuracy is the number above, not a bar
    assert plots == {"reward_loss.png", "ppo_0.png", "ppo_1.png", "ppo_2.png", "ppo_3.png", "eval_gain.png"}
    assert all(f"(plots/{name})" in text for name in plots) and all((run / "plots" / n).stat().st_size > 2000
                                                                   for n in plots)


def test_the_result_reads_each_policy_against_the_baseline(tmp_path):
    md, _ = write_report(make_run(tmp_path / "run"))
    text = md.read_text()
    result = text[:text.index("## self_instruct")]
    # a verdict per policy; a guard that moved the wrong way is named next to the gain
    assert "- **ppo** against sft: gold +0.200 [+0.100, +0.300] on 4 prompts: **better**" in result
    assert "degenerate share +0.300 [+0.100, +0.500] (worse)" in result and "read the side-by-side" in result
    assert "on-topic" not in result.split("- **ppo**")[1].split("\n")[0]  # its interval covers 0: not listed
    assert "- **dpo** against sft: gold +0.020 [-0.050, +0.090] on 4 prompts: **no clear change**" in result
    # absolute gold with a bootstrap interval over prompts (sft scored 0.4 on every prompt: a zero-width one)
    assert "| sft | 0.400 [0.400, 0.400] | 0.500 | 0.250 | 0.000 | 0.600 | 0.500 | 0.70/0.85/0.90 | 30.0 |" in result
    assert "| fixed answer `Ok.` | 0.000 | 0.390 |" in result
    # IFEval with intervals from the per-prompt results: sft passes 2 of 4 prompts, 4 of 6 instructions
    row = next(line for line in result.splitlines() if line.startswith("| sft | 0.500 ["))
    low, high = map(float, re.search(r"0\.500 \[([\d.]+), ([\d.]+)\]", row).groups())
    assert low < 0.5 < high and "0.667 [" in row
    assert "| ppo | 0.250 [" in result and "-0.250 [-0.750, +0.250]" in result
    # side by side: p2 is ppo's lowest-gold and highest-reward prompt, shown once, next to sft's answer
    assert result.count("**`p2`** (lowest gold for ppo)") == 1 and "[1] [1] [2]" in result and "sft answer 2" in result


def test_html_renders_folded_markdown_and_keeps_model_output_inert(tmp_path):
    _, html = write_report(make_run(tmp_path / "run"))
    page = html.read_text()
    assert page.count("<details>") == page.count("</details>") >= 8 and "<details open" not in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/details&gt;" in page
    # markdown inside a folded block is rendered (a table, not pipes), and the block starts closed
    assert re.search(r"<details>\s*<summary>All sft metrics</summary>\s*<table>", page)
    assert re.search(r'<h2 id="result-each-policy-against-sft">', page)  # the "Sections" links land somewhere


def test_report_in_a_browser(page, tmp_path):
    """The headline is the first section, folded blocks start closed and open on click, every plot loads."""
    from playwright.sync_api import expect

    _, html = write_report(make_run(tmp_path / "run"))
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    assert page.locator("h2").first.inner_text().startswith("Result: each policy against sft")
    assert page.locator("h2").all_inner_texts()[1:] == STAGES
    assert page.locator("details").count() >= 8
    assert page.eval_on_selector_all("details", "els => els.every(e => !e.open)")
    folded = page.locator("details", has=page.locator("summary", has_text="All sft metrics"))
    table = folded.locator("table")
    expect(table).to_be_hidden()
    folded.locator("summary").click()
    expect(table).to_be_visible()
    assert folded.evaluate("e => e.open") and "first_loss" in table.inner_text()
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src])")
    assert len(images) == 6 and all(done and width > 0 for done, width, _ in images), images
    # model output is text: the hostile sample did not add an element or run a script
    assert page.evaluate("() => document.querySelectorAll('script').length") == 0
    assert page.errors == []


def test_moving_average_smooths_long_series_only():
    from align.report_plots import moving_average

    assert moving_average([1.0, 2.0]) is None  # too short to have a trend worth drawing
    ys = [0.0] * 8 + [1.0] * 8  # a step in the middle; 16 points -> a 3-point trailing window
    smooth = moving_average(ys)
    assert smooth is not None and len(smooth) == 16
    assert smooth[7] == 0.0 and smooth[10] == 1.0
    assert abs(smooth[8] - 1 / 3) < 1e-9 and abs(smooth[9] - 2 / 3) < 1e-9
