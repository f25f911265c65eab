"""Keys that moved: the table matches the schema, and an old key fails with its new place (YAML and overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.config import load_recipe, recipe_model
from align.errors import AlignError
from align.moved_keys import MOVED_KEYS, moved_keys_in, moved_to
from align.sections import section_model

REPO = Path(__file__).resolve().parents[2]

PPO = """\
name: t
ppo:
  policy: tiny-llama
  reward: m:f
  prompts: examples/data/alpaca_tiny.json
  train:
    steps: 2
"""
SELF_INSTRUCT = """\
name: t
self_instruct:
  teacher: tiny-llama
  sampling:
    request_batch_size: 2
"""


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def has_key(dotted: str) -> bool:
    """Whether the recipe schema has this dotted key (a field of the section model above it)."""
    *parents, last = dotted.split(".")
    owner = section_model(recipe_model(), parents)
    return owner is not None and last in owner.model_fields


@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_every_moved_key_points_from_a_key_that_is_gone_to_one_that_exists(old):
    assert not has_key(old), f"{old} is still in the schema"
    assert has_key(MOVED_KEYS[old]), f"{MOVED_KEYS[old]} is not in the schema"


def test_an_old_ppo_key_in_a_recipe_names_its_new_place_and_line(tmp_path):
    path = write(tmp_path, PPO.replace("  train:\n    steps: 2\n", "  ppo:\n    init_kl_coef: 0.1\n"))
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}:7: `ppo.ppo.init_kl_coef` moved to `ppo.train.kl.init_coef`"


def test_every_old_key_of_a_recipe_is_listed_in_one_message(tmp_path):
    path = write(tmp_path, PPO.replace("  train:\n", "  ppo:\n    batch_size: 8\n    ptx_data: {path: x.json}\n"))
    with pytest.raises(AlignError) as err:
        load_recipe(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 3 keys moved:"
    assert lines[1:] == [f"  {path}:7: `ppo.ppo.batch_size` moved to `ppo.train.rollout.batch_size`",
                         f"  {path}:8: `ppo.ppo.ptx_data` moved to `ppo.train.ptx.data`",
                         f"  {path}:9: `ppo.ppo.steps` moved to `ppo.train.steps`"]


def test_an_old_self_instruct_sampling_key_names_its_section(tmp_path):
    path = write(tmp_path, SELF_INSTRUCT + "    bootstrap_max_tokens: 64\n")
    with pytest.raises(AlignError, match=r"r\.yaml:6: `self_instruct\.sampling\.bootstrap_max_tokens` moved to "
                                         r"`self_instruct\.sampling\.bootstrap\.max_tokens`$"):
        load_recipe(path)
    path = write(tmp_path, SELF_INSTRUCT + "    bootstrap: {max_tokens: 64}\n    max_instances_per_task: 2\n")
    with pytest.raises(AlignError, match=r"`self_instruct\.sampling\.max_instances_per_task` moved to "
                                         r"`self_instruct\.sampling\.instances\.max_per_task`"):
        load_recipe(path)


@pytest.mark.parametrize("override,old,new", [
    ("ppo.ppo.steps=5", "ppo.ppo.steps", "ppo.train.steps"),
    ("ppo.ppo.init_kl_coef=0.1", "ppo.ppo.init_kl_coef", "ppo.train.kl.init_coef"),
    ("ppo.ppo.ptx_data.path=x.json", "ppo.ppo.ptx_data.path", "ppo.train.ptx.data.path"),
    ("ppo.ppo={steps: 3}", "ppo.ppo", "ppo.train"),
    ("self_instruct.sampling.alpaca_max_tokens=10", "self_instruct.sampling.alpaca_max_tokens",
     "self_instruct.sampling.alpaca.max_tokens"),
])
def test_an_old_key_in_an_override_names_its_new_place(tmp_path, override, old, new):
    with pytest.raises(AlignError) as err:
        load_recipe(write(tmp_path, PPO), [override])
    assert str(err.value) == f"override {override!r}: `{old}` moved to `{new}`"


def test_the_new_keys_work_in_recipes_and_overrides(tmp_path):
    recipe = load_recipe(write(tmp_path, PPO), ["ppo.train.kl.init_coef=0.1", "ppo.train.rollout.batch_size=8",
                                                "ppo.train.advantage.estimator=rloo", "ppo.train.rollout.group_size=2"])
    s = recipe.ppo.train
    assert (s.steps, s.kl.init_coef, s.rollout.batch_size, s.queries_per_step) == (2, 0.1, 8, 4)
    recipe = load_recipe(write(tmp_path, SELF_INSTRUCT), ["self_instruct.sampling.bootstrap.max_tokens=64"])
    assert recipe.self_instruct.sampling.bootstrap.max_tokens == 64


def test_cli_validate_rejects_an_old_override(tmp_path, capsys):
    from align.cli import main

    assert main(["validate", str(write(tmp_path, PPO)), "ppo.ppo.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "`ppo.ppo.steps` moved to `ppo.train.steps`" in err and "Traceback" not in err


def test_lookups_of_the_table():
    assert moved_to("ppo.ppo.value_model") == ("ppo.ppo.value_model", "ppo.train.value.model")
    assert moved_to("ppo.ppo.unheard_of") == ("ppo.ppo", "ppo.train")  # not in the table: the block's move
    assert moved_to("ppo.train.steps") is None and moved_to("sft.train.lr") is None
    assert moved_keys_in({"ppo": {"ppo": None}}) == [("ppo.ppo", "ppo.train")]
    assert moved_keys_in({"ppo": {"train": {"steps": 1}}, "self_instruct": {"sampling": {"rouge_threshold": 1}}}) == []
