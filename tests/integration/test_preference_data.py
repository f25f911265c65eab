"""Preference data in the dpo and reward stages on tiny-llama: multi-turn HH responses reach TRL's DPO/KTO
tokenisation as real chat turns; unusable records get one max_bad_records verdict in both stages; duplicate
records are dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.errors import AlignError
from align.stages import StageContext, dpo, reward

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = "\n\nHuman: Tell me about the cat.\n\nAssistant: "
EARLY = {"chosen": SHARED + "It sleeps.\n\nHuman: More?\n\nAssistant: It is excellent.",
         "rejected": SHARED + "No.\n\nHuman: Please?\n\nAssistant: Still no."}
UNUSABLE = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"}


def hh_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ctx_for(stage_dir: Path) -> StageContext:
    stage_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(name="dpo", stage_dir=stage_dir, run_dir=stage_dir.parent, seed=0, upstream={})


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_multi_turn_responses_are_tokenised_as_chat_turns(tmp_path, tiny_model_dir, method):
    rows = [{"chosen": f"{SHARED}The cat sat {i}.", "rejected": f"{SHARED}No {i}."} for i in range(3)] + [EARLY]
    cfg = dpo.Config.model_validate({
        "model": "tiny-llama", "data": str(hh_file(tmp_path / "hh.jsonl", rows)), "eval_fraction": 0.0,
        "method": method, "train": {"max_steps": 1, "batch_size": 2, "max_length": 128, "report_to": ["none"]}})
    trainer, _ = dpo.build_trainer(cfg, ctx_for(tmp_path / "dpo"))
    tok = trainer.processing_class
    keys = ("chosen_ids", "rejected_ids") if method == "dpo" else ("completion_ids",)
    texts = [tok.decode(row[k]) for row in trainer.train_dataset for k in keys]
    assert not any("Human:" in t or "Assistant:" in t for t in texts)
    # the chosen 3-turn response: the user's "More?" is its own user turn between two assistant turns
    assert any("It sleeps.<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\nIt is excellent."
               in t for t in texts)


def test_dpo_skips_unusable_records_as_the_reward_stage_does_and_counts_them(tmp_path):
    rows = [{"chosen": f"{SHARED}The cat excellent sat {i}.", "rejected": f"{SHARED}The cat sat {i}."}
            for i in range(6)]
    data = hh_file(tmp_path / "hh.jsonl", [*rows, rows[0], EARLY, UNUSABLE])  # rows[0] twice: a duplicate record
    base = {"model": "tiny-llama", "data": str(data), "eval_fraction": 0.0}
    for stage in (dpo, reward):  # the same default (1%): 1 bad record of 9 is too many for both
        assert stage.Config.model_validate(base).max_bad_records == 0.01
    with pytest.raises(AlignError, match=rf"1 of 9 records are unusable.*{data.name}:9: "):
        dpo.load_rows(dpo.Config.model_validate(base), ctx_for(tmp_path / "dpo"))
    train_rows, _, info = dpo.load_rows(dpo.Config.model_validate({**base, "max_bad_records": 1}),
                                        ctx_for(tmp_path / "dpo"))
    assert (info["records"], info["hh_split_early"], info["bad_records"]) == (8, 1, 1)
    assert info["bad_record_examples"][0].startswith(f"{data}:9: ")
    assert info["duplicate_pairs"] == 1 and len(train_rows) == 7


def test_reward_stage_counts_duplicate_pairs_and_bad_records_like_dpo(tmp_path, caplog):
    rows = [{"chosen": f"{SHARED}The cat excellent sat {i}.", "rejected": f"{SHARED}The cat sat {i}."}
            for i in range(6)]
    data = hh_file(tmp_path / "hh.jsonl", [*rows, rows[0], EARLY, UNUSABLE])
    cfg = reward.Config.model_validate({
        "model": "tiny-llama", "data": str(data), "eval_fraction": 0.0, "max_bad_records": 1,
        "train": {"lr": 1e-3, "max_steps": 1, "batch_size": 8, "max_length": 64, "save_steps": 100,
                  "report_to": ["none"]}})
    ctx = StageContext(name="reward", stage_dir=tmp_path / "reward", run_dir=tmp_path, seed=0, upstream={})
    ctx.stage_dir.mkdir()
    with caplog.at_level("INFO", logger="align"):
        m = reward.run(cfg, ctx).metrics
    assert (m["records"], m["hh_split_early"], m["bad_records"], m["duplicate_pairs"]) == (8, 1, 1, 1)
    assert m["train_pairs"] == 7
    assert "dropped 1 duplicate pairs" in caplog.text and "skipped 1 unusable records" in caplog.text
