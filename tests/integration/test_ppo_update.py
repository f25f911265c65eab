"""PPO update mechanics on tiny-llama: log-probs match sampling, accumulation is exact, the sign is right."""

from __future__ import annotations

import copy

import pytest
import torch

from align.models import AdapterConfig, ModelConfig
from align.ppo.config import PPOSettings
from align.ppo.policy import load_roles, policy_forward
from align.ppo.rollout import encode_queries, eos_ids, left_pad, rollout
from align.ppo.scoring import FunctionScorer
from align.ppo.update import estimate_advantages, step_with_rollouts
from align.rl import logprobs_from_logits
from tests.conftest import merged

QUERIES = [[{"role": "user", "content": text}] for text in (
    "Tell me about the sea.", "Write a short poem about autumn leaves.", "Name a color.", "Describe a cat.",
    "How do plants grow?", "Why is the sky blue?", "Give three tips for sleeping well.", "Say something.",
)]


pytestmark = pytest.mark.usefixtures("one_thread")


def settings(**kw) -> PPOSettings:
    """Small PPO settings; `kw` changes keys of ppo.train (sections as dicts: kl={"init_coef": 0.0})."""
    base = dict(mini_batch_size=8, grad_accum=1, ppo_epochs=2, lr=1e-2, rollout={"batch_size": 8, "max_new_tokens": 10,
                "temperature": 0.9}, kl={"init_coef": 0.05}, report_to=["none"], log={"progress": False})
    return PPOSettings(**merged(base, kw))


def fresh_roles():
    torch.manual_seed(0)
    return load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))


def test_recomputed_logprobs_equal_the_sampling_distribution(tiny_model_dir):
    """Left padding + position ids + temperature: the update scores exactly what generate() sampled from."""
    from transformers import GenerationConfig

    roles = fresh_roles()
    tok = roles.tokenizer
    ids, mask = left_pad(encode_queries(tok, QUERIES[:3]), tok.pad_token_id)  # different lengths: real padding
    assert (mask == 0).any()
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, max_new_tokens=8, min_new_tokens=8,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos_ids(tok, roles.model),
                              output_logits=True, return_dict_in_generate=True)
    torch.manual_seed(1)
    out = roles.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    response = out.sequences[:, ids.shape[1]:]
    sampled = torch.log_softmax(torch.stack(out.logits, 1).float() / 0.7, -1)
    sampled = sampled.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    full = torch.cat([ids, response], 1)
    full_mask = torch.cat([mask, torch.ones_like(response)], 1)
    with torch.no_grad():
        logits, values = policy_forward(roles, full, full_mask, response.shape[1])
    recomputed = logprobs_from_logits(logits, response, 0.7)
    assert torch.allclose(recomputed, sampled, atol=1e-5), (recomputed - sampled).abs().max()
    assert values.shape == response.shape


def run_update(roles, rollouts, s: PPOSettings) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=s.lr, eps=s.adam_eps)
    adv = estimate_advantages(rollouts, 0.05, s)
    step_with_rollouts(roles, optimizer, rollouts, adv, s, seed=0, step=0)
    named = {n: p.detach().clone() for n, p in roles.model.named_parameters() if p.requires_grad}
    named.update({f"value_head.{n}": p.detach().clone() for n, p in roles.value_head.named_parameters()})
    return named


def test_micro_batches_with_accumulation_give_the_same_update(tiny_model_dir, reward_spec):
    """8 rollouts x 1 micro-batch and 4 x 2 accumulated: the same parameters (dropout is off)."""
    roles = fresh_roles()
    s8 = settings(mini_batch_size=8, grad_accum=1)
    torch.manual_seed(2)
    queries = QUERIES
    rollouts = rollout(roles, FunctionScorer(reward_spec), queries, encode_queries(roles.tokenizer, queries), s8)
    initial_model = copy.deepcopy(roles.model.state_dict())
    initial_head = copy.deepcopy(roles.value_head.state_dict())
    before = {n: p.detach().clone() for n, p in roles.model.named_parameters() if p.requires_grad}

    def reset():
        roles.model.load_state_dict(initial_model)
        roles.value_head.load_state_dict(initial_head)

    a = run_update(roles, rollouts, s8)
    reset()
    b = run_update(roles, rollouts, settings(mini_batch_size=4, grad_accum=2))
    reset()
    c = run_update(roles, rollouts, settings(mini_batch_size=4, grad_accum=1))  # twice the optimizer steps

    moved = max((a[n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-3, "the update did not change the policy"
    worst = max((a[n] - b[n]).abs().max().item() for n in a)
    assert worst < 1e-5, f"8x1 and 4x2 differ by {worst}"
    assert max((a[n] - c[n]).abs().max().item() for n in a) > 1e-3, "the comparison cannot tell updates apart"


def test_update_raises_logprob_of_high_advantage_responses(tiny_model_dir, reward_spec):
    """One update must make the better-scored half of the batch more likely: fails if the sign is wrong."""
    roles = fresh_roles()
    s = settings(ppo_epochs=4, lr=3e-3, kl={"init_coef": 0.0})
    torch.manual_seed(3)
    r = rollout(roles, FunctionScorer(reward_spec), QUERIES, encode_queries(roles.tokenizer, QUERIES), s)
    old = (r.logprobs * r.response_mask).sum(1)
    run_update(roles, r, s)
    ids, mask, width = r.inputs(slice(None))
    with torch.no_grad():
        logits, _ = policy_forward(roles, ids, mask, width)
    new = (logprobs_from_logits(logits, ids[:, -width:], s.rollout.temperature) * r.response_mask[:, :width]).sum(1)
    order = torch.argsort(r.scores)
    low, high = order[: len(order) // 2], order[len(order) // 2 :]
    gain = new - old
    assert gain[high].mean() > gain[low].mean() + 0.1, (gain[high].mean(), gain[low].mean())


def test_ptx_term_fits_the_demonstrations(tiny_model_dir, reward_spec):
    """PPO-ptx: with a large gamma_ptx, updates lower the policy's NLL on the SFT demonstrations."""
    from pathlib import Path

    from align.data import load_examples
    from align.ppo.update import PtxBatches, ptx_loss

    roles = fresh_roles()
    data = str(Path(__file__).resolve().parents[2] / "examples" / "data" / "alpaca_tiny.json")
    ptx = PtxBatches(roles.tokenizer, load_examples(data), max_length=128, seed=0)
    ids, mask, labels = ptx.sample(8, key=12345)
    assert (labels[:, 0] == -100).all() and (labels != -100).any()  # prompt tokens carry no loss
    with torch.no_grad():
        before = float(ptx_loss(roles, ids, mask, labels))
    s = settings(ptx={"coef": 5.0, "data": data}, lr=1e-2, ppo_epochs=2, mini_batch_size=4, grad_accum=2)
    r = rollout(roles, FunctionScorer(reward_spec), QUERIES, encode_queries(roles.tokenizer, QUERIES), s)
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=s.lr, eps=s.adam_eps)
    stats = step_with_rollouts(roles, optimizer, r, estimate_advantages(r, 0.05, s), s, seed=0, step=0, ptx=ptx)
    with torch.no_grad():
        after = float(ptx_loss(roles, ids, mask, labels))
    assert stats["loss/ptx"] > 0 and after < before - 0.1, (before, after)


@pytest.mark.parametrize("adapter,value_model", [({"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "adapter"),
                                                 ({"type": "full"}, "head")], ids=["value-adapter", "full-policy"])
def test_other_role_layouts_train(tiny_model_dir, reward_spec, adapter, value_model):
    """value_model: adapter trains its own LoRA; a full policy trains every weight against a frozen copy."""
    from align.ppo.policy import ref_forward

    torch.manual_seed(0)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(**adapter), value_model=value_model)
    assert roles.ref_kind == ("copy" if adapter["type"] == "full" else "disable_adapter")
    s = settings(lr=1e-3)
    r = rollout(roles, FunctionScorer(reward_spec), QUERIES, encode_queries(roles.tokenizer, QUERIES), s)
    ids, mask, width = r.inputs(slice(None))
    ref_before = ref_forward(roles, ids, mask, width)
    before = {n: p.detach().clone() for n, p in roles.model.named_parameters() if p.requires_grad}
    after = run_update(roles, r, s)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    if value_model == "adapter":
        assert any(".value." in n for n in changed) and any(".default." in n for n in changed)
    else:
        assert len(changed) == len(before) == len(list(roles.model.parameters()))
    assert torch.equal(ref_forward(roles, ids, mask, width), ref_before)  # the ref_policy never moves


def test_responses_without_eos_get_the_missing_eos_penalty(tiny_model_dir, reward_spec):
    roles = fresh_roles()
    s = settings(rollout={"max_new_tokens": 3, "missing_eos_penalty": -1.0})
    torch.manual_seed(4)
    r = rollout(roles, FunctionScorer(reward_spec), QUERIES, encode_queries(roles.tokenizer, QUERIES), s)
    assert (~r.has_eos).sum() >= 6  # an untrained model rarely stops within 3 tokens
    assert torch.equal(r.scores[~r.has_eos], torch.full(((~r.has_eos).sum(),), -1.0))
    assert torch.equal(r.scores[r.has_eos], r.raw_scores[r.has_eos])
    assert r.raw_scores[~r.has_eos].ne(-1.0).all()
    assert r.response_mask.shape == (8, 3) and r.response_mask[~r.has_eos].all()
    # log-probs, values and ref log-probs are 0 wherever the response is padding
    pad = ~r.response_mask
    assert (r.logprobs[pad] == 0).all() and (r.ref_logprobs[pad] == 0).all() and (r.values[pad] == 0).all()


def test_entropy_bonus_raises_entropy(tiny_model_dir, tmp_path):
    from align.rl import entropy_from_logits, masked_mean

    (tmp_path / "flat.py").write_text("def zero(prompt, response):\n    return 0.0\n")
    roles = fresh_roles()
    s = settings(entropy_coef=1.0, kl={"init_coef": 0.0}, value={"coef": 0.0}, lr=1e-2, rollout={"temperature": 0.5})
    r = rollout(roles, FunctionScorer(f"{tmp_path / 'flat.py'}:zero"), QUERIES, encode_queries(roles.tokenizer, QUERIES), s)

    def entropy() -> float:
        ids, mask, width = r.inputs(slice(None))
        with torch.no_grad():
            logits, _ = policy_forward(roles, ids, mask, width)
        return float(masked_mean(entropy_from_logits(logits, s.rollout.temperature), r.response_mask[:, :width]))

    before = entropy()  # an untrained model is already near the maximum, ln(1024) = 6.93
    run_update(roles, r, s)
    assert entropy() > before + 2e-3  # scores are all 0 and kl_coef 0: only the bonus moves the policy
