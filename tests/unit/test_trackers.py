"""train.report_to: one key in every stage's train block, transformers' tracker names, and a one-line error
naming the package when a requested tracker is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from align.config import check_recipe_inputs, load_recipe
from align.errors import AlignError
from align.ppo.config import PPOSettings
from align.trackers import check_installed, resolve
from align.training import TrainConfig

REPO = Path(__file__).resolve().parents[2]

RECIPE = """\
name: t
sft:
  model: tiny-llama
  data: examples/data/alpaca_tiny.json
  train: {max_steps: 2, report_to: [tensorboard]}
ppo:
  policy: "@sft"
  reward: m:f
  prompts: examples/data/alpaca_tiny.json
  train:
    steps: 2
    report_to: [tensorboard]
"""


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.fixture()
def only_tensorboard(monkeypatch):
    """A machine where transformers finds no tracker package but tensorboard."""
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    monkeypatch.setattr(integration_utils, "is_azureml_available", lambda: False)


def test_every_training_stage_takes_transformers_tracker_names():
    for names in (["wandb"], ["trackio", "tensorboard"], ["mlflow"], ["all"], ["none"]):
        assert PPOSettings(report_to=names).report_to == names
        assert TrainConfig(report_to=names).report_to == names
    assert PPOSettings().report_to == TrainConfig().report_to == ["tensorboard"]


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_an_unknown_tracker_is_rejected_naming_the_key_and_the_accepted_names(tmp_path, stage):
    with pytest.raises(AlignError) as err:
        load_recipe(write(tmp_path, RECIPE), [f"{stage}.train.report_to=[wandbb]"])
    line = str(err.value).splitlines()[1]
    assert f"{stage}.train.report_to: unknown tracker 'wandbb' (did you mean 'wandb'?); accepted: " in line
    assert all(name in line for name in ("tensorboard", "wandb", "trackio", "mlflow", "all", "none"))
    with pytest.raises(ValidationError, match="unknown tracker 'weights_and_biases'"):
        PPOSettings(report_to=["weights_and_biases"])


def test_report_to_under_log_is_an_unknown_key_that_points_to_train(tmp_path):
    text = RECIPE.replace("    report_to: [tensorboard]\n", "    log: {report_to: [none]}\n")
    with pytest.raises(AlignError, match=r"r\.yaml:12: ppo\.train\.log\.report_to: unknown key "
                                         r"\(did you mean 'ppo\.train\.report_to'\?\)"):
        load_recipe(write(tmp_path, text))
    with pytest.raises(AlignError, match=r"ppo\.train\.log\.report_to: unknown key"):
        load_recipe(write(tmp_path, RECIPE), ["ppo.train.log.report_to=[none]"])


def test_a_tracker_that_is_not_installed_fails_in_one_line_naming_the_package(tmp_path, only_tensorboard):
    check_installed(["tensorboard", "none"], "ppo.train.report_to")
    with pytest.raises(AlignError) as err:
        check_installed(["tensorboard", "wandb"], "ppo.train.report_to")
    assert str(err.value) == "ppo.train.report_to: wandb is not available here: pip install wandb"
    with pytest.raises(AlignError, match=r"^sft\.train\.report_to: comet_ml is not available here: "
                                         r"pip install comet-ml, and set COMET_API_KEY$"):
        check_installed(["comet_ml"], "sft.train.report_to")

    # `align validate` and the start of `align run`: before any stage, with the recipe and the key
    recipe = load_recipe(write(tmp_path, RECIPE), ["ppo.train.report_to=[trackio]"])
    with pytest.raises(AlignError) as err:
        check_recipe_inputs(recipe, "r.yaml")
    assert str(err.value) == "r.yaml: ppo.train.report_to: trackio is not available here: pip install trackio"
    check_recipe_inputs(recipe, "r.yaml", ["sft"])  # only the stages that run are checked


def test_ppo_stops_before_loading_a_model_when_a_tracker_is_missing(tmp_path, only_tensorboard):
    from align.stages import StageContext
    from align.stages.ppo import Config, run

    cfg = Config.model_validate({"policy": str(tmp_path / "no-such-model"), "reward": "m:f",
                                 "prompts": str(tmp_path / "p.jsonl"), "train": {"report_to": ["mlflow"]}})
    with pytest.raises(AlignError, match=r"^ppo\.train\.report_to: mlflow is not available here: pip install mlflow"):
        run(cfg, StageContext("ppo", tmp_path, tmp_path, seed=0, upstream={}))


def test_all_means_every_installed_tracker_and_none_means_none(only_tensorboard):
    assert resolve(["all"]) == ["tensorboard"]
    assert resolve(["none"]) == []
    assert resolve(["wandb", "all", "wandb"]) == ["wandb", "tensorboard"]
