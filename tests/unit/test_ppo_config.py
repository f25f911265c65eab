"""PPO pieces that need no model: settings validation, prompt sources, reward functions, logs, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from align.config import load_recipe
from align.errors import AlignError
from align.ppo.checkpoint import checkpoints, latest_checkpoint, truncate_jsonl
from align.ppo.config import PPOSettings, RewardConfig
from align.ppo.queries import QuerySampler, last_user_message, load_queries
from align.ppo.scoring import FunctionScorer, is_function_spec, load_function
from align.stages.ppo import Config, summarize

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("rollout", "advantage", "kl", "value", "ptx", "log")


# --------------------------------------------------------------------------- settings


def test_batch_must_split_into_optimizer_batches():
    assert PPOSettings(rollout={"batch_size": 16}, mini_batch_size=4, grad_accum=2).updates_per_epoch == 2
    with pytest.raises(ValidationError, match=r"multiple of mini_batch_size \* grad_accum"):
        PPOSettings(rollout={"batch_size": 10}, mini_batch_size=4, grad_accum=1)


def test_ptx_needs_data():
    with pytest.raises(ValidationError, match="ptx.data"):
        PPOSettings(ptx={"coef": 0.5})
    assert PPOSettings(ptx={"coef": 0.5, "data": "examples/data/alpaca_tiny.json"}).ptx.data.path.endswith(".json")


def test_stage_config_rejects_unknown_keys_and_takes_string_shorthands():
    cfg = Config.model_validate({"policy": "@sft", "reward": "@reward", "prompts": "p.jsonl"})
    assert cfg.policy.name == "@sft" and cfg.reward.source == "@reward" and cfg.reward.share_base
    assert cfg.prompts.path == "p.jsonl" and cfg.train.kl.estimator == "k1"
    with pytest.raises(ValidationError):
        Config.model_validate({"policy": "x", "reward": "y", "prompts": "z", "train": {"stepz": 3}})
    with pytest.raises(ValidationError):
        RewardConfig.model_validate({"source": "m:f", "shared": True})
    # every setting documents itself (shown by `align validate` and in docs)
    for model in (Config, PPOSettings, RewardConfig, *(PPOSettings.model_fields[s].annotation for s in SECTIONS)):
        assert all(field.description for field in model.model_fields.values()), model.__name__


def test_ppo_tiny_recipe_validates():
    recipe = load_recipe(REPO / "recipes" / "ppo-tiny.yaml")
    assert recipe.ppo.policy.name == "@sft" and recipe.ppo.reward.source == "@reward"
    s = recipe.ppo.train
    assert s.rollout.batch_size % (s.mini_batch_size * s.grad_accum) == 0


# --------------------------------------------------------------------------- prompt sources


def test_prompt_only_and_full_records_become_queries(tmp_path):
    records = [
        {"prompt": "Name a color."},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"instruction": "Translate.", "input": "Bonjour"},
        {"instruction": "Summarize.", "input": "", "output": "ignored"},
        {"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                      {"role": "user", "content": "Q2"}]},
        {"instruction": "Tell a fact", "instances": [{"input": "a", "output": "x"}, {"input": "b", "output": "y"}]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    queries = load_queries(str(path))
    assert [last_user_message(q) for q in queries] == [
        "Name a color.", "Hi", "Translate.\n\nBonjour", "Summarize.", "Q2", "Tell a fact\n\na", "Tell a fact\n\nb"]
    assert queries[1][0] == {"role": "system", "content": "Be brief."}
    assert all(q[-1]["role"] == "user" for q in queries)


def test_text_files_max_samples_and_system_prompt(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\nthird\n")
    queries = load_queries({"path": str(tmp_path / "p.txt"), "max_samples": 2, "system_prompt": "S"})
    assert queries == [[{"role": "system", "content": "S"}, {"role": "user", "content": "first"}],
                       [{"role": "system", "content": "S"}, {"role": "user", "content": "second"}]]


def test_alpaca_sample_data_loads():
    queries = load_queries(str(REPO / "examples" / "data" / "alpaca_tiny.json"))
    assert len(queries) >= 8 and all(len(q) == 1 for q in queries)


@pytest.mark.parametrize("record,message", [
    ({"prompt": ""}, "empty prompt"),
    ({"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "end with a user"),
    ({"foo": 1}, "unrecognised record"),
])
def test_bad_prompt_records_name_file_and_line(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(AlignError, match=message) as err:
        load_queries(str(path))
    assert f"{path}:2" in str(err.value)


def test_sampler_is_deterministic_and_covers_every_prompt_each_pass():
    sampler = QuerySampler(n=10, batch_size=4, seed=3)
    first_pass = [i for step in range(5) for i in sampler.indices(step)][:10]
    assert sorted(first_pass) == list(range(10))
    assert QuerySampler(10, 4, 3).indices(7) == sampler.indices(7)  # a resumed run sees the same batch
    assert QuerySampler(10, 4, 4).indices(0) != sampler.indices(0) or QuerySampler(10, 4, 4).indices(1) != sampler.indices(1)
    with pytest.raises(AlignError):
        QuerySampler(0, 4, 0)


# --------------------------------------------------------------------------- reward functions


def test_function_specs(tmp_path):
    (tmp_path / "r.py").write_text("def f(prompt, response):\n    return len(prompt) + len(response)\n"
                                   "def bad(prompt, response):\n    return 'high'\n"
                                   "def nan(prompt, response):\n    return float('nan')\n")
    assert is_function_spec("pkg.mod:fn") and is_function_spec(f"{tmp_path}/r.py:f")
    assert not is_function_spec("runs/x/reward") and not is_function_spec("mod:") and not is_function_spec(str(tmp_path))
    scorer = FunctionScorer(f"{tmp_path}/r.py:f")
    assert scorer.score([[{"role": "user", "content": "ab"}]], ["xyz"]) == [5.0]
    with pytest.raises(AlignError, match="expected a number"):
        FunctionScorer(f"{tmp_path}/r.py:bad").score([[{"role": "user", "content": "a"}]], ["b"])
    with pytest.raises(AlignError, match="finite"):
        FunctionScorer(f"{tmp_path}/r.py:nan").score([[{"role": "user", "content": "a"}]], ["b"])
    with pytest.raises(AlignError, match="has no attribute 'missing'"):
        load_function(f"{tmp_path}/r.py:missing")
    with pytest.raises(AlignError, match="cannot import"):
        load_function("no_such_module_xyz:f")
    assert load_function("align.preferences.judges:gold_clean_text")("p", "clean") == 1.0


# --------------------------------------------------------------------------- logs and checkpoints


def test_truncate_jsonl_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 4, 5)))
    truncate_jsonl(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    truncate_jsonl(tmp_path / "missing.jsonl", 3)  # nothing to do


def test_only_complete_checkpoints_count(tmp_path):
    for name, complete in (("step-2", True), ("step-10", True), ("step-12", False), (".tmp-step-14-abc", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "state.json").write_text("{}")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2", "step-10"]
    assert latest_checkpoint(tmp_path).name == "step-10"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_summary_reports_first_and_last_scores():
    history = [{"step": i, "objective/scores": float(i), "objective/kl": i / 10, "objective/kl_coef": 0.1,
                "eos/fraction": 1.0, "time/step_s": 0.5, "objective/gold": 1.0 - i / 10} for i in range(1, 11)]
    m = summarize(history)
    assert m["steps"] == 10 and m["first_score"] == 1.0 and m["last_score"] == 10.0
    assert m["objective/kl"] == m["final_kl"] == 1.0 and m["first_gold"] == 0.9 and m["gold_score"] == 0.0
    assert summarize([]) == {"steps": 0}


def test_critic_free_estimators_need_groups_and_pick_their_loss_aggregation():
    with pytest.raises(ValidationError, match="group_size >= 2"):
        PPOSettings(advantage={"estimator": "rloo"})
    with pytest.raises(ValidationError, match="multiple of rollout.group_size"):
        PPOSettings(advantage={"estimator": "grpo"}, rollout={"batch_size": 16, "group_size": 3})
    with pytest.raises(ValidationError, match="dr_grpo"):
        PPOSettings(advantage={"estimator": "rloo", "dr_grpo": True}, rollout={"group_size": 4})
    assert PPOSettings().aggregation == "token" and PPOSettings().needs_value_model
    grpo = PPOSettings(advantage={"estimator": "grpo"}, rollout={"group_size": 4})
    assert grpo.aggregation == "sequence" and not grpo.needs_value_model and grpo.queries_per_step == 4
    assert PPOSettings(advantage={"estimator": "grpo", "dr_grpo": True}, rollout={"group_size": 4}).aggregation == "constant"
    assert PPOSettings(advantage={"estimator": "rloo"}, rollout={"group_size": 4},
                       loss_aggregation="sequence").aggregation == "sequence"


def test_group_sampler_keeps_groups_on_one_process():
    from align.ppo.update import rows_per_process

    s = PPOSettings(advantage={"estimator": "rloo"}, rollout={"batch_size": 8, "group_size": 4},
                    mini_batch_size=4)  # 2 queries per step
    assert rows_per_process(s, 2) == 2
    with pytest.raises(AlignError, match="queries per step"):
        rows_per_process(PPOSettings(advantage={"estimator": "rloo"}, rollout={"batch_size": 8, "group_size": 8},
                                     mini_batch_size=4), 2)
