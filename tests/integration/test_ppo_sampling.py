"""Cheaper rollouts change nothing but speed: sampling with the LoRA merged gives the unmerged model's
greedy tokens and leaves every weight bit-identical afterwards; reusing the frozen lower layers gives
the same log-probs and the same gradients as full forwards."""

from __future__ import annotations

import pytest
import torch

from align.models import AdapterConfig, ModelConfig
from align.ppo.config import PPOSettings
from align.ppo.policy import (
    find_frozen_layers,
    load_roles,
    merge_blocker,
    merged_for_sampling,
    policy_forward,
    ref_forward,
    trunk_capture,
)
from align.rl import logprobs_from_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def roles_with_random_lora(top_layers: int | None = None, value_model: str | None = "head"):
    """A fresh LoRA policy whose adapter is not zero (a fresh one would merge to the base itself)."""
    torch.manual_seed(0)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0, top_layers=top_layers),
                       value_model)
    with torch.no_grad():
        for name, p in roles.model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.2)
    return roles


def query(roles, texts=("Name a color.", "Why is the sky blue? Tell me in detail.")):
    chats = [roles.tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                 tokenize=False) for t in texts]
    return roles.tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)


def test_merged_greedy_tokens_match_unmerged_and_weights_round_trip_exactly(tiny_model_dir):
    roles = roles_with_random_lora()
    assert merge_blocker(roles) is None
    before = {n: p.detach().clone() for n, p in roles.model.named_parameters()}
    storage = {n: p.data_ptr() for n, p in roles.model.named_parameters()}
    enc = query(roles)

    def greedy(merged: bool) -> torch.Tensor:
        with merged_for_sampling(roles, merged) as is_merged:
            assert is_merged == merged
            return roles.model.generate(**enc, do_sample=False, max_new_tokens=16, min_new_tokens=16,
                                        pad_token_id=roles.tokenizer.pad_token_id)

    unmerged = greedy(False)
    merged = greedy(True)
    assert torch.equal(merged, unmerged)
    with merged_for_sampling(roles) as is_merged:  # inside: the base weights really hold the merged delta
        assert is_merged
        changed = [n for n, p in roles.model.named_parameters() if "base_layer" in n and not torch.equal(p, before[n])]
        assert changed
    for name, p in roles.model.named_parameters():  # after: every tensor is back, bit for bit, and trainable as before
        assert p.data_ptr() == storage[name] and torch.equal(p, before[name]), name
    assert any(p.requires_grad for n, p in roles.model.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for n, p in roles.model.named_parameters() if "base_layer" in n)


def test_merging_is_refused_where_it_is_not_exact(tiny_model_dir):
    roles = roles_with_random_lora()
    roles.quantization = "4bit"
    assert "4bit" in merge_blocker(roles)
    dora = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(type="dora", r=4, dropout=0.0))
    assert "DoRA" in merge_blocker(dora)
    with merged_for_sampling(dora) as is_merged:
        assert not is_merged


def test_frozen_lower_layers_are_reused_without_changing_logprobs_or_gradients(tiny_model_dir):
    roles = roles_with_random_lora(top_layers=1)
    assert find_frozen_layers(roles) == 1  # tiny-llama has 2 layers; the adapter sits on the top one
    enc = query(roles)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = 5
    labels = ids[:, -n:]

    def logprobs_and_grads(trunk):
        roles.model.zero_grad(set_to_none=True)
        roles.value_head.zero_grad(set_to_none=True)
        logits, values = policy_forward(roles, ids, mask, n, trunk=trunk)
        logp = logprobs_from_logits(logits, labels)
        (logp.sum() + values.sum()).backward()
        grads = {name: p.grad.clone() for name, p in roles.model.named_parameters() if p.grad is not None}
        return logp.detach(), values.detach(), grads

    full_logp, full_values, full_grads = logprobs_and_grads(None)
    roles.frozen_layers = 1
    recorded: list[torch.Tensor] = []
    with torch.no_grad(), trunk_capture(roles, recorded):
        policy_forward(roles, ids, mask, n)
    assert len(recorded) == 1 and recorded[0].shape == (*ids.shape, 64)
    logp, values, grads = logprobs_and_grads(recorded[0])
    torch.testing.assert_close(logp, full_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, full_values, rtol=1e-5, atol=1e-5)
    assert grads.keys() == full_grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-4, atol=1e-6)
    ref_full = ref_forward(roles, ids, mask, n)
    torch.testing.assert_close(ref_forward(roles, ids, mask, n, trunk=recorded[0]), ref_full, rtol=1e-5, atol=1e-5)
    assert len(roles.model.get_base_model().model.layers) == 2  # the real layers are back


def test_no_value_model_for_critic_free_estimators(tiny_model_dir):
    roles = roles_with_random_lora(value_model=None)
    assert roles.value_head is None and "value_model = none" in " ".join(roles.notes)
    enc = query(roles)
    logits, values = policy_forward(roles, enc["input_ids"], enc["attention_mask"], 3)
    assert values is None and logits.shape[1] == 3
    assert not PPOSettings(advantage={"estimator": "grpo"}, rollout={"group_size": 2}).needs_value_model
