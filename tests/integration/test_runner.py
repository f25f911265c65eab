"""align run: finished stages are skipped; a changed config re-runs; flags behave."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.errors import AlignError
from align.runner import run_recipe, stage_hash
from align.stages.sft import Config as SFTConfig

REPO = Path(__file__).resolve().parents[2]
RECIPE = f"""
name: skip
sft:
  model: tiny-llama
  data: {REPO}/examples/data/alpaca_tiny.json
  adapter: {{type: lora, r: 4, alpha: 8}}
  train: {{max_steps: 2, batch_size: 2, max_length: 96, report_to: [none]}}
"""


def test_skip_rerun_and_force(tmp_path, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    first = run_recipe(recipe, out)
    assert [r.status for r in first] == ["ran"]
    marker = (out / "sft" / "COMPLETE").read_text()
    assert (out / "sft" / "config.yaml").exists() and (out / "sft" / "log.txt").stat().st_size > 0
    assert [r.status for r in run_recipe(recipe, out)] == ["skipped"]
    changed = run_recipe(recipe, out, ["sft.train.lr=1e-3"])
    assert [r.status for r in changed] == ["ran"]
    assert (out / "sft" / "COMPLETE").read_text() != marker
    assert [r.status for r in run_recipe(recipe, out, ["sft.train.lr=1e-3"], force=True)] == ["ran"]
    assert [r.status for r in run_recipe(recipe, out, ["sft.train.lr=1e-3"], from_stage="sft")] == ["ran"]
    with pytest.raises(AlignError, match="--only ppo"):
        run_recipe(recipe, out, only="ppo")


def test_data_file_content_is_part_of_the_hash(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "a", "output": "b"}]')
    cfg = SFTConfig.model_validate({"model": "tiny-llama", "data": str(data)})
    h1 = stage_hash("sft", cfg, 0, {})
    data.write_text('[{"instruction": "a", "output": "c"}]')
    assert stage_hash("sft", cfg, 0, {}) != h1
    assert stage_hash("sft", cfg, 1, {}) != stage_hash("sft", cfg, 0, {})


def test_upstream_hash_propagates():
    cfg = SFTConfig.model_validate({"model": "tiny-llama", "data": "@self_instruct"})
    assert stage_hash("sft", cfg, 0, {"self_instruct": "aaa"}) != stage_hash("sft", cfg, 0, {"self_instruct": "bbb"})


def test_stages_receive_paths_for_stage_references(tmp_path, monkeypatch):
    """The runner resolves '@sft' once, before eval's run; config.yaml and the hash keep the reference."""
    import types

    import align.runner as runner
    from align.stages import StageResult, stage_module

    seen = {}

    def fake(name, outputs):
        def run(cfg, ctx):
            seen[name] = cfg
            return StageResult(outputs, {})
        return types.SimpleNamespace(run=run, Config=stage_module(name).Config)

    model_dir = str(tmp_path / "run" / "sft" / "model")
    stages = {"sft": fake("sft", {"model": model_dir}), "eval": fake("eval", {"responses": "r.jsonl"})}
    monkeypatch.setattr(runner, "stage_module", stages.__getitem__)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + "eval:\n  policies: {sft: '@sft', base: tiny-llama}\n  reference: '@sft.model'\n")
    records = run_recipe(recipe, tmp_path / "run")
    assert [r.status for r in records] == ["ran", "ran"]
    assert seen["eval"].policies == {"sft": model_dir, "base": "tiny-llama"} and seen["eval"].reference == model_dir
    assert "'@sft'" in (tmp_path / "run" / "eval" / "config.yaml").read_text()
