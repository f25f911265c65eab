"""Merging a LoRA adapter for sampling changes nothing but speed, for any adapter on a shared base: the
merged model gives the unmerged model's greedy tokens, the other adapters' outputs are untouched, and
every weight is bit-identical afterwards. Eval's model views and the rank stage sample this way."""

from __future__ import annotations

import pytest
import torch

from align.lora_merge import lora_merge_blocker, lora_merged

pytestmark = pytest.mark.usefixtures("one_thread")


def two_adapter_model(tiny_model_dir):
    """tiny-llama with two random (non-zero) LoRA adapters, 'default' and 'other', and its tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])
    model = get_peft_model(base, config)
    model.add_adapter("other", config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "left"
    return model, tokenizer


def greedy(model, tokenizer) -> torch.Tensor:
    enc = tokenizer(["Name a color.", "Why is the sky blue? Tell me in detail."], return_tensors="pt", padding=True)
    return model.generate(**enc, do_sample=False, max_new_tokens=12, min_new_tokens=12,
                          pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)


def test_any_adapter_merges_exactly_and_the_others_are_untouched(tiny_model_dir):
    model, tokenizer = two_adapter_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    storage = {n: p.data_ptr() for n, p in model.named_parameters()}
    expected = {}
    for adapter in ("default", "other"):
        model.set_adapter(adapter)
        expected[adapter] = greedy(model, tokenizer)
    assert not torch.equal(expected["default"], expected["other"])  # the adapters really differ

    model.set_adapter("other")
    with lora_merged(model, "other") as merged:
        assert merged
        assert torch.equal(greedy(model, tokenizer), expected["other"])
        changed = [n for n, p in model.named_parameters() if "base_layer" in n and not torch.equal(p, before[n])]
        assert changed and all(any(t in n for t in ("q_proj", "v_proj", "up_proj")) for n in changed)
    model.set_adapter("default")  # the other adapter sees the base exactly as before
    assert torch.equal(greedy(model, tokenizer), expected["default"])
    for name, p in model.named_parameters():
        assert p.data_ptr() == storage[name] and torch.equal(p, before[name]), name


def test_merging_is_refused_where_it_would_not_be_exact(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, _ = two_adapter_model(tiny_model_dir)
    assert lora_merge_blocker(model) is None
    assert "4bit" in lora_merge_blocker(model, "default", quantization="4bit")
    assert "no LoRA adapter named 'missing'" in lora_merge_blocker(model, "missing")
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert "not a PEFT model" in lora_merge_blocker(plain)
    with lora_merged(plain) as merged, lora_merged(model, quantization="4bit") as merged_4bit:
        assert not merged and not merged_4bit


def test_eval_views_sample_merged_and_give_the_unmerged_tokens(tiny_model_dir):
    from align.eval.loading import ModelView

    model, tokenizer = two_adapter_model(tiny_model_dir)
    model.set_adapter("other")
    expected = greedy(model, tokenizer)
    base_weight = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = base_weight.data_ptr()
    view = ModelView(model, tokenizer, adapter="other")
    with view.active() as active:
        assert base_weight.data_ptr() != original  # merged: a new tensor holds base + delta
        assert torch.equal(greedy(active, tokenizer), expected)
    assert base_weight.data_ptr() == original
    with ModelView(model, tokenizer, adapter="other", quantization="4bit").active() as active:
        assert base_weight.data_ptr() == original  # quantized bases run the adapter unmerged
        assert torch.equal(greedy(active, tokenizer), expected)
