"""The DPO stage reads its final held-out metrics from the evaluation the trainer already ran at the last step."""

from __future__ import annotations

from types import SimpleNamespace

from align.stages.dpo import final_eval


class FakeTrainer:
    def __init__(self, log_history: list[dict], global_step: int):
        self.state = SimpleNamespace(log_history=log_history, global_step=global_step)
        self.calls = 0

    def evaluate(self) -> dict:
        self.calls += 1
        return {"eval_loss": 0.1, "step": "now"}


def test_reuses_the_evaluation_logged_at_the_last_step():
    logged = {"eval_loss": 0.4, "eval_rewards/accuracies": 0.75, "step": 10}
    trainer = FakeTrainer([{"loss": 0.6, "step": 5}, {"eval_loss": 0.5, "step": 5}, {"loss": 0.5, "step": 10}, logged],
                          global_step=10)
    assert final_eval(trainer) is logged and trainer.calls == 0


def test_evaluates_when_the_last_evaluation_is_older_than_the_last_step():
    trainer = FakeTrainer([{"eval_loss": 0.5, "step": 5}, {"loss": 0.5, "step": 7}], global_step=7)
    assert final_eval(trainer)["step"] == "now" and trainer.calls == 1
    assert final_eval(FakeTrainer([], global_step=3))["step"] == "now"
