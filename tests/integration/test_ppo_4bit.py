"""QLoRA policy on CPU: generate() must not corrupt LoRA gradients (bitsandbytes AVX512 repacking)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from align.models import AdapterConfig, ModelConfig
from align.ppo.policy import load_roles, policy_forward
from align.ppo.rollout import encode_queries, left_pad
from align.rl import logprobs_from_logits
from align.stages import StageContext

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU code path of bitsandbytes")

QUERIES = [[{"role": "user", "content": "Name a color."}], [{"role": "user", "content": "Describe the sea."}]]


pytestmark = pytest.mark.usefixtures("one_thread")


def lora_grads(roles, ids, mask, width) -> dict[str, torch.Tensor]:
    roles.model.zero_grad(set_to_none=True)
    logits, values = policy_forward(roles, ids, mask, width)
    loss = -logprobs_from_logits(logits, ids[:, -width:]).mean() + values.pow(2).mean()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in roles.model.named_parameters() if p.grad is not None}


def inputs(roles):
    tok = roles.tokenizer
    q_ids, q_mask = left_pad(encode_queries(tok, QUERIES), tok.pad_token_id)
    r_ids = torch.tensor([[100, 200, 300, 400], [500, 600, 700, 800]])
    return torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, torch.ones_like(r_ids)], 1), 4


def test_generate_leaves_4bit_lora_gradients_unchanged(tiny_model_dir):
    import bitsandbytes as bnb

    roles = load_roles(ModelConfig(name="tiny-llama", quantization="4bit"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    layers = [m for m in roles.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    with torch.no_grad():  # non-zero LoRA B so every LoRA weight gets a gradient
        for n, p in roles.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids, mask, width = inputs(roles)
    before = lora_grads(roles, ids, mask, width)
    assert any("lora_A" in n for n in before) and all(g.abs().sum() > 0 for g in before.values())
    tok = roles.tokenizer
    with torch.no_grad():
        roles.model.generate(input_ids=ids[:, :-width], attention_mask=mask[:, :-width], max_new_tokens=4,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    after = lora_grads(roles, ids, mask, width)
    assert before.keys() == after.keys()
    worst = max((before[n] - after[n]).abs().max().item() for n in before)
    assert worst < 1e-6, f"LoRA gradients changed after generate() by {worst}"


def test_a_few_ppo_steps_run_on_a_4bit_policy(tiny_model_dir, tmp_path):
    from align.stages.ppo import Config, run

    (tmp_path / "r.py").write_text("def length(prompt, response):\n    return len(response) / 50\n")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": q[0]["content"]}) + "\n" for q in QUERIES))
    cfg = Config.model_validate({
        "policy": {"name": "tiny-llama", "quantization": "4bit"},
        "reward": f"{tmp_path / 'r.py'}:length",
        "prompts": str(tmp_path / "p.jsonl"),
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"steps": 2, "mini_batch_size": 2, "grad_accum": 2, "ppo_epochs": 1, "lr": 1e-3,
                  "rollout": {"batch_size": 4, "max_new_tokens": 6}, "report_to": ["none"],
                  "log": {"progress": False}},
    })
    out = tmp_path / "ppo"
    out.mkdir()
    result = run(cfg, StageContext(name="ppo", stage_dir=out, run_dir=tmp_path, seed=0, upstream={}))
    assert result.metrics["steps"] == 2
    assert any("4-bit CPU gradient guard" in note for note in result.metrics["roles"])
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2]
    assert all(math.isfinite(s["loss/total"]) and s["policy/grad_norm"] > 0 for s in stats)
    assert (Path(result.outputs["model"]) / "adapter_model.safetensors").exists()
