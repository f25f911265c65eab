"""value_init: reward (the value model starts as the reward model) and reward models summed with checkers."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig
from align.ppo.config import PPOSettings, RewardConfig, RewardTerm
from align.ppo.policy import REWARD_ADAPTER, VALUE_ADAPTER, load_roles, policy_forward
from align.ppo.rollout import left_pad
from align.ppo.scoring import SharedBaseRewardScorer, WeightedSumScorer, load_scorer, start_value_from_reward
from align.preferences.reward_model import encode
from tests.conftest import make_reward_adapter
from tests.integration.test_ppo_shared_base import QUERIES, RESPONSES, perturb_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


def roles_and_scorer(tiny_model_dir, tmp_path, cfg: dict | None = None, value_model: str = "adapter"):
    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir, mean=0.25)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=8, alpha=16, dropout=0.0,
                                                                     target_modules=["q_proj", "v_proj"]),
                       value_model=value_model)
    perturb_adapter(roles.model)  # a policy that differs from the base
    scorer = load_scorer(RewardConfig(source=str(reward_dir), **(cfg or {})), str(reward_dir), roles)
    return roles, scorer


def values_after_each_text(roles, scorer) -> torch.Tensor:
    """The value predicted after the last token of each reward-model text (one extra token appended)."""
    rows = [encode(scorer.tokenizer, q, r, "chat", 64)["input_ids"] + [roles.tokenizer.eos_token_id]
            for q, r in zip(QUERIES, RESPONSES, strict=True)]
    ids, mask = left_pad(rows, roles.tokenizer.pad_token_id)
    with torch.no_grad():
        return policy_forward(roles, ids, mask, 1)[1][:, 0]


def test_initial_values_are_the_reward_models_scores(tiny_model_dir, tmp_path):
    roles, scorer = roles_and_scorer(tiny_model_dir, tmp_path)
    assert isinstance(scorer, SharedBaseRewardScorer)
    ids, mask = left_pad([encode(roles.tokenizer, QUERIES[0], RESPONSES[0], "chat", 64)["input_ids"]],
                         roles.tokenizer.pad_token_id)
    with torch.no_grad():
        logits_before, values_before = policy_forward(roles, ids, mask, 4)
    assert torch.count_nonzero(values_before) == 0  # the default start: a zero head

    start_value_from_reward(roles, scorer)
    scores = torch.tensor(scorer.score(QUERIES, RESPONSES))  # raw − mean, as PPO's reward uses them
    assert scores.std() > 1e-3
    assert torch.allclose(values_after_each_text(roles, scorer), scores, atol=1e-5)
    with torch.no_grad():
        logits_after = policy_forward(roles, ids, mask, 4)[0]
    assert torch.equal(logits_before, logits_after)  # the policy is untouched
    params = dict(roles.model.named_parameters())
    value = {n: p for n, p in params.items() if f".{VALUE_ADAPTER}." in n}
    assert value and all(p.requires_grad for p in value.values())  # the value adapter trains ...
    assert all(torch.equal(p, params[n.replace(f".{VALUE_ADAPTER}.", f".{REWARD_ADAPTER}.")]) for n, p in value.items())
    assert not any(p.requires_grad for n, p in params.items() if f".{REWARD_ADAPTER}." in n)  # ... the reward does not
    assert any("starts as the reward model" in note for note in roles.notes)


def test_value_start_scales_with_the_reward_models_weight_in_a_sum(tiny_model_dir, tmp_path, reward_spec):
    roles, scorer = roles_and_scorer(tiny_model_dir, tmp_path,
                                     {"weight": 2.0, "functions": [{"function": reward_spec, "weight": 0.5}]})
    assert isinstance(scorer, WeightedSumScorer)
    rm = scorer.parts[0][2]
    rm_scores = torch.tensor(rm.score(QUERIES, RESPONSES))
    frac_e = torch.tensor([sum(c == "e" for c in r) / len(r) for r in RESPONSES])
    # the sum: 2 · reward model + 0.5 · the checker
    assert torch.allclose(torch.tensor(scorer.score(QUERIES, RESPONSES)), 2 * rm_scores + 0.5 * frac_e, atol=1e-6)
    start_value_from_reward(roles, scorer)
    assert torch.allclose(values_after_each_text(roles, rm), 2 * rm_scores, atol=1e-5)


def test_value_start_needs_an_adapter_value_model_and_a_shared_reward_model(tiny_model_dir, tmp_path, reward_spec):
    with pytest.raises(ValidationError, match="value.init: reward needs value.model: adapter"):
        PPOSettings(value={"init": "reward"})
    assert PPOSettings(value={"init": "reward", "model": "adapter"}).value.init == "reward"
    roles, scorer = roles_and_scorer(tiny_model_dir, tmp_path, value_model="head")
    with pytest.raises(AlignError, match="needs value.model: adapter"):
        start_value_from_reward(roles, scorer)
    roles = load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0), value_model="adapter")
    function = load_scorer(RewardConfig(source=reward_spec, functions=[RewardTerm(function=reward_spec)]),
                           reward_spec, roles)
    with pytest.raises(AlignError, match="needs a reward model that shares the policy's base"):
        start_value_from_reward(roles, function)


def test_ppo_stage_runs_with_value_init_and_resumes(tiny_model_dir, tmp_path):
    from align.stages import StageContext
    from align.stages.ppo import Config, run

    reward_dir = make_reward_adapter(tmp_path / "rm", tiny_model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q[-1]["content"]}) + "\n" for q in QUERIES))
    settings = {"steps": 2, "mini_batch_size": 2, "ppo_epochs": 1, "save_steps": 1,
                "rollout": {"batch_size": 4, "max_new_tokens": 6}, "value": {"model": "adapter", "init": "reward"},
                "report_to": ["none"], "log": {"progress": False}}
    cfg = Config.model_validate({"policy": "tiny-llama", "reward": str(reward_dir), "prompts": str(prompts),
                                 "adapter": {"r": 4, "alpha": 8, "dropout": 0.0}, "train": settings})
    stage_dir = tmp_path / "ppo"
    stage_dir.mkdir()
    ctx = StageContext(name="ppo", stage_dir=stage_dir, run_dir=tmp_path, seed=0, upstream={})
    result = run(cfg, ctx)
    assert result.metrics["steps"] == 2 and any("starts as the reward model" in n for n in result.metrics["roles"])
    first = [json.loads(line) for line in (stage_dir / "stats.jsonl").read_text().splitlines()]
    # resume from step 1: the value adapter shaped like the reward adapter takes the checkpoint's weights back
    import shutil

    shutil.rmtree(stage_dir / "checkpoints" / "step-2")
    again = run(cfg, ctx)
    assert again.metrics["resumed_from"].endswith("step-1")
    second = [json.loads(line) for line in (stage_dir / "stats.jsonl").read_text().splitlines()]
    assert len(second) == 2 and second[0] == first[0]
