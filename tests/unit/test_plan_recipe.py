"""`align plan` on whole recipes: each stage handler, suggestions re-estimated, the CLI."""

from __future__ import annotations

import pytest

from align.cli import main
from align.config import load_recipe
from align.plan import (
    CUDA_OVERHEAD,
    Planner,
    StageEstimate,
    TrainSetup,
    overhead_term,
    plan_recipe,
    training_terms,
    trl_tiled_head,
)
from tests.conftest import write_llama_config

RECIPE = """
name: plan-test
self_instruct:
  teacher: {{type: openai, model: gpt-4o-mini}}
sft:
  model: {{name: {base}}}
  data: "@self_instruct"
  adapter: {{type: lora, r: 8, dropout: 0.0}}
  train: {{batch_size: 2, max_length: 64}}
rank:
  prompts: "@self_instruct"
  policy: "@sft"
  judge: {{type: gold, function: "m:f"}}
  k: 3
reward:
  model: {base}
  data: "@rank"
  train: {{batch_size: 2, max_length: 64}}
ppo:
  policy: "@sft"
  reward: {{source: "@reward"}}
  prompts: "@self_instruct"
  train: {{mini_batch_size: 2, rollout: {{batch_size: 8, max_prompt_length: 32, max_new_tokens: 16}}}}
eval:
  policies: {{sft: "@sft", ppo: "@ppo"}}
  reward_model: "@reward"
"""


@pytest.fixture()
def recipe_file(tmp_path):
    base = write_llama_config(tmp_path / "base")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(base=base))
    return path


def plan(path, *overrides, device="cuda", budget=None) -> dict[str, StageEstimate]:
    return {e.stage: e for e in plan_recipe(load_recipe(path, list(overrides)).model_dump(), device, budget)}


def test_every_stage_gets_an_estimate(recipe_file):
    ests = plan(recipe_file)
    assert list(ests) == ["self_instruct", "sft", "rank", "reward", "ppo", "eval"]
    assert ests["self_instruct"].kind == "none" and ests["self_instruct"].total == 0
    assert {e.kind for e in ests.values()} == {"none", "training", "generation", "ppo"}


def test_sft_is_the_training_formula(recipe_file):
    ests = plan(recipe_file)
    planner = Planner(load_recipe(recipe_file).model_dump())
    arch, _ = planner.resolve(str(recipe_file.parent / "base"))
    setup = TrainSetup(arch=arch, adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                                           "target_modules": "all-linear", "num_virtual_tokens": 16},
                       batch_size=2, seq_len=64, head="lm-fused" if trl_tiled_head() else "lm-full")
    expected = StageEstimate("sft", "training", training_terms(setup) + overhead_term("cuda")).total
    assert ests["sft"].total == expected


def test_reward_scores_k_responses_with_a_scalar_head(recipe_file):
    est = plan(recipe_file)["reward"]
    assert est.term("scores (classifier head)") > 0 and est.term("logits") == 0
    # a sequence classifier has no lm_head: embedding 64,000 + 2 x 36,864 + norms 320, in bf16
    assert est.term("weights") == (64_000 + 73_728 + 320) * 2
    assert any("3 responses per prompt (rank.k)" in n for n in est.notes)


def test_ppo_shares_one_base(recipe_file):
    shared = plan(recipe_file)["ppo"]
    names = [t.name for t in shared.terms]
    assert "ref_policy adapter (frozen copy)" in names  # policy starts from the @sft adapter
    assert "reward_model adapter" in names  # the @reward LoRA rides on the same base
    assert sum(t.name.endswith("weights (bf16)") for t in shared.terms) == 1
    separate = plan(recipe_file, "ppo.reward.share_base=false")["ppo"]
    assert separate.term("reward_model weights") > 0
    assert separate.total > shared.total


def test_ppo_full_policy_keeps_a_frozen_copy(recipe_file):
    base = str(recipe_file.parent / "base")
    est = plan(recipe_file, f"ppo.policy={base}", "ppo.adapter.type=full", "ppo.reward.source=m:f")["ppo"]
    assert est.term("ref_policy (frozen copy) weights") == est.term("weights (bf16)") == 202_048 * 2
    assert est.term("reward_model") == 0  # a Python function scores


def test_ppo_value_adapter_adds_a_second_forward(recipe_file):
    head = plan(recipe_file)["ppo"]
    adapter = plan(recipe_file, "ppo.train.value.model=adapter")["ppo"]
    assert adapter.term("value_model activations") == pytest.approx(head.term("activations"), rel=0.05)
    assert adapter.total > head.total


def test_eval_loads_models_one_at_a_time(recipe_file):
    est = plan(recipe_file)["eval"]
    phases = est.phase_totals()
    assert set(phases) == {"policy sft", "policy ppo", "reward scoring"}
    assert est.total == CUDA_OVERHEAD + max(phases.values())


def test_suggestions_are_re_estimates_that_fit(recipe_file):
    budget = CUDA_OVERHEAD + 0.6 * (plan(recipe_file)["sft"].total - CUDA_OVERHEAD)
    sft = plan(recipe_file, budget=budget)["sft"]
    assert sft.total > budget and sft.suggestions
    assert any(s.fits for s in sft.suggestions)
    for s in sft.suggestions:  # each figure is the plan of the recipe with those overrides
        assert plan(recipe_file, *s.overrides)["sft"].total == pytest.approx(s.total)


def test_cpu_mode_has_no_cuda_overhead(recipe_file):
    est = plan(recipe_file, device="cpu")["sft"]
    assert est.term("framework overhead") == 0 and est.term("weights (fp32)") == 202_048 * 4


def test_cli_prints_tables_and_verdicts(recipe_file, capsys):
    assert main(["plan", str(recipe_file), "--gpu-memory", "520MiB"]) == 0
    out = capsys.readouterr().out
    assert "sft (training)" in out and "ppo (ppo)" in out
    assert "does NOT fit in 520 MiB" in out and "changes that reduce the peak" in out


def test_cli_reports_bad_sizes(recipe_file, capsys):
    assert main(["plan", str(recipe_file), "--gpu-memory", "lots"]) == 2
    assert "--gpu-memory 'lots'" in capsys.readouterr().err


def test_unknown_stages_are_read_by_what_they_hold(recipe_file):
    base = str(recipe_file.parent / "base")
    planner = Planner({})
    trained = planner.stage("distill", {"model": base, "train": {"batch_size": 1, "max_length": 32},
                                        "adapter": {"type": "lora", "r": 8}})
    assert trained.kind == "training" and trained.term("logits (loss)") == 32 * 1000 * 18  # full logits, bf16
    sampled = planner.stage("judge_all", {"judge": {"name": base}, "batch_size": 2, "max_new_tokens": 10,
                                          "max_prompt_length": 6})
    assert sampled.kind == "generation"
    assert sampled.term("KV cache") == 2 * 2 * 2 * 16 * 16 * 2 * 2  # 2 x L x kv_heads x head_dim x 16 tok x 2 x 2 B
    remote = planner.stage("label", {"teacher": {"type": "openai", "model": "gpt-4o"}})
    assert remote.kind == "none" and remote.total == 0
