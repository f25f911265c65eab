"""`align plan` for the eval stage (shared base, KL sampling, eval.model settings) and the reward stage's K,
checked against figures computed by hand for a tiny Llama (h 64, i 128, 2 layers, 4 heads / 2 KV heads, vocab 1000).

Hand arithmetic used below:
- base weights: embeddings 64,000 + lm_head 64,000 + norms 320 + 2 layers x 36,864 linear = 202,048 params;
  a sequence classifier has no lm_head: 138,048 params.
- NF4 (double quant) linear bytes per layer: q, o (4,096 weights) 2,048 + 64 + 4 + 2,048 = 4,164 each;
  k, v (2,048) 3,108 each; gate, up, down (8,192) 6,276 each -> 33,372 per layer, 66,744 for both.
- LoRA all-linear params per layer: r x (in + out) summed over q (64, 64), k (64, 32), v (64, 32), o (64, 64),
  gate (64, 128), up (64, 128), down (128, 64) = r x 1,024; 2 layers: r=8 -> 16,384, r=16 -> 32,768.
"""

from __future__ import annotations

import json

import pytest

from align.config import load_recipe
from align.errors import AlignError
from align.plan import CUDA_OVERHEAD, Planner, plan_recipe
from tests.conftest import write_llama_config

RECIPE = """
name: plan-eval
sft:
  model: {{name: {base}}}
  data: data.jsonl
  adapter: {{type: lora, r: 8, dropout: 0.0}}
  train: {{batch_size: 2, max_length: 64}}
rank:
  prompts: data.jsonl
  policy: "@sft"
  judge: {{type: gold, function: "m:f"}}
  k: 3
reward:
  model: {{name: {base}}}
  data: "@rank"
  train: {{batch_size: 2, max_length: 64}}
ppo:
  policy: "@sft"
  reward: {{source: "@reward"}}
  prompts: data.jsonl
  train: {{mini_batch_size: 2, rollout: {{batch_size: 8, max_prompt_length: 32, max_new_tokens: 16}}}}
eval:
  policies: {{sft: "@sft", ppo: "@ppo"}}
  reference: "@sft"
  reward_model: "@reward"
"""
BASE_BF16 = 202_048 * 2
LORA_R8 = 16_384 * 4  # peft keeps loaded adapters in fp32
NF4_LINEARS = 66_744


@pytest.fixture()
def recipe_file(tmp_path):
    base = write_llama_config(tmp_path / "base")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(base=base))
    return path


def recipe_of(path, *overrides) -> dict:
    return load_recipe(path, list(overrides)).model_dump()


def estimate(recipe: dict, stage: str, **kw):
    return {e.stage: e for e in plan_recipe(recipe, "cuda", **kw)}[stage]


def phase_terms(est, phase) -> dict[str, float]:
    return {t.name: t.bytes for t in est.terms if t.phase == phase}


# --------------------------------------------------------------------------- eval


def test_eval_shares_one_base_and_samples_only_policies_that_are_not_the_reference(recipe_file):
    est = estimate(recipe_of(recipe_file), "eval")
    phases = est.phase_totals()
    assert set(phases) == {"policy sft", "policy ppo", "policy ppo KL", "reward scoring"}  # sft IS the reference
    kl = phase_terms(est, "policy ppo KL")
    # one bf16 base, the @sft adapter and the @ppo adapter (PPO trains @sft's r=8 adapter further)
    assert kl["weights (bf16)"] == BASE_BF16
    assert kl["adapter @sft (loaded)"] == kl["adapter @ppo (loaded)"] == LORA_R8
    assert not any(name.startswith("reference (KL)") for name in kl)  # no second copy for the reference
    # 1 sample x 32 prompts per generate call, 128 new tokens; the reference's forward is the larger buffer:
    # logits 32 x 129 x 1000 x 2 B + fp32 log-softmax 2 x 32 x 128 x 1000 x 4 B + one layer's intermediates
    # 32 x (256 + 128) x (3 x 128 + 4 x 64) x 2 B
    assert kl["KL: reference log-probs"] == 32 * 129 * 1000 * 2 + 2 * 32 * 128 * 1000 * 4 + 32 * 384 * 640 * 2
    assert phases["policy ppo KL"] == BASE_BF16 + 2 * LORA_R8 + 56_752_640
    assert est.total == CUDA_OVERHEAD + 56_752_640 + BASE_BF16 + 2 * LORA_R8


def test_eval_reward_model_loads_as_trained_unless_eval_model_says(recipe_file):
    recipe = recipe_of(recipe_file)
    rm = phase_terms(estimate(recipe, "eval"), "reward scoring")
    # load_reward_model: fp32, unquantized base (the reward stage trained without quantization)
    assert rm["reward_model weights (fp32)"] == 138_048 * 4
    assert rm["reward_model adapter"] == 32_768 * 4  # the reward stage's default r=16
    assert rm["reward_model scoring forward"] == 8 * 64 * 640 * 4  # 8 rows x reward.train.max_length in fp32
    recipe["reward"]["model"]["quantization"] = "4bit"  # a QLoRA reward adapter: scored on its 4-bit base
    rm = phase_terms(estimate(recipe, "eval"), "reward scoring")
    assert rm["reward_model weights (NF4+double quant)"] == 64_320 * 4 + NF4_LINEARS  # embeddings/norms fp32
    recipe["eval"]["model"] = {"quantization": "4bit"}  # eval.model wins: bf16 compute on a GPU
    rm = phase_terms(estimate(recipe, "eval"), "reward scoring")
    assert rm["reward_model weights (NF4+double quant)"] == 64_320 * 2 + NF4_LINEARS


def test_eval_model_quantizes_the_policies(recipe_file):
    est = estimate(recipe_of(recipe_file, "eval.model.quantization=4bit"), "eval")
    sft = phase_terms(est, "policy sft")
    assert sft["weights (NF4+double quant)"] == 128_320 * 2 + NF4_LINEARS  # embeddings + lm_head + norms in bf16


def test_eval_reference_on_another_base_is_loaded_beside_each_policy(recipe_file, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True}))
    est = estimate(recipe_of(recipe_file, f"eval.reference={other}"), "eval")
    assert set(est.phase_totals()) == {"policy sft", "policy sft KL", "policy ppo", "policy ppo KL", "reward scoring"}
    # 1 layer, tied embeddings: 64,000 + 36,864 + 3 x 64 norms = 101,056 params in bf16
    assert phase_terms(est, "policy sft")["reference (KL) weights (bf16)"] == 101_056 * 2


def test_no_kl_phases_without_samples(recipe_file):
    est = estimate(recipe_of(recipe_file, "eval.kl_samples=0"), "eval")
    assert set(est.phase_totals()) == {"policy sft", "policy ppo", "reward scoring"}


def test_eval_suggests_4bit_through_eval_model(recipe_file):
    recipe = recipe_of(recipe_file)
    full = estimate(recipe, "eval")
    budget = full.total - 1
    est = {e.stage: e for e in plan_recipe(recipe, "cuda", budget)}["eval"]
    four = next(s for s in est.suggestions if s.label.startswith("4-bit"))
    assert four.overrides == ["eval.model.quantization=4bit"]
    assert four.total == estimate(recipe_of(recipe_file, *four.overrides), "eval").total < full.total


# --------------------------------------------------------------------------- reward K


def scores_bytes(est) -> float:
    """The classifier head term: batch x K x max_length tokens x 4 B (2 prompts x 64 tokens here)."""
    return est.term("scores (classifier head)")


def test_reward_k_is_rank_k_only_for_rank_data(recipe_file):
    est = estimate(recipe_of(recipe_file), "reward")
    assert scores_bytes(est) == 2 * 3 * 64 * 4 and any("3 responses per prompt (rank.k)" in n for n in est.notes)
    # a hub dataset of pairs (e.g. Anthropic HH) with a rank stage still in the recipe: K = 2, not rank.k
    est = estimate(recipe_of(recipe_file, "reward.data=Anthropic/hh-rlhf"), "reward")
    assert scores_bytes(est) == 2 * 2 * 64 * 4 and any("2 responses per prompt" in n for n in est.notes)


def test_reward_k_of_a_local_rankings_file_is_its_largest_prompt_group(recipe_file, tmp_path):
    data = tmp_path / "rankings.jsonl"
    rows = [
        {"prompt": "a", "responses": ["1", "2", "3", "4"], "ranking": [0, 1, 2, 3]},
        {"prompt": "a", "chosen": "5", "rejected": "1"},  # same prompt: merged into one group of 5
        {"prompt": "b", "chosen": "x", "rejected": "y"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    est = estimate(recipe_of(recipe_file, f"reward.data={data}"), "reward")
    assert scores_bytes(est) == 2 * 5 * 64 * 4
    assert any(f"5 responses per prompt (largest prompt group in {data})" in n for n in est.notes)
    est = estimate(recipe_of(recipe_file, f"reward.data={data}", "reward.max_records=1"), "reward")
    assert scores_bytes(est) == 2 * 4 * 64 * 4  # only the first record is read


def test_reward_k_reads_the_file_with_the_stages_bad_record_tolerance(recipe_file, tmp_path):
    """A file the reward stage trains on (one unusable record in 101, within max_bad_records) is a file the
    planner reads: K = 4 from its rankings, not the pairs fallback."""
    data = tmp_path / "rankings.jsonl"
    rows = [{"prompt": f"p{i}", "responses": ["1", "2", "3", "4"], "ranking": [0, 1, 2, 3]} for i in range(100)]
    rows.insert(50, {"prompt": "bad", "responses": ["1", "2"], "ranking": [0, 7]})  # ranks a response it lacks
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    est = estimate(recipe_of(recipe_file, f"reward.data={data}", "reward.max_bad_records=0.02"), "reward")
    assert scores_bytes(est) == 2 * 4 * 64 * 4
    assert any(f"4 responses per prompt (largest prompt group in {data})" in n for n in est.notes)
    est = estimate(recipe_of(recipe_file, f"reward.data={data}", "reward.max_bad_records=0"), "reward")
    assert scores_bytes(est) == 2 * 2 * 64 * 4 and any("unreadable" in n for n in est.notes)


def test_reward_k_explicit_setting_wins(recipe_file):
    est = estimate(recipe_of(recipe_file, "reward.data=Anthropic/hh-rlhf"), "reward", reward_k=9)
    assert scores_bytes(est) == 2 * 9 * 64 * 4 and any("(set explicitly)" in n for n in est.notes)
    with pytest.raises(AlignError, match="at least 2"):
        Planner({}, reward_k=1)
