"""Recipes: every shipped recipe validates; bad recipes fail with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.config import apply_override, load_recipe, resolve_references
from align.errors import AlignError

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name


def test_recipes_exist():
    assert len(RECIPES) >= 1


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


GOOD = """\
name: t
vars:
  base: tiny-llama
sft:
  model: ${vars.base}
  data: examples/data/alpaca_tiny.json
  train:
    lr: 1.0e-3
"""


def test_references_and_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), ["sft.train.lr=5e-4", "sft.train.batch_size=2"])
    assert recipe.sft.model.name == "tiny-llama"
    assert recipe.sft.train.lr == pytest.approx(5e-4)
    assert recipe.sft.train.batch_size == 2


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path, GOOD.replace("    lr: 1.0e-3", "    lrr: 1.0e-3"))
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:8" in msg
    assert "sft.train.lrr" in msg
    assert "did you mean 'lr'" in msg


def test_unknown_stage_suggests(tmp_path):
    with pytest.raises(AlignError, match=r"sfft: unknown key \(did you mean 'sft'\?\)"):
        load_recipe(write(tmp_path, GOOD + "sfft: {}\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(AlignError) as err:
        load_recipe(write(tmp_path, GOOD.replace("lr: 1.0e-3", "lr: fast")))
    msg = str(err.value)
    assert "sft.train.lr" in msg and "'fast'" in msg and "number" in msg


def test_missing_required_key(tmp_path):
    with pytest.raises(AlignError, match=r"sft.data: required key is missing"):
        load_recipe(write(tmp_path, "name: t\nsft:\n  model: tiny-llama\n"))


def test_missing_stage_input(tmp_path):
    text = GOOD.replace("data: examples/data/alpaca_tiny.json", "data: '@self_instruct'")
    with pytest.raises(AlignError) as err:
        load_recipe(write(tmp_path, text))
    assert "'@self_instruct'" in str(err.value) and "does not have" in str(err.value)


def test_stage_input_typo(tmp_path):
    text = GOOD.replace("data: examples/data/alpaca_tiny.json", "data: '@self_instrct'")
    with pytest.raises(AlignError, match="did you mean 'self_instruct'"):
        load_recipe(write(tmp_path, text))


def test_bad_override_syntax(tmp_path):
    with pytest.raises(AlignError, match="expected KEY=VALUE"):
        load_recipe(write(tmp_path, GOOD), ["sft.train.lr"])


def test_override_into_scalar(tmp_path):
    with pytest.raises(AlignError, match="sft.model.name is a str"):
        load_recipe(write(tmp_path, GOOD), ["sft.model.name.x=1"])


def test_override_unknown_key_suggests(tmp_path):
    with pytest.raises(AlignError, match="did you mean 'batch_size'"):
        load_recipe(write(tmp_path, GOOD), ["sft.train.batch_sise=2"])


def test_reference_to_missing_key(tmp_path):
    with pytest.raises(AlignError, match=r"\$\{vars.nope\} points to no key"):
        load_recipe(write(tmp_path, GOOD.replace("${vars.base}", "${vars.nope}")))


def test_circular_reference():
    with pytest.raises(AlignError, match="circular"):
        resolve_references({"a": "${b}", "b": "${a}"})


def test_env_reference(monkeypatch):
    monkeypatch.setenv("ALIGN_TEST_MODEL", "x")
    out = resolve_references({"a": "${env:ALIGN_TEST_MODEL}", "b": "${env:ALIGN_UNSET_VAR,dflt}", "c": "m-${a}"})
    assert out == {"a": "x", "b": "dflt", "c": "m-x"}


def test_embedded_reference_keeps_type():
    out = resolve_references({"n": 3, "m": "${n}", "s": "v${n}"})
    assert out["m"] == 3 and out["s"] == "v3"


def test_no_stages(tmp_path):
    with pytest.raises(AlignError, match="no stages"):
        load_recipe(write(tmp_path, "name: empty\n"))


def test_invalid_yaml(tmp_path):
    with pytest.raises(AlignError, match="not valid YAML"):
        load_recipe(write(tmp_path, "sft: [unclosed\n"))


def test_apply_override_creates_sections():
    raw: dict = {}
    apply_override(raw, "sft.train.lr=0.1", "x")
    assert raw == {"sft": {"train": {"lr": 0.1}}}


def test_cli_validate_reports_error(tmp_path, capsys):
    from align.cli import main

    path = write(tmp_path, GOOD.replace("lr:", "lrr:"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "did you mean 'lr'" in err
    assert main(["validate", str(write(tmp_path, GOOD))]) == 0


def test_override_into_shorthand_model_and_data(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), ["sft.model.quantization=4bit", "sft.data.max_samples=3"])
    assert recipe.sft.model.name == "tiny-llama" and recipe.sft.model.quantization == "4bit"
    assert recipe.sft.data.path == "examples/data/alpaca_tiny.json" and recipe.sft.data.max_samples == 3


def test_override_under_any_string_shorthand(tmp_path):
    """Every section a plain string may stand for (align.sections.Shorthand) takes overrides under it."""
    text = ("name: t\nself_instruct: {teacher: tiny-llama}\nppo: {policy: tiny-llama, reward: \"m:f\", "
            "prompts: examples/data/alpaca_tiny.json}\nrank: {policy: tiny-llama, prompts: examples/data/alpaca_tiny.json, "
            "judge: {type: llm, teacher: tiny-llama}}\n")
    recipe = load_recipe(write(tmp_path, text), ["ppo.reward.batch_size=8", "self_instruct.teacher.batch_size=2",
                                                 "rank.judge.teacher.batch_size=3", "rank.policy.precision=fp32"])
    assert recipe.ppo.reward.source == "m:f" and recipe.ppo.reward.batch_size == 8
    assert recipe.self_instruct.teacher.model == "tiny-llama" and recipe.self_instruct.teacher.batch_size == 2
    assert recipe.rank.judge.teacher.model == "tiny-llama" and recipe.rank.judge.teacher.batch_size == 3
    assert recipe.rank.policy.name == "tiny-llama" and recipe.rank.policy.precision == "fp32"
    with pytest.raises(AlignError, match="ppo.train.ptx.data.path: required key is missing"):
        load_recipe(write(tmp_path, text), ["ppo.train.ptx.data.max_samples=3"])
    with pytest.raises(AlignError, match="ppo.prompts.path is a str in .*, not a section"):
        load_recipe(write(tmp_path, text), ["ppo.prompts.path.x=1"])


def test_cli_overrides_after_options(tmp_path, capsys):
    from align.cli import main

    path = write(tmp_path, GOOD)
    assert main(["validate", str(path), "sft.train.lr=1e-3"]) == 0
    assert main(["plan", str(path), "--gpu-memory", "8GiB", "sft.train.batch_size=2"]) == 0
    with pytest.raises(SystemExit):
        main(["validate", str(path), "--bogus"])


def test_invalid_yaml_names_the_file_line_and_column(tmp_path):
    path = write(tmp_path, "name: t\nsft:\n  model: [tiny-llama\n  data: x.json\n")
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:4:7: not valid YAML") and "<unicode string>" not in msg


@pytest.mark.parametrize("override, needle", [
    ("sft.model.quantization=4bit", "sft: full fine-tuning of a 4bit quantized model is not supported"),
    ("sft.data=./no/such/data.jsonl", "sft.data: data file not found: ./no/such/data.jsonl"),
    ("sft.data=missing_folder/data.jsonl", "sft.data: data file not found: missing_folder/data.jsonl"),
    ("sft.model=./no-such-model-dir", "sft.model: model directory not found: ./no-such-model-dir"),
])
def test_cli_validate_rejects_what_run_rejects(tmp_path, capsys, override, needle):
    from align.cli import main

    path = write(tmp_path, GOOD.replace("  train:", "  adapter: {type: full}\n  train:"))
    extra = [] if "quantization" in override else ["sft.adapter.type=lora"]
    assert main(["validate", str(path), override, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and "Value error" not in err
    assert main(["validate", str(path), *extra]) == 0


def test_run_rejects_a_missing_input_of_a_later_stage_before_the_first_stage(tmp_path):
    from align.runner import run_recipe

    path = write(tmp_path, GOOD + "reward:\n  model: '@sft'\n  data: ./no/rankings.jsonl\n")
    with pytest.raises(AlignError, match="reward.data: rankings file not found: ./no/rankings.jsonl"):
        run_recipe(path, tmp_path / "run")
    assert not (tmp_path / "run" / "sft").exists()  # nothing ran


def test_reward_and_ppo_configs_reject_full_fine_tuning_of_a_quantized_model():
    from pydantic import ValidationError

    from align.stages import ppo, reward

    with pytest.raises(ValidationError, match="full fine-tuning of a 8bit quantized model"):
        reward.Config.model_validate({"model": {"name": "tiny-llama", "quantization": "8bit"}, "data": "x.jsonl",
                                      "adapter": {"type": "full"}})
    with pytest.raises(ValidationError, match="full fine-tuning of a 4bit quantized model"):
        ppo.Config.model_validate({"policy": {"name": "tiny-llama", "quantization": "4bit"}, "reward": "m:f",
                                   "prompts": "x.jsonl", "adapter": {"type": "full"}})


@pytest.mark.parametrize("override,message", [
    ("eval.prompts=missing.jsonl", "eval.prompts: gold prompt file not found: missing.jsonl"),
    ("eval.prompts=gold:focus:nope", "eval.prompts: 'gold:focus:nope'"),
    ("eval.reference=./nowhere/sft", "eval.reference: model directory not found: ./nowhere/sft"),
    ("eval.reward_model=./nowhere/rm", "eval.reward_model: model directory not found: ./nowhere/rm"),
    ("eval.policies={sft: '@sft', old: ./gone}", "eval.policies.old: model directory not found: ./gone"),
    ("self_instruct.seeds=nope.jsonl", "self_instruct.seeds: file not found: nope.jsonl"),
])
def test_validate_checks_eval_and_self_instruct_inputs(override, message):
    from align.config import check_recipe_inputs

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", [override])
    with pytest.raises(AlignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_recipe_inputs(recipe, "quickstart.yaml")


def test_shipped_gold_sets_and_prompt_files_pass_the_input_check(tmp_path):
    from align.config import check_recipe_inputs

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("{}\n")
    for spec in ("gold:heldout", "gold:focus:train", str(prompts)):
        check_recipe_inputs(load_recipe(REPO / "recipes" / "quickstart.yaml", [f"eval.prompts={spec}"]), "q")


def test_misspelt_eval_llm_judge_key_fails_validation_before_any_stage(tmp_path):
    recipe = GOOD + ("eval:\n  policies: {sft: '@sft'}\n  judge: llm\n  llm_judge:\n"
                     "    teachr: {type: openai, model: m, base_url: 'http://127.0.0.1:1/v1'}\n")
    path = write(tmp_path, recipe)
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:13" in msg and "eval.llm_judge.teachr" in msg and "did you mean 'teacher'" in msg
    ok = load_recipe(write(tmp_path, recipe.replace("teachr", "teacher")))
    assert ok.eval.llm_judge.teacher.model == "m"


PPO = """\
name: t
ppo:
  policy: tiny-llama
  reward: m:f
  prompts: examples/data/alpaca_tiny.json
  train:
    steps: 2
"""


def test_a_key_that_is_gone_gets_did_you_mean_with_file_and_line(tmp_path):
    path = write(tmp_path, PPO + "    lr_schedule: linear\n")  # lr_scheduler, as in every train: block
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    assert str(err.value).splitlines()[1] == (f"  {path}:8: ppo.train.lr_schedule: unknown key "
                                              "(did you mean 'lr_scheduler'?)")
    text = "name: t\nself_instruct:\n  teacher: tiny-llama\n  sampling:\n    bootstrap_max_tokens: 64\n"
    with pytest.raises(AlignError, match=r"r\.yaml:5: self_instruct\.sampling\.bootstrap_max_tokens: unknown key "
                                         r"\(did you mean 'bootstrap'\?\)"):
        load_recipe(write(tmp_path, text))


def test_ppo_takes_the_schedulers_its_loop_has(tmp_path):
    assert load_recipe(write(tmp_path, PPO + "    lr_scheduler: linear\n")).ppo.train.lr_scheduler == "linear"
    path = write(tmp_path, PPO + "    lr_scheduler: cosine\n")
    with pytest.raises(AlignError, match=r"r\.yaml:8: ppo\.train\.lr_scheduler: the PPO loop supports constant and "
                                         r"linear; cosine is a schedule of the trainer-based stages"):
        load_recipe(path)


DPO = """\
name: t
dpo:
  model: tiny-llama
  data: pairs.jsonl
"""


def test_dpo_method_is_a_name_or_its_own_settings_block(tmp_path):
    assert load_recipe(write(tmp_path, DPO)).dpo.method.type == "dpo"  # the default
    recipe = load_recipe(write(tmp_path, DPO + "  method: simpo\n"))
    assert (recipe.dpo.method.type, recipe.dpo.method.gamma) == ("simpo", 0.5)
    recipe = load_recipe(write(tmp_path, DPO + "  method: {type: kto, desirable_top: 2}\n"))
    assert (recipe.dpo.method.type, recipe.dpo.method.desirable_top) == ("kto", 2)
    recipe = load_recipe(write(tmp_path, DPO + "  method: {loss_type: ipo}\n"))  # type left out: dpo
    assert recipe.dpo.method.loss_type == ["ipo"]
    # overrides: a setting under a plain name, and another method in place of a settings block
    recipe = load_recipe(write(tmp_path, DPO + "  method: simpo\n"), ["dpo.method.gamma=1.5"])
    assert (recipe.dpo.method.type, recipe.dpo.method.gamma) == ("simpo", 1.5)
    recipe = load_recipe(write(tmp_path, DPO + "  method: {type: dpo, beta: 0.2}\n"), ["dpo.method=orpo"])
    assert (recipe.dpo.method.type, recipe.dpo.method.beta) == ("orpo", 0.1)


def test_dpo_method_errors_name_the_line_and_whose_setting_it_is(tmp_path):
    path = write(tmp_path, DPO + "  method:\n    type: simpo\n    loss_type: ipo\n    gama: 1\n")
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    assert str(err.value).splitlines()[1:] == [
        f"  {path}:7: dpo.method.loss_type: not a setting of simpo (it is one of dpo, kto); allowed here: type, "
        "beta, gamma, label_smoothing",
        f"  {path}:8: dpo.method.gama: unknown key (did you mean 'gamma'?)"]
    path = write(tmp_path, DPO + "  beta: 0.1\n")  # a method's setting at the stage's level: where it goes
    with pytest.raises(AlignError, match=r"r\.yaml:5: dpo\.beta: unknown key \(did you mean 'method\.beta'\?\)"):
        load_recipe(path)
    path = write(tmp_path, DPO + "  method: simp0\n")
    with pytest.raises(AlignError, match=r"r\.yaml:5: dpo\.method: expected one of dpo, kto, orpo, cpo, simpo, .* "
                                         r"\(got 'simp0'\)"):
        load_recipe(path)


def test_eval_model_takes_every_model_setting_but_the_name(tmp_path):
    from align.models import ModelConfig, ModelSettings

    assert set(ModelConfig.model_fields) == set(ModelSettings.model_fields) | {"name"}
    text = "name: t\neval:\n  policies: {a: tiny-llama}\n  model: {quantization: 4bit, precision: fp32}\n"
    recipe = load_recipe(write(tmp_path, text))
    assert (recipe.eval.model.quantization, recipe.eval.model.precision) == ("4bit", "fp32")
    with pytest.raises(AlignError, match=r"r\.yaml:4: eval\.model\.name: unknown key"):
        load_recipe(write(tmp_path, text.replace("precision: fp32", "name: x")))
