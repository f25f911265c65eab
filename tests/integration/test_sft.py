"""SFT on tiny-llama: every adapter type learns, only responses carry loss, outputs load without align."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align.errors import AlignError
from align.stages import StageContext
from align.stages.sft import Config, build_trainer, run

REPO = Path(__file__).resolve().parents[2]
DATA = str(REPO / "examples" / "data" / "alpaca_tiny.json")


def make_cfg(adapter: dict, quantization: str = "none", **train) -> Config:
    settings = dict(lr=5e-3, max_steps=12, batch_size=4, max_length=192, logging_steps=1, save_steps=100,
                    report_to=["none"], warmup_ratio=0.0, lr_scheduler="constant")
    settings.update(train)
    return Config.model_validate({
        "model": {"name": "tiny-llama", "quantization": quantization},
        "data": DATA, "adapter": adapter, "train": settings,
    })


def ctx(tmp_path: Path) -> StageContext:
    return StageContext(name="sft", stage_dir=tmp_path, run_dir=tmp_path, seed=0, upstream={})


def mean_loss(trainer) -> float:
    return trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_loss"]


@pytest.mark.parametrize(
    "adapter,quant,lr",
    [({"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "none", 5e-3),
     ({"type": "dora", "r": 8, "alpha": 16, "dropout": 0.0}, "none", 5e-3),
     ({"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "4bit", 5e-3),
     ({"type": "full"}, "none", 1e-3),
     ({"type": "prefix", "num_virtual_tokens": 4}, "none", 5e-2)],
    ids=["lora", "dora", "qlora", "full", "prefix"],
)
def test_training_lowers_loss_and_changes_every_trainable_parameter(tmp_path, tiny_model_dir, adapter, quant, lr):
    if quant == "4bit":
        pytest.importorskip("bitsandbytes")
    trainer, _ = build_trainer(make_cfg(adapter, quant, lr=lr), ctx(tmp_path))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before, "nothing to train"
    loss_before = mean_loss(trainer)
    trainer.train()
    loss_after = mean_loss(trainer)
    assert loss_after < loss_before - 0.01, (loss_before, loss_after)
    params = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, params[n].detach())]
    assert not unchanged, f"parameters not updated: {unchanged[:5]}"


def test_loss_only_on_response_tokens(tmp_path, tiny_model_dir):
    trainer, info = build_trainer(make_cfg({"type": "lora"}), ctx(tmp_path))
    tok = info["tokenizer"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    data = json.loads(Path(DATA).read_text())
    for row in range(3):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        kept = labels != -100
        assert torch.equal(labels[kept], ids[kept])
        # the response, its end-of-turn token, and the template's trailing newline
        assert tok.decode(ids[kept]).rstrip("\n") == data[row]["output"] + "<|im_end|>"
        first = int(kept.nonzero()[0])
        assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")


def test_stage_outputs_load_in_plain_peft_and_transformers(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_cfg({"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, max_steps=4)
    cfg.merge = True
    result = run(cfg, ctx(tmp_path))
    adapter_dir = Path(result.outputs["model"])
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "adapter_model.safetensors").exists()
    assert result.metrics["steps"] == 4 and result.metrics["tokens_per_second"] > 0
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.outputs["merged"]).eval()
    tok = AutoTokenizer.from_pretrained(result.outputs["merged"])
    ids = tok("Give three tips", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)


def test_packing_runs(tmp_path, tiny_model_dir):
    cfg = make_cfg({"type": "lora"})
    cfg.packing = True
    trainer, _ = build_trainer(cfg, ctx(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert (batch["labels"] != -100).any()
    assert trainer.train().global_step == 12


def test_killed_sft_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: resume
sft:
  model: tiny-llama
  data: {DATA}
  adapter: {{type: lora, r: 4, alpha: 8}}
  train: {{max_steps: 120, save_steps: 10, batch_size: 2, max_length: 128, logging_steps: 10, report_to: [none]}}
""")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "align.cli", "run", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "sft" / "checkpoints"
    deadline = time.time() + 600  # a hang guard: checkpoint-20 comes after a few seconds
    while time.time() < deadline and not (checkpoints / "checkpoint-20" / "trainer_state.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (checkpoints / "checkpoint-20").exists() and not (out / "sft" / "COMPLETE").exists()
    # 100 steps after checkpoint-20 leave the kill ample time; the generous timeout is for a loaded machine
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "sft" / "metrics.json").read_text())
    assert metrics["resumed_from"] and int(metrics["resumed_from"].rsplit("-", 1)[1]) >= 20
    assert metrics["steps"] == 120
    step = int(metrics["resumed_from"].rsplit("-", 1)[1])
    note = f"sft: resuming from checkpoint-{step} (step {step} of 120)"
    assert note in done.stderr and note in (out / "sft" / "log.txt").read_text()  # console and log.txt


def test_partial_checkpoint_is_skipped(tmp_path):
    from align.training import last_checkpoint

    good, partial = tmp_path / "checkpoint-10", tmp_path / "checkpoint-20"
    good.mkdir()
    (good / "trainer_state.json").write_text("{}")
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_text("")  # killed before trainer_state.json
    assert last_checkpoint(tmp_path) == str(good)
    assert not partial.exists()


def test_max_length_shorter_than_every_prompt_is_one_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(AlignError) as err:
        build_trainer(make_cfg({"type": "lora", "r": 4}, max_length=9), ctx(tmp_path))
    msg = str(err.value)
    assert re.match(r"sft: (\d+) of \1 training examples dropped", msg) and "sft.train.max_length=9" in msg
    assert re.search(r"prompts here are \d+ to \d+ tokens", msg) and "num_samples" not in msg and "\n" not in msg


def test_some_examples_dropped_by_max_length_are_counted(tmp_path, tiny_model_dir, caplog):
    from align.data import load_examples
    from align.models import load_tokenizer
    from align.stages.sft import prompt_lengths

    lengths = sorted(prompt_lengths(load_tokenizer("tiny-llama"), load_examples(DATA)))
    cut = lengths[len(lengths) // 2]  # about half the prompts fill this on their own
    trainer, info = build_trainer(make_cfg({"type": "lora", "r": 4}, max_length=cut), ctx(tmp_path / "cut"))
    expected = sum(n >= cut for n in lengths)
    assert 0 < expected < len(lengths)
    assert info["dropped_too_long"] == expected and len(trainer.train_dataset) == len(lengths) - expected
    assert f"{expected} of {len(lengths)} training examples dropped" in caplog.text


def test_train_loss_covers_every_step_across_a_resume(tmp_path, tiny_model_dir):
    import shutil

    cfg = make_cfg({"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, save_steps=6)
    first = run(cfg, ctx(tmp_path)).metrics
    losses = [loss for _, loss in json.loads((tmp_path / "loss_history.json").read_text())]
    assert len(losses) == 12 and first["train_loss"] == pytest.approx(sum(losses) / 12, rel=1e-4)
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-12")  # as if killed after the step-6 checkpoint
    resumed = run(cfg, ctx(tmp_path)).metrics
    assert resumed["resumed_from"].endswith("checkpoint-6") and resumed["steps"] == 12
    after_resume_only = sum(losses[6:]) / 6  # what Trainer.train() alone reports after the resume
    assert abs(first["train_loss"] - after_resume_only) > 0.01
    assert resumed["train_loss"] == pytest.approx(first["train_loss"], rel=1e-3)


def test_resume_is_announced_and_tokens_count_the_whole_run(tmp_path, tiny_model_dir, caplog):
    import shutil

    cfg = make_cfg({"type": "lora", "r": 4, "alpha": 8}, save_steps=6)
    with caplog.at_level("INFO", logger="align"):
        first = run(cfg, ctx(tmp_path)).metrics
    assert "resuming" not in caplog.text and first["tokens"] > 0
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-12")  # as if killed after the step-6 checkpoint
    caplog.clear()
    with caplog.at_level("INFO", logger="align"):
        resumed = run(cfg, ctx(tmp_path)).metrics
    assert "sft: resuming from checkpoint-6 (step 6 of 12)" in caplog.text
    assert resumed["tokens"] == first["tokens"]  # the same 12 batches, not only the 6 after the resume
    this_call = resumed["tokens_per_second"] * resumed["train_seconds"]  # the rate is of this call's tokens only
    assert 0 < this_call < 0.8 * resumed["tokens"]


def test_a_new_adapter_on_an_adapter_checkpoint_names_the_weights_it_was_trained_on(tmp_path, tiny_model_dir):
    """SFT from an SFT adapter: the new adapter's base is the first adapter folded into the base (saved
    once), so plain peft loads exactly the trained model, not the new adapter on the original base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    first = run(make_cfg(lora, max_steps=4), ctx(tmp_path / "a"))
    cfg = make_cfg(lora, max_steps=4)
    cfg.model = cfg.model.model_copy(update={"name": first.outputs["model"]})
    second = run(cfg, ctx(tmp_path / "b"))
    adapter_dir = Path(second.outputs["model"])
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base) == (tmp_path / "b" / "base").resolve()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir).eval()
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    folded = PeftModel.from_pretrained(original, first.outputs["model"]).merge_and_unload()
    expected = PeftModel.from_pretrained(folded, adapter_dir).eval()
    on_original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                            adapter_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(on_original(ids).logits, expected(ids).logits, atol=1e-3)  # what it used to load
