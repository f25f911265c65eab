"""Critic-free estimators in the PPO loop on tiny-llama: RLOO (KL in the reward) and GRPO (KL as a k3
loss term) raise the toy "fraction of blue" reward of test_ppo.py within a fixed number of steps,
without loading or training a value model. (Dr. GRPO's plumbing is covered by the resume test and the
unit tests: without the std division its advantages on a 0..1 fraction reward are small, so it needs
another learning rate.)"""

from __future__ import annotations

import json

import pytest

from align.stages import StageContext
from align.stages.ppo import run
from tests.integration.test_ppo import files, ppo_config, sft_adapter  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

ESTIMATORS = {
    "rloo": dict(advantage={"estimator": "rloo"}),
    "grpo_kl_loss": dict(advantage={"estimator": "grpo"}, kl={"penalty": "loss"}),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_critic_free_estimator_raises_the_reward(name, sft_adapter, files, tmp_path):  # noqa: F811
    out = tmp_path / "ppo"
    out.mkdir()
    cfg = ppo_config(str(sft_adapter), files, steps=24, rollout={"group_size": 4}, lr=1e-3, save_steps=24,
                     report_to=["none"], log={"gold_fn": None}, **ESTIMATORS[name])
    result = run(cfg, StageContext("ppo", out, tmp_path, seed=0, upstream={}))
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    scores = [s["objective/scores"] for s in stats]
    first, last = sum(scores[:3]) / 3, sum(scores[-5:]) / 5
    # the SFT-like policy says "blue" in about 1 word of 6; the estimators must at least triple that
    assert first < 0.3 and last > max(3 * first, first + 0.3), [round(x, 3) for x in scores]
    assert max(s["objective/kl"] for s in stats) < 20
    # no value model: nothing loaded, trained, logged or saved for it
    assert not any(key.startswith("loss/value") or key == "val/values_mean" for key in stats[0])
    assert "objective/flat_groups" in stats[0] and "value_head" not in result.outputs
    assert not (out / "value_head.safetensors").exists()
    assert not list((out / "checkpoints").glob("*/value_head.safetensors"))
    assert any("value_model = none" in note for note in result.metrics["roles"])
    assert result.metrics["advantage"] == ESTIMATORS[name]["advantage"]["estimator"]
    if ESTIMATORS[name].get("kl", {}).get("penalty") == "loss":
        assert "loss/kl" in stats[0]
