"""Detecting NaN/inf in training: losses, gradients, weights, and the logits a policy samples from.

Why a check of our own: torch carries NaN on silently, the transformers Trainer logs a NaN step's loss
as the window's average (so a diverged run reads "loss 0") and saves NaN weights as a normal
checkpoint, and `generate` fails deep inside `torch.multinomial`. Each check here raises
`TrainingDiverged` naming what went non-finite; the stage adds where (step) and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import LogitsProcessor, TrainerCallback

from align.errors import TrainingDiverged


def describe(value: float) -> str:
    """'nan', 'inf' or '-inf' for a non-finite number (its repr otherwise)."""
    return "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else f"{value:.4g}")


def is_finite(value: float | torch.Tensor | None) -> bool:
    """True for None (nothing measured) and for finite numbers / tensors with no NaN or inf."""
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return math.isfinite(value)


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float | None:
    """Global L2 norm of the gradients present; None when no parameter holds one (e.g. under DeepSpeed).

    One fused pass (torch's foreach norm, grouped by device), so it is cheap next to a backward pass.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    if hasattr(norm, "full_tensor"):  # FSDP2 DTensor gradients: reduce over shards
        norm = norm.full_tensor()
    return float(norm)


def non_finite_parameter(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> str | None:
    """Name of the first trainable parameter holding a NaN/inf, or None; run before writing a checkpoint.

    min/max propagate NaN and show ±inf: one pass with no full-size temporary (8x faster than isfinite().all()).
    """
    for name, param in named_parameters:
        if param.requires_grad and param.numel() and not all(map(is_finite, torch.aminmax(param.detach()))):
            return name
    return None


def check_sampling_logits(scores: torch.Tensor) -> None:
    """Raise unless every row of next-token logits (B, V) can be sampled from.

    -inf entries are legitimate (masked tokens, e.g. EOS before min_new_tokens); NaN, +inf, or a row with
    every token at -inf make softmax NaN, which `torch.multinomial` rejects with a bare RuntimeError.
    """
    nan = torch.isnan(scores).any()
    bad = nan | torch.isposinf(scores).any() | torch.isneginf(scores).all(dim=-1).any()
    if bool(bad):
        kind = "nan" if bool(nan) else "inf"
        raise TrainingDiverged(f"the policy's next-token logits are {kind} before sampling")


class FiniteLogits(LogitsProcessor):
    """A `generate` logits processor that only checks (check_sampling_logits) and passes scores through.

    transformers runs custom processors before the sampling warpers, so it sees the model's logits.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_sampling_logits(scores)
        return scores


@contextmanager
def in_step(stage: str, step: int, last_loss: tuple[int, float] | None, hint: str,
            progress: Any = None) -> Iterator[None]:
    """Place a TrainingDiverged raised inside (by a check that knows only what went wrong) at this stage/step.

    progress: a tqdm bar to close first, so that the error is printed on a line of its own.
    """
    try:
        yield
    except TrainingDiverged as exc:
        if progress is not None:
            progress.close()
        if exc.stage is not None:
            raise
        raise exc.at(stage, step, last_loss, exc.hint or hint) from None


# fp16 loss scaling skips a step whose gradients overflowed and halves the scale (from 2**16): a few
# non-finite gradient norms in a row are normal there, more than this many are divergence.
FP16_SKIPPED_STEPS = 24


class NonFiniteGuard(TrainerCallback):
    """Stops a Trainer at the first NaN/inf gradient norm or loss, before the optimizer applies it.

    The gradients are checked after clipping, before `optimizer.step()` (a NaN loss makes them NaN
    too), so the weights stay those of the last finite step; the trainable weights are checked again
    before every checkpoint, so no checkpoint holding NaN/inf is written and resume never picks one.
    """

    def __init__(self, stage: str, hint: str | None = None):
        self.stage, self.hint, self.skipped = stage, hint, 0

    def _diverged(self, args, state, step: int, what: str) -> TrainingDiverged:
        last = [(int(e["step"]), float(e["loss"])) for e in state.log_history
                if "loss" in e and "step" in e and is_finite(e["loss"])]
        hint = self.hint or f"lower {self.stage}.train.lr (now {args.learning_rate:g})"
        return TrainingDiverged(what, self.stage, step, last[-1] if last else None, hint)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        norm = grad_norm(p for p in model.parameters() if p.requires_grad) if model is not None else None
        if is_finite(norm):
            self.skipped = 0
            return
        if getattr(optimizer, "scaler", None) is not None and self.skipped < FP16_SKIPPED_STEPS:
            self.skipped += 1  # the fp16 grad scaler skips this step itself and lowers its scale
            return
        raise self._diverged(args, state, state.global_step + 1, f"gradient norm is {describe(norm)}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not is_finite(loss):
            raise self._diverged(args, state, state.global_step, f"loss is {describe(loss)}")

    def _check_weights(self, args, state, control, model) -> None:
        if control.should_save and model is not None:
            name = non_finite_parameter(model.named_parameters())
            if name is not None:
                raise self._diverged(args, state, state.global_step, f"weight {name} became non-finite")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._check_weights(args, state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._check_weights(args, state, control, model)
