"""One copy of the base weights for policy, ref_policy, value_model and reward_model, with exact roles."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from align.models import AdapterConfig, ModelConfig
from align.ppo.config import RewardConfig
from align.ppo.policy import REF_ADAPTER, load_roles, policy_forward, position_ids_for, ref_forward
from align.ppo.rollout import encode_queries, left_pad
from align.ppo.scoring import SeparateRewardScorer, SharedBaseRewardScorer, load_scorer
from align.rl import logprobs_from_logits
from tests.conftest import make_reward_adapter

QUERIES = [[{"role": "user", "content": "Name a color."}],
           [{"role": "user", "content": "Write a short poem about the sea, please."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]]
RESPONSES = ["Blue.", "Waves roll in and out, grey and green.", "Light scatters."]


pytestmark = pytest.mark.usefixtures("one_thread")


def perturb_adapter(model, adapter: str = "default", seed: int = 0) -> None:
    """Give LoRA B non-zero values so an adapter changes the model's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def batch(roles, responses=RESPONSES):
    tok = roles.tokenizer
    q_ids, q_mask = left_pad(encode_queries(tok, QUERIES), tok.pad_token_id)
    r = tok(responses, add_special_tokens=False)["input_ids"]
    width = max(len(x) for x in r)
    r_ids = torch.full((len(r), width), tok.pad_token_id)
    r_mask = torch.zeros((len(r), width), dtype=torch.long)
    for i, x in enumerate(r):
        r_ids[i, : len(x)] = torch.tensor(x)
        r_mask[i, : len(x)] = 1
    return torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1), width, r_mask.bool()


def logprobs_of(model, ids, mask, width):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask)).logits
    return logprobs_from_logits(logits[:, -width - 1 : -1], ids[:, -width:])


def test_one_copy_of_base_weights_serves_every_role(tiny_model_dir, tmp_path):
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0), value_model="adapter")
    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir)
    scorer = load_scorer(RewardConfig(source=str(reward_dir)), str(reward_dir), roles)
    assert isinstance(scorer, SharedBaseRewardScorer)

    base_numel = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    params = list(roles.model.named_parameters())
    non_adapter = {p.data_ptr(): p.numel() for n, p in params if "lora_" not in n}
    assert sum(non_adapter.values()) == base_numel  # exactly one copy of the base
    adapters = {n.split("lora_A.")[1].split(".")[0] for n, _ in params if "lora_A." in n}
    assert adapters == {"default", "value", "reward"}
    # only the policy and value adapters (and the value head) train
    trainable = {n for n, p in params if p.requires_grad}
    assert trainable and all(".default." in n or ".value." in n for n in trainable)
    assert not any(".reward." in n for n in trainable)


def test_disabled_adapters_reproduce_a_separately_loaded_base(tiny_model_dir):
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    assert roles.ref_kind == "disable_adapter"
    perturb_adapter(roles.model)
    ids, mask, width, _ = batch(roles)
    ref = logprobs_from_logits(ref_forward(roles, ids, mask, width), ids[:, -width:])
    plain = logprobs_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), ids, mask, width)
    assert torch.equal(ref, plain)
    with torch.no_grad():
        policy = logprobs_from_logits(policy_forward(roles, ids, mask, width)[0], ids[:, -width:])
    assert (policy - plain).abs().max() > 1e-2  # the adapter is active for the policy


def test_policy_from_an_adapter_keeps_that_adapter_as_ref_policy(tiny_model_dir, tmp_path):
    """Starting from @sft-like LoRA, the KL anchor is the SFT model, not the base under it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                         LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    perturb_adapter(sft, seed=3)
    sft.save_pretrained(str(tmp_path / "sft"))
    roles = load_roles(ModelConfig(name=str(tmp_path / "sft")), AdapterConfig())
    assert roles.ref_kind == "ref_adapter"
    assert not any(p.requires_grad for n, p in roles.model.named_parameters() if f".{REF_ADAPTER}." in n)
    ids, mask, width, _ = batch(roles)
    plain = logprobs_of(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                                  str(tmp_path / "sft")).eval(), ids, mask, width)
    ref_before = logprobs_from_logits(ref_forward(roles, ids, mask, width), ids[:, -width:])
    assert torch.allclose(ref_before, plain, atol=1e-6)
    perturb_adapter(roles.model, "default", seed=7)  # the policy trains away ...
    ref_after = logprobs_from_logits(ref_forward(roles, ids, mask, width), ids[:, -width:])
    assert torch.equal(ref_before, ref_after)  # ... the ref_policy does not move


def test_reward_adapter_on_shared_base_scores_like_standalone_peft(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from align.preferences.reward_model import encode, load_reward_model, pad_rows

    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir, mean=0.25)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    perturb_adapter(roles.model)
    ids, mask, width, _ = batch(roles)
    with torch.no_grad():
        policy_before = policy_forward(roles, ids, mask, width)[0]
    flags_before = {n: p.requires_grad for n, p in roles.model.named_parameters()}
    scorer = load_scorer(RewardConfig(source=str(tmp_path / "rm")), str(tmp_path / "rm"), roles)
    assert isinstance(scorer, SharedBaseRewardScorer)
    shared = torch.tensor(scorer.score(QUERIES, RESPONSES))

    # standalone, in plain transformers + peft
    tok = scorer.tokenizer
    standalone = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    standalone.config.pad_token_id = tok.pad_token_id
    standalone = PeftModel.from_pretrained(standalone, str(reward_dir)).eval()
    rows = pad_rows([encode(tok, q, r, "chat", 64) for q, r in zip(QUERIES, RESPONSES, strict=True)], tok.pad_token_id)
    with torch.no_grad():
        plain = standalone(**rows).logits[:, 0] - 0.25
    assert torch.allclose(shared, plain, atol=1e-5), (shared, plain)
    assert plain.std() > 1e-3  # the adapter and head make the scores differ
    # the reward stage's own loader agrees too
    assert torch.allclose(torch.tensor(load_reward_model(reward_dir).score(QUERIES, RESPONSES)), plain, atol=1e-5)

    # scoring left the policy as it was: same outputs, same trainable set
    with torch.no_grad():
        policy_after = policy_forward(roles, ids, mask, width)[0]
    assert torch.equal(policy_before, policy_after)
    flags_after = {n: p.requires_grad for n, p in roles.model.named_parameters() if ".reward." not in n}
    assert flags_after == flags_before


def test_reward_adapter_on_another_base_loads_separately(tiny_model_dir, tmp_path):
    """share_base off (or another base): the reward model is its own model, loaded by
    align.preferences.reward_model."""
    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    scorer = load_scorer(RewardConfig(source=str(reward_dir), share_base=False), str(reward_dir), roles)
    assert isinstance(scorer, SeparateRewardScorer)
    assert len(scorer.score(QUERIES, RESPONSES)) == 3
    assert not any(".reward." in n for n, _ in roles.model.named_parameters())


@pytest.mark.parametrize("source", ["nope:", "no/such/dir"])
def test_bad_reward_source_is_a_clear_error(tiny_model_dir, source):
    from align.errors import AlignError

    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    with pytest.raises(AlignError, match="reward"):
        load_scorer(RewardConfig(source=source), source, roles)


def test_full_checkpoint_reward_model_scores_like_its_adapter(tiny_model_dir, tmp_path):
    """A full reward checkpoint (here: the adapter merged) goes through align.preferences.reward_model, with
    the same scores."""
    from peft import PeftModel

    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir, mean=0.25)
    seq = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    merged = PeftModel.from_pretrained(seq, str(reward_dir)).merge_and_unload()
    full = tmp_path / "rm_full"
    merged.save_pretrained(str(full))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "reward_normalization.json"):
        if (reward_dir / name).exists():
            (full / name).write_bytes((reward_dir / name).read_bytes())
    (full / "align_reward.json").write_text(json.dumps({"base": str(full), "adapter": False, "max_length": 64}))

    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))
    separate = load_scorer(RewardConfig(source=str(full)), str(full), roles)
    assert isinstance(separate, SeparateRewardScorer)
    shared = load_scorer(RewardConfig(source=str(reward_dir)), str(reward_dir), roles)
    assert isinstance(shared, SharedBaseRewardScorer)
    a, b = torch.tensor(separate.score(QUERIES, RESPONSES)), torch.tensor(shared.score(QUERIES, RESPONSES))
    assert torch.allclose(a, b, atol=1e-4), (a, b)
