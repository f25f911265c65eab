"""The runner replaces `@stage` references with paths before a stage runs: stages only ever see paths."""

from __future__ import annotations

import pytest

from align.errors import AlignError
from align.stages import StageResult, resolve_refs
from align.stages.eval import Config as EvalConfig
from align.stages.ppo import Config as PPOConfig

UPSTREAM = {
    "self_instruct": StageResult({"data": "/run/self_instruct/alpaca.json", "chat": "/run/self_instruct/chat.jsonl"}),
    "sft": StageResult({"model": "/run/sft/model"}),
    "reward": StageResult({"model": "/run/reward/model"}),
}


def test_nested_refs_become_paths_and_the_rest_is_untouched():
    cfg = PPOConfig.model_validate({
        "policy": "@sft", "reward": {"source": "@reward", "functions": [{"function": "m:f", "weight": 0.5}]},
        "prompts": "@self_instruct.chat", "train": {"ptx": {"coef": 0.1, "data": "@self_instruct"}, "steps": 3},
    })
    out = resolve_refs(cfg, UPSTREAM, "ppo")
    assert out.policy.name == "/run/sft/model" and out.reward.source == "/run/reward/model"
    assert out.prompts.path == "/run/self_instruct/chat.jsonl"  # a named output
    assert out.train.ptx.data.path == "/run/self_instruct/alpaca.json"  # @stage alone: the first output
    assert out.train.steps == 3 and out.reward.functions == cfg.reward.functions and out.adapter is cfg.adapter
    assert cfg.policy.name == "@sft" and cfg.train.ptx.data.path == "@self_instruct"  # the recipe's config is kept


def test_refs_inside_dicts_are_resolved():
    cfg = EvalConfig.model_validate({"policies": {"sft": "@sft", "base": "tiny-llama"}, "reference": "@sft",
                                     "reward_model": "@reward", "judge": "llm", "llm_judge": {"teacher": "@sft"}})
    out = resolve_refs(cfg, UPSTREAM, "eval")
    assert out.policies == {"sft": "/run/sft/model", "base": "tiny-llama"}
    assert out.reference == "/run/sft/model" and out.reward_model == "/run/reward/model"
    assert out.llm_judge.teacher.model == "/run/sft/model"


def test_config_without_refs_is_returned_as_is():
    cfg = EvalConfig.model_validate({"policies": {"base": "tiny-llama"}})
    assert resolve_refs(cfg, {}, "eval") is cfg


def test_unknown_output_and_unfinished_stage_name_the_key():
    cfg = EvalConfig.model_validate({"policies": {"sft": "@sft.adapter"}})
    with pytest.raises(AlignError, match=r"eval\.policies\.sft: '@sft\.adapter': stage sft has no output 'adapter'; "
                                         r"its outputs are model"):
        resolve_refs(cfg, UPSTREAM, "eval")
    with pytest.raises(AlignError, match=r"eval\.reference: '@dpo' needs the output of stage dpo, which has not "
                                         r"completed"):
        resolve_refs(EvalConfig.model_validate({"policies": {"a": "x"}, "reference": "@dpo"}), UPSTREAM, "eval")
