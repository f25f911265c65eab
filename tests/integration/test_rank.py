"""Rank stage on tiny-llama: samples K responses, ranks them with a gold function / LLM judge, resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.data import DataConfig
from align.errors import AlignError
from align.preferences.judges import ranking_from_scores
from align.preferences.rankings import read_rankings
from align.stages import StageContext
from align.stages.rank import Config, load_prompts, run

GOLD = '''
from pathlib import Path

def score(prompt, response):
    """Toy gold: share of letters among characters; raises on 'prompt 4' while the flag file exists."""
    if prompt == "prompt 4" and Path(__file__).with_name("fail.flag").exists():
        raise RuntimeError("killed")
    return sum(c.isalpha() for c in response) / max(1, len(response))


def tied_on_even(prompt, response):
    """Deterministic judge: every response to an even-numbered prompt scores 0 (all tied); odd prompts get a
    checksum of the text (distinct responses, distinct scores). Raises on 'prompt 5' while the flag exists."""
    import zlib

    number = int(prompt.split()[-1])
    if number == 5 and Path(__file__).with_name("fail.flag").exists():
        raise RuntimeError("killed")
    return 0.0 if number % 2 == 0 else float(zlib.crc32(response.encode()))
'''


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    (tmp_path / "gold.py").write_text(GOLD)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"prompt {i}"}) for i in range(6)) + "\n")
    return tmp_path, prompts


def settings(root: Path, prompts: Path, **extra) -> dict:
    return {"prompts": str(prompts), "policy": "tiny-llama", "k": 3, "max_new_tokens": 8, "batch_size": 2,
            "judge": {"type": "gold", "function": f"{root / 'gold.py'}:score"}, **extra}


def run_stage(stage_dir: Path, values: dict, seed: int = 0):
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(name="rank", stage_dir=stage_dir, run_dir=stage_dir.parent, seed=seed, upstream={})
    return run(Config.model_validate(values), ctx)


def test_gold_judge_end_to_end_writes_valid_rankings(setup):
    root, prompts = setup
    result = run_stage(root / "rank", settings(root, prompts))
    path = Path(result.outputs["rankings"])
    assert path.name == "rankings.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["prompt"] for r in lines] == [f"prompt {i}" for i in range(6)]
    for row in lines:
        assert len(row["responses"]) == 3 and all(isinstance(r, str) for r in row["responses"])
        assert row["ranking"] == ranking_from_scores(row["scores"])  # best first, ties grouped
        expected = [sum(c.isalpha() for c in r) / max(1, len(r)) for r in row["responses"]]
        assert row["scores"] == pytest.approx(expected)
    records = read_rankings(path)  # the reader accepts what the stage writes
    assert len(records) == 6 and all(r.k == 3 for r in records)
    assert result.metrics["rankings"] == 6 and result.metrics["k"] == 3 and result.metrics["judge"] == "gold"


def test_killed_rank_stage_resumes_without_duplicates(setup):
    root, prompts = setup
    (root / "fail.flag").write_text("")
    stage_dir = root / "rank"
    with pytest.raises(AlignError, match="RuntimeError: killed"):
        run_stage(stage_dir, settings(root, prompts))
    out = stage_dir / "rankings.jsonl"
    done = out.read_text().splitlines()
    assert len(done) == 4  # batches [0, 1] and [2, 3] written, [4, 5] failed
    with out.open("a") as fh:  # and a line cut short by the kill
        fh.write('{"prompt": "prompt 4", "respon')
    (root / "fail.flag").unlink()

    result = run_stage(stage_dir, settings(root, prompts))
    lines = out.read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == [f"prompt {i}" for i in range(6)]
    assert lines[:4] == done
    assert result.metrics["resumed_prompts"] == 4 and result.metrics["written_now"] == 2

    fresh = run_stage(root / "fresh", settings(root, prompts))  # same seeds per batch: same samples
    assert Path(fresh.outputs["rankings"]).read_text().splitlines() == lines


def informative_settings(root: Path, prompts: Path, **extra) -> dict:
    return settings(root, prompts, judge={"type": "gold", "function": f"{root / 'gold.py'}:tied_on_even"}, **extra)


def ten_prompts(root: Path) -> Path:
    path = root / "ten.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"prompt {i}"}) for i in range(10)) + "\n")
    return path


def test_rank_draws_prompts_until_enough_are_informative(setup):
    root, _ = setup
    prompts = ten_prompts(root)
    result = run_stage(root / "rank", informative_settings(root, prompts, informative=3))
    rows = [json.loads(line) for line in Path(result.outputs["rankings"]).read_text().splitlines()]
    # prompts 0..5 drawn: 1, 3, 5 informative, 0, 2, 4 all tied (written too); it stops at the third informative
    assert [r["prompt"] for r in rows] == [f"prompt {i}" for i in range(6)]
    assert [len(r["ranking"]) > 1 for r in rows] == [False, True] * 3
    assert [r["ranking"] for r in rows[::2]] == [[[0, 1, 2]]] * 3
    m = result.metrics
    assert (m["drawn"], m["informative"], m["all_tied"], m["informative_target_met"]) == (6, 3, 3, True)

    every = run_stage(root / "every", informative_settings(root, prompts))  # no target: every prompt
    assert (every.metrics["drawn"], every.metrics["informative"], every.metrics["all_tied"]) == (10, 5, 5)
    assert every.metrics["informative_target_met"] is None


def test_rank_informative_cap_stops_with_a_clear_message(setup, caplog):
    root, _ = setup
    prompts = ten_prompts(root)
    values = informative_settings(root, prompts, informative=4)
    values["prompts"] = {"path": str(prompts), "max_samples": 6}  # the cap on draws
    with caplog.at_level("WARNING", logger="align.rank"):
        result = run_stage(root / "rank", values)
    m = result.metrics
    assert (m["drawn"], m["informative"], m["all_tied"], m["informative_target_met"]) == (6, 3, 3, False)
    assert "only 3 informative rankings of the 4 asked for" in caplog.text
    assert "3 were all tied" in caplog.text and "rank.prompts.max_samples" in caplog.text


def test_killed_informative_rank_resumes_exactly(setup):
    root, _ = setup
    prompts = ten_prompts(root)
    values = informative_settings(root, prompts, informative=4)
    (root / "fail.flag").write_text("")
    stage_dir = root / "rank"
    with pytest.raises(AlignError, match="RuntimeError: killed"):
        run_stage(stage_dir, values)
    out = stage_dir / "rankings.jsonl"
    assert len(out.read_text().splitlines()) == 4  # batches [0, 1], [2, 3]; [4, 5] failed
    (root / "fail.flag").unlink()

    result = run_stage(stage_dir, values)
    lines = out.read_text().splitlines()
    fresh = run_stage(root / "fresh", values)
    assert Path(fresh.outputs["rankings"]).read_text().splitlines() == lines  # nothing lost or duplicated
    assert [json.loads(line)["prompt"] for line in lines] == [f"prompt {i}" for i in range(8)]
    assert (result.metrics["resumed_prompts"], result.metrics["written_now"]) == (4, 4)
    assert (result.metrics["drawn"], result.metrics["informative"]) == (8, 4)

    again = run_stage(stage_dir, values)  # already complete: nothing drawn
    assert out.read_text().splitlines() == lines and again.metrics["written_now"] == 0
    more = run_stage(stage_dir, {**values, "informative": 5})  # a larger target continues where it stopped
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [f"prompt {i}" for i in range(10)]
    assert (more.metrics["written_now"], more.metrics["informative"]) == (2, 5)


def test_human_judge_writes_tasks_and_stops(setup):
    root, prompts = setup
    values = settings(root, prompts, judge={"type": "human"}, k=2)
    with pytest.raises(AlignError) as err:
        run_stage(root / "rank", values)
    tasks = root / "rank" / "tasks.jsonl"
    assert str(tasks) in str(err.value) and "wrote 6 labeling tasks" in str(err.value)
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]) == {"prompt", "responses"} and len(rows[0]["responses"]) == 2
    assert not (root / "rank" / "rankings.jsonl").exists()


def test_llm_judge_with_a_local_teacher(setup):
    root, prompts = setup
    values = {**settings(root, prompts), "prompts": {"path": str(prompts), "max_samples": 2}, "k": 2,
              "judge": {"type": "llm", "teacher": "tiny-llama", "max_tokens": 2}}
    result = run_stage(root / "rank", values)
    assert result.metrics["judge_calls"] == 2 * 2  # 2 prompts × 1 pair × both orders
    records = read_rankings(result.outputs["rankings"])
    assert len(records) == 2 and all(sorted(i for g in r.ranking for i in g) == [0, 1] for r in records)


def test_load_prompts_formats_filter_and_duplicates(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [
        {"prompt": "plain prompt", "split": "train"},
        {"instruction": "Add.", "input": "2 and 3", "output": "5", "split": "train"},
        {"prompt": "plain prompt", "split": "train"},
        {"prompt": "held out", "split": "heldout"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "split": "train"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    prompts = load_prompts(DataConfig(path=str(path), where={"split": "train"}))
    assert prompts == [[{"role": "user", "content": "plain prompt"}], [{"role": "user", "content": "Add.\n\n2 and 3"}],
                       [{"role": "user", "content": "hi"}]]
    assert len(load_prompts(DataConfig(path=str(path)))) == 4
    with pytest.raises(AlignError, match="no records with {'split': 'test'}"):
        load_prompts(DataConfig(path=str(path), where={"split": "test"}))


def test_bad_settings_fail_before_loading_the_policy(setup):
    root, prompts = setup
    with pytest.raises(AlignError, match="has no attribute 'nope'"):
        judge = {"type": "gold", "function": "align.preferences.judges:nope"}
        run_stage(root / "a", settings(root, prompts, judge=judge))
    with pytest.raises(ValueError, match="less than or equal to 9"):
        Config.model_validate(settings(root, prompts, k=10))
    with pytest.raises(ValueError, match="greater than 0"):
        Config.model_validate(settings(root, prompts, temperature=0))
    with pytest.raises(AlignError, match="informative needs a gold or llm judge"):
        run_stage(root / "b", settings(root, prompts, judge={"type": "human"}, informative=2))


def test_an_adapter_policy_samples_merged_with_the_unmerged_samples(setup, tiny_model_dir, monkeypatch, caplog):
    """The rank stage folds a LoRA policy into its base for sampling (align.lora_merge): same seeds, same
    samples as the adapter run unmerged, only faster."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import align.lora_merge

    root, prompts = setup
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    adapter = root / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)

    with caplog.at_level("INFO", logger="align.rank"):
        merged = run_stage(root / "merged", settings(root, prompts, policy=str(adapter)))
    assert "with the policy's LoRA merged into the base weights" in caplog.text
    monkeypatch.setattr(align.lora_merge, "lora_merged", lambda *a, **k: contextlib.nullcontext(False))
    unmerged = run_stage(root / "unmerged", settings(root, prompts, policy=str(adapter)))
    rows = [[json.loads(line)["responses"] for line in Path(r.outputs["rankings"]).read_text().splitlines()]
            for r in (merged, unmerged)]
    assert rows[0] == rows[1]
    base = run_stage(root / "base", settings(root, prompts))  # the adapter really changes the samples
    assert [json.loads(line)["responses"] for line in Path(base.outputs["rankings"]).read_text().splitlines()] != rows[0]
