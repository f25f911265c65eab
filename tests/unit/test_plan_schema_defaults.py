"""`align plan` follows the schema's defaults: a setting a recipe leaves out is planned at the value the
settings class gives it, read here from the class itself, so changing a default in the schema changes the
plan with it (the planner keeps no copies). Tiny Llama: h 64, i 128, 2 layers, 4 heads / 2 KV heads
(head_dim 16), vocab 1000; LoRA all-linear has r x 1,024 parameters per layer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from align.config import load_recipe
from align.data_gen.generate import SelfInstructSettings
from align.model_configs import Arch
from align.models import AdapterConfig
from align.plan import TrainSetup, kv_cache_bytes, plan_recipe
from align.plan.generation_stages import PROMPT_GUESS
from align.ppo.config import PPOSettings
from align.stages.eval import Config as EvalConfig
from align.stages.rank import Config as RankConfig
from align.teachers import TeacherConfig
from align.training import TrainConfig
from tests.conftest import write_llama_config

ARCH = Arch("hand", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            vocab_size=1000, tie_embeddings=False)  # what write_llama_config writes


def default(cls, name):
    """The schema's default of a field; dotted names walk into nested sections (rollout.batch_size)."""
    *sections, last = name.split(".")
    for section in sections:
        field = cls.model_fields[section]
        cls = field.annotation if field.default_factory is None else type(field.default_factory())
    return cls.model_fields[last].default


@pytest.fixture()
def base(tmp_path) -> str:
    return str(write_llama_config(tmp_path / "base"))


def plan_one(stage: str, section: dict, device: str = "cuda"):
    return plan_recipe({stage: section}, device)[0]


def kv_term(est) -> float:
    return next(t.bytes for t in est.terms if t.name.endswith("KV cache"))


def test_lora_rank_left_out_is_the_schema_default(base):
    r = default(AdapterConfig, "r")
    est = plan_one("sft", {"model": base, "data": "d.jsonl"}, device="cpu")
    assert est.term("adapter (lora)") == 2 * r * 1024 * 4  # 2 layers x r x 1,024 params x fp32
    assert any(f"{2 * r * 1024:,} params" in t.note for t in est.terms)
    other = plan_one("sft", {"model": base, "data": "d.jsonl", "adapter": {"r": r + 8}}, device="cpu")
    assert other.term("adapter (lora)") == 2 * (r + 8) * 1024 * 4  # the figure does follow r


def test_train_settings_left_out_are_the_schema_defaults(base):
    setup = TrainSetup(arch=ARCH)  # the arithmetic's own defaults are the schema's too
    assert (setup.batch_size, setup.seq_len, setup.grad_accum, setup.optim, setup.checkpointing) == (
        default(TrainConfig, "batch_size"), default(TrainConfig, "max_length"), default(TrainConfig, "grad_accum"),
        default(TrainConfig, "optim"), default(TrainConfig, "gradient_checkpointing"))
    assert setup.adapter == AdapterConfig()
    est = plan_one("sft", {"model": base, "data": "d.jsonl"})
    batch, length = default(TrainConfig, "batch_size"), default(TrainConfig, "max_length")
    assert any(f"{batch} sequences x {length} tokens per micro-batch" in n for n in est.notes)
    assert est.term(f"optimizer state ({default(TrainConfig, 'optim')})") > 0


def test_ppo_settings_left_out_are_the_schema_defaults(base):
    est = plan_one("ppo", {"policy": base, "reward": "m:f", "prompts": "p.jsonl"})
    rollouts, prompt, new = (default(PPOSettings, k) for k in ("rollout.batch_size", "rollout.max_prompt_length",
                                                                    "rollout.max_new_tokens"))
    assert default(PPOSettings, "rollout.generation_batch_size") is None  # None: all rollouts in one generate() call
    assert kv_term(est) == kv_cache_bytes(ARCH, rollouts, prompt + new, 2)  # bf16 on a GPU
    mini, accum, fwd = (default(PPOSettings, k) for k in ("mini_batch_size", "grad_accum", "rollout.forward_batch_size"))
    assert any(f"updates of {mini} x {accum}; {prompt} prompt + {new} response tokens" in n for n in est.notes)
    assert any(f"x {fwd} rollouts" in t.note for t in est.terms)
    assert ("value head" in [t.name for t in est.terms]) == (default(PPOSettings, "advantage.estimator") == "gae")


def test_self_instruct_token_budgets_are_the_schema_defaults(base):
    est = plan_one("self_instruct", {"teacher": base})
    new = max(default(SelfInstructSettings, "bootstrap.max_tokens"), default(SelfInstructSettings, "instances.max_tokens"))
    batch = default(TeacherConfig, "batch_size")
    assert kv_term(est) == kv_cache_bytes(ARCH, batch, 2 * PROMPT_GUESS + new, 2)
    assert any(f"teacher batch {batch}; in-context prompts assumed {2 * PROMPT_GUESS} tokens + {new} new" in n
               for n in est.notes)
    alpaca = plan_one("self_instruct", {"teacher": base, "method": "alpaca"})
    assert kv_term(alpaca) == kv_cache_bytes(ARCH, batch, 2 * PROMPT_GUESS
                                             + default(SelfInstructSettings, "alpaca.max_tokens"), 2)


def test_rank_and_eval_generation_settings_are_the_schema_defaults(base):
    rank = plan_one("rank", {"prompts": "p.jsonl", "policy": base, "judge": {"type": "gold", "function": "m:f"}})
    batch, k, new = (default(RankConfig, f) for f in ("batch_size", "k", "max_new_tokens"))
    assert kv_term(rank) == kv_cache_bytes(ARCH, batch * k, PROMPT_GUESS + new, 2)
    ev = plan_one("eval", {"policies": {"a": base}})
    batch, new = default(EvalConfig, "batch_size"), default(EvalConfig, "max_new_tokens")
    assert kv_term(ev) == kv_cache_bytes(ARCH, batch, PROMPT_GUESS + new, 2)


# --------------------------------------------------------------------------- suggestions stay valid recipes


SUGGEST_RECIPE = """
name: plan-suggest
sft:
  model: {{name: {base}}}
  data: d.jsonl
dpo:
  model: "@sft"
  data: pairs.jsonl
  method: kto
  train: {{batch_size: 2, max_length: 64}}
ppo:
  policy: "@sft"
  reward: "m:f"
  prompts: p.jsonl
  adapter: {{type: lora}}
  train: {{rollout: {{batch_size: 8}}, mini_batch_size: 2, value: {{model: adapter}}}}
"""


def test_every_suggestion_is_a_recipe_the_schema_accepts(base, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(SUGGEST_RECIPE.format(base=base))
    for est in plan_recipe(load_recipe(path), "cuda", budget=1):  # nothing fits in 1 byte: every knob is tried
        assert est.suggestions, est.stage
        for s in est.suggestions:
            load_recipe(path, s.overrides)  # raises AlignError on a setting the schema rejects
        if est.stage == "dpo":  # KTO needs 2 examples per micro-batch: no "batch_size=1" suggestion
            assert not any("dpo.train.batch_size=1" in s.overrides for s in est.suggestions)


def test_estimators_keep_no_defaults_of_their_own():
    """The estimators and the arithmetic read settings objects, never `mapping.get(key, default)`."""
    folder = Path(__file__).resolve().parents[2] / "align" / "plan"
    for name in ("training_stages.py", "generation_stages.py", "activations.py", "memory.py"):
        text = (folder / name).read_text()
        assert not re.search(r"\.get\(\s*[\"'][\w.]+[\"']\s*,", text), name
