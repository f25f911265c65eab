"""dpo stage on tiny-llama: learns a separable toy preference, the reference really is the SFT policy on the
shared base, a killed run resumes, KTO and a reference-free method run, the runner and eval take @dpo."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align.stages import StageContext
from align.stages.dpo import Config, build_trainer, run

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "went", "to", "sleep", "near", "warm", "fire",
         "with", "some", "milk", "bread", "apple", "tree", "river"]
QUIET = {"logging_steps": 2, "report_to": ["none"], "warmup_ratio": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def marker_rankings(path: Path, n: int = 48, seed: int = 0) -> Path:
    """K = 2..4 random-word responses per prompt; the one starting with 'excellent' is best, the rest tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([2, 3, 4])
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))) for _ in range(k)]
        good = rng.randrange(k)
        responses[good] = "excellent " + responses[good]
        rows.append({"prompt": f"Tell me something about item {i}.", "responses": responses,
                     "ranking": [[good], [j for j in range(k) if j != good]]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def sft_adapter(out: Path) -> Path:
    """A LoRA adapter on tiny-llama with nonzero weights (so the SFT policy differs from the base)."""
    from peft import LoraConfig, get_peft_model

    from align.models import load_causal_lm, load_tokenizer

    if (out / "adapter_config.json").exists():
        return out
    torch.manual_seed(1)
    model = get_peft_model(load_causal_lm("tiny-llama"),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.save_pretrained(str(out))
    load_tokenizer("tiny-llama").save_pretrained(str(out))
    return out


def ctx_for(stage_dir: Path) -> StageContext:
    stage_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(name="dpo", stage_dir=stage_dir, run_dir=stage_dir.parent, seed=0, upstream={})


def settings(root: Path, **extra) -> dict:
    train = {"lr": 5e-3, "epochs": 2, "batch_size": 4, "max_length": 64, "save_steps": 1000, **QUIET,
             **extra.pop("train", {})}
    return {"model": str(sft_adapter(root / "sft")), "data": str(marker_rankings(root / "rankings.jsonl")),
            "eval_fraction": 0.25, "train": train, **extra}


def sequence_logps(model, batch) -> torch.Tensor:
    """Σ log p(completion tokens) per row, computed directly from a model's logits: [rows]."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(dim=1)


# --------------------------------------------------------------------------- learning


def test_dpo_learns_a_separable_preference(tmp_path, tiny_model_dir):
    result = run(Config.model_validate(settings(tmp_path)), ctx_for(tmp_path / "dpo"))
    m = result.metrics
    # before training policy == reference: every implicit reward is 0, accuracy 0 (no pair is strictly ahead)
    assert m["reward_accuracy_first"] == 0.0
    assert m["heldout_rows"] > 0 and m["heldout_reward_accuracy"] >= 0.75  # chance: 0.5
    assert m["heldout_reward_margin"] > 0
    assert m["last_loss"] < m["first_loss"]
    history = json.loads((tmp_path / "dpo" / "history.json").read_text())
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"} <= set(history[-1])
    out = Path(result.outputs["model"])
    assert (out / "adapter_config.json").exists() and not (out / "ref").exists()  # the policy only
    assert m["reference"].startswith("the starting adapter")


# --------------------------------------------------------------------------- one base, the reference is SFT


def test_reference_is_the_frozen_sft_adapter_on_the_shared_base(tmp_path, tiny_model_dir):
    from peft import PeftModel

    from align.models import load_causal_lm

    cfg = Config.model_validate(settings(tmp_path, train={"max_steps": 6, "lr": 2e-2}))
    trainer, info = build_trainer(cfg, ctx_for(tmp_path / "dpo"))
    assert trainer.ref_model is None  # no second model: the reference is an adapter on the same weights
    peft_model = trainer.model
    assert set(peft_model.peft_config) == {"default", "ref"}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    ref_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".ref." in n}

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.train()
    peft_model.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(peft_model, batch)

    sft = PeftModel.from_pretrained(load_causal_lm("tiny-llama"), str(tmp_path / "sft")).eval()
    expected = sequence_logps(sft, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]).float(), expected, rtol=1e-4, atol=1e-3)
    with sft.disable_adapter():
        base = sequence_logps(sft, batch)
    assert (base - expected).abs().max() > 1e-2  # the SFT adapter matters: the reference is not the base
    with torch.no_grad():
        policy = sequence_logps(peft_model, batch)
    assert (policy - expected).abs().max() > 1e-2  # the policy trained away from it
    for name, before in ref_before.items():
        assert torch.equal(before, peft_model.get_parameter(name)), f"reference weight {name} changed"


def test_fresh_adapter_reference_is_the_base_with_adapters_disabled(tmp_path, tiny_model_dir):
    cfg = Config.model_validate(settings(tmp_path, model="tiny-llama", adapter={"type": "lora", "r": 4, "alpha": 8},
                                         train={"max_steps": 2}))
    trainer, info = build_trainer(cfg, ctx_for(tmp_path / "dpo"))
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config
    assert "adapters disabled" in info["reference"]


def test_start_new_folds_the_sft_adapter_into_one_base(tmp_path, tiny_model_dir):
    from align.models import load_causal_lm

    cfg = Config.model_validate(settings(tmp_path, start="new", adapter={"type": "lora", "r": 4, "alpha": 8},
                                         eval_fraction=0.0, train={"max_steps": 2}))
    result = run(cfg, ctx_for(tmp_path / "dpo"))
    adapter_cfg = json.loads((Path(result.outputs["model"]) / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str((tmp_path / "dpo" / "base").resolve())
    assert load_causal_lm(result.outputs["model"]) is not None  # loads on its merged base


# --------------------------------------------------------------------------- resume


def test_killed_dpo_resumes_from_checkpoint(tmp_path, tiny_model_dir):
    sft = sft_adapter(tmp_path / "sft")
    data = marker_rankings(tmp_path / "rankings.jsonl")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: resume
dpo:
  model: {sft}
  data: {data}
  eval_fraction: 0.0
  train: {{max_steps: 60, save_steps: 5, batch_size: 2, max_length: 64, logging_steps: 10, report_to: [none]}}
""")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "align.cli", "run", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "dpo" / "checkpoints"
    deadline = time.time() + 600  # a hang guard: the first checkpoint comes after a few seconds
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("checkpoint-*")) and not (out / "dpo" / "COMPLETE").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "dpo" / "metrics.json").read_text())
    assert metrics["resumed_from"] and int(metrics["resumed_from"].rsplit("-", 1)[1]) >= 5
    assert metrics["steps"] == 60
    step = int(metrics["resumed_from"].rsplit("-", 1)[1])
    note = f"dpo: resuming from checkpoint-{step} (step {step} of 60)"
    assert note in done.stderr and note in (out / "dpo" / "log.txt").read_text()  # console and log.txt


# --------------------------------------------------------------------------- KTO and reference-free methods


def test_kto_from_rankings_learns_the_marker(tmp_path, tiny_model_dir):
    result = run(Config.model_validate(settings(tmp_path, method="kto")), ctx_for(tmp_path / "dpo"))
    m = result.metrics
    assert m["method"] == "kto" and m["train_rows"] > 0
    assert m["heldout_reward_margin"] > 0  # desirable responses gained reward over undesirable ones
    assert "heldout_kl" in m
    assert (Path(result.outputs["model"]) / "adapter_config.json").exists()


def test_simpo_runs_without_a_reference(tmp_path, tiny_model_dir):
    cfg = Config.model_validate(settings(tmp_path, method="simpo", train={"max_steps": 6}))
    trainer, info = build_trainer(cfg, ctx_for(tmp_path / "dpo"))
    assert info["reference"].startswith("none")
    assert trainer.train().global_step == 6


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="'dpo2' is not a TRL DPO loss"):
        Config.model_validate({"model": "tiny-llama", "data": "x.jsonl", "method": {"loss_type": "dpo2"}})
    with pytest.raises(ValueError, match="KTO needs at least 2 examples"):
        Config.model_validate({"model": "tiny-llama", "data": "x.jsonl", "method": "kto", "train": {"batch_size": 1}})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):  # orpo has no reference to precompute
        Config.model_validate({"model": "tiny-llama", "data": "x",
                               "method": {"type": "orpo", "precompute_ref_log_probs": True}})


def test_all_tied_rankings_name_the_file(tmp_path, tiny_model_dir):
    from align.errors import AlignError

    data = tmp_path / "tied.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1]]}) + "\n")
    cfg = Config.model_validate({"model": "tiny-llama", "data": str(data), "eval_fraction": 0.0})
    with pytest.raises(AlignError, match="tied.jsonl gives no training pairs"):
        run(cfg, ctx_for(tmp_path / "dpo"))


# --------------------------------------------------------------------------- pipeline: runner, eval, report


def test_runner_and_eval_compare_sft_and_dpo(tmp_path, tiny_model_dir):
    from align.runner import run_recipe

    sft = sft_adapter(tmp_path / "sft")
    data = marker_rankings(tmp_path / "rankings.jsonl", n=12)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: dpo-eval
dpo:
  model: {sft}
  data: {data}
  eval_fraction: 0.25
  method: {{type: dpo, loss_type: ipo}}
  train: {{max_steps: 4, batch_size: 2, max_length: 64, logging_steps: 1, report_to: [none]}}
eval:
  policies: {{sft: {sft}, dpo: "@dpo"}}
  num_prompts: 2
  max_new_tokens: 6
  reference: {sft}
""")
    records = run_recipe(recipe, tmp_path / "run")
    assert [r.status for r in records] == ["ran", "ran"]
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"sft", "dpo"}
    assert metrics["model_loads"] == 1  # sft and dpo adapters ride on one copy of tiny-llama
    report = (tmp_path / "run" / "report.md").read_text()
    # 4 logged steps: the implicit-reward curve is written as numbers; the loss type is in the metric table
    assert "## dpo" in report and "- rewards/accuracies: " in report and "| loss_type | ipo |" in report


def test_qlora_continues_the_sft_adapter_on_a_4bit_base(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    base = settings(tmp_path, train={"max_steps": 3, "lr": 2e-2})
    base["model"] = {"name": base["model"], "quantization": "4bit"}
    trainer, info = build_trainer(Config.model_validate(base), ctx_for(tmp_path / "dpo"))
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)  # the CPU gradient guard
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if "lora" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    moved = [n for n in before if ".default." in n and not torch.equal(before[n], after[n].detach().float())]
    assert moved, "no LoRA weight of the policy changed"
    assert all(torch.equal(before[n], after[n].detach().float()) for n in before if ".ref." in n)
