"""The non-finite checks: what counts as diverged, the one-line message, and the Trainer callback's rules."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from align.divergence import (
    FP16_SKIPPED_STEPS,
    FiniteLogits,
    NonFiniteGuard,
    check_sampling_logits,
    grad_norm,
    in_step,
    non_finite_parameter,
)
from align.errors import AlignError, TrainingDiverged

REPO = Path(__file__).resolve().parents[2]
INF = float("inf")


def test_masked_tokens_are_not_divergence():
    scores = torch.tensor([[0.5, -INF, 2.0], [-INF, -INF, 1.0]])  # e.g. EOS masked before min_new_tokens
    check_sampling_logits(scores)
    assert FiniteLogits()(torch.zeros(2, 1, dtype=torch.long), scores) is scores


@pytest.mark.parametrize("row,kind", [([0.0, float("nan"), 1.0], "nan"), ([0.0, INF, 1.0], "inf"),
                                      ([-INF, -INF, -INF], "inf")])
def test_logits_that_cannot_be_sampled_raise(row, kind):
    with pytest.raises(TrainingDiverged, match=f"logits are {kind} before sampling"):
        check_sampling_logits(torch.tensor([[0.1, 0.2, 0.3], row]))


def test_message_names_stage_step_last_loss_and_hint():
    exc = TrainingDiverged("gradient norm is nan").at("sft", 7, (6, 1.23456), "lower sft.train.lr (now 1)")
    assert isinstance(exc, AlignError) and "\n" not in str(exc)
    assert str(exc).startswith("sft: training diverged at step 7: gradient norm is nan "
                               "(last finite loss 1.235 at step 6); lower sft.train.lr (now 1)")
    assert "no finite loss" in str(TrainingDiverged("loss is nan", "ppo", 1, None, "h"))


def test_in_step_places_an_error_and_keeps_its_own_hint():
    placed = r"^ppo: training diverged at step 3: loss is inf \(last finite loss 0.5 at step 2\); lower lr"
    with pytest.raises(TrainingDiverged, match=placed), in_step("ppo", 3, (2, 0.5), "lower lr"):
        raise TrainingDiverged("loss is inf")
    bar = SimpleNamespace(closed=False)
    bar.close = lambda: setattr(bar, "closed", True)
    with pytest.raises(TrainingDiverged, match="; check the reward"), in_step("ppo", 3, None, "lower lr", bar):
        raise TrainingDiverged("scores are nan", hint="check the reward")
    assert bar.closed  # the progress bar's line is ended before the error is printed


def test_grad_norm_and_weight_checks():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    assert grad_norm([a, b]) is None  # no gradients yet (e.g. DeepSpeed keeps them elsewhere)
    a.grad, b.grad = torch.full((3,), 2.0), torch.tensor([float("nan"), 0.0])
    assert grad_norm([a]) == pytest.approx(math.sqrt(12)) and math.isnan(grad_norm([a, b]))
    frozen = torch.nn.Parameter(torch.tensor([INF]), requires_grad=False)
    sharded = torch.nn.Parameter(torch.ones(0))  # DeepSpeed ZeRO-3 leaves empty placeholders
    assert non_finite_parameter([("a", a), ("frozen", frozen), ("sharded", sharded)]) is None
    for bad in (INF, -INF, float("nan")):
        with torch.no_grad():
            b[0] = bad
        assert non_finite_parameter([("a", a), ("b", b)]) == "b"


def guard_call(event: str, guard: NonFiniteGuard, grad: float = 1.0, scaler: bool = False, save: bool = False,
               logs: dict | None = None):
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.tensor([grad, 0.0])
    model = SimpleNamespace(parameters=lambda: [param], named_parameters=lambda: [("w", param)])
    state = TrainerState(global_step=4, log_history=[{"loss": 2.5, "step": 3}, {"loss": float("nan"), "step": 4}])
    control = TrainerControl(should_save=save)
    optimizer = SimpleNamespace(scaler=object()) if scaler else SimpleNamespace()
    args = SimpleNamespace(learning_rate=1e30)
    getattr(guard, event)(args, state, control, model=model, optimizer=optimizer, logs=logs)
    return param


def test_guard_stops_before_the_optimizer_applies_a_nan_gradient():
    guard = NonFiniteGuard("reward")
    guard_call("on_pre_optimizer_step", guard, grad=1.0)
    with pytest.raises(TrainingDiverged, match=re.escape(
            "reward: training diverged at step 5: gradient norm is nan (last finite loss 2.5 at step 3); "
            "lower reward.train.lr (now 1e+30)")):
        guard_call("on_pre_optimizer_step", guard, grad=float("nan"))


def test_guard_lets_fp16_loss_scaling_skip_overflowed_steps_but_not_forever():
    guard = NonFiniteGuard("sft")
    for _ in range(FP16_SKIPPED_STEPS):
        guard_call("on_pre_optimizer_step", guard, grad=INF, scaler=True)  # the scaler skips these steps
    guard_call("on_pre_optimizer_step", guard, grad=1.0, scaler=True)  # a finite step resets the count
    for _ in range(FP16_SKIPPED_STEPS):
        guard_call("on_pre_optimizer_step", guard, grad=INF, scaler=True)
    with pytest.raises(TrainingDiverged, match="gradient norm is inf"):
        guard_call("on_pre_optimizer_step", guard, grad=INF, scaler=True)


def test_guard_checks_logged_loss_and_weights_before_a_checkpoint():
    guard = NonFiniteGuard("sft")
    guard_call("on_log", guard, logs={"loss": 1.0, "grad_norm": 0.3})
    with pytest.raises(TrainingDiverged, match="at step 4: loss is nan"):
        guard_call("on_log", guard, logs={"loss": float("nan")})
    guard_call("on_step_end", guard, grad=1.0, save=True)  # finite weights: the checkpoint may be written


def test_guard_refuses_to_checkpoint_non_finite_weights(monkeypatch):
    import align.divergence as divergence

    monkeypatch.setattr(divergence, "non_finite_parameter", lambda named: "w")
    guard_call("on_step_end", NonFiniteGuard("sft"), save=False)  # checked only when a checkpoint is due
    with pytest.raises(TrainingDiverged, match="weight w became non-finite"):
        guard_call("on_step_end", NonFiniteGuard("sft"), save=True)


def test_every_trainer_based_stage_trains_through_the_guard():
    """A stage calling trainer.train() itself would skip NonFiniteGuard: align.training.train is the way in."""
    for path in sorted((REPO / "align" / "stages").glob("*.py")):
        source = path.read_text()
        assert not re.search(r"\.train\(\s*resume_from_checkpoint|trainer\.train\(", source), path.name
        if re.search(r"Trainer\b|trainer_args\(", source):
            assert re.search(r"\btrain\(trainer, \"", source), f"{path.name} builds a Trainer but does not call train()"
