"""The one place where our TrainConfig becomes TRL/transformers training arguments, and where trainers run.

TrainingArguments has ~100 fields; recipes see a dozen. Everything else is decided here
(precision from the hardware, checkpoint cadence, no silent column dropping). Every trainer-based
stage trains through `train(trainer, stage)`: resume from the newest complete checkpoint, and stop
at the first NaN/inf gradient or loss (NonFiniteGuard) instead of finishing with NaN weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.errors import TrainingDiverged
from align.trackers import ReportTo, check_installed, end_runs, report_to_field, resolve

if TYPE_CHECKING:
    from align.models import Precision

log = logging.getLogger("align.training")

# Learning-rate schedules a `train:` block may name (transformers' lr_scheduler_type values).
LRScheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]


class TrainConfig(BaseModel):
    """Optimisation settings shared by the training stages (mapped to TRL/transformers in one place)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(4, gt=0, description="Per-device micro-batch size.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, gt=8, description="Truncate tokenized examples to this many tokens.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps for linear warm-up.")
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: LRScheduler = Field("cosine", description="Learning-rate schedule after warm-up.")
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = Field("adamw_torch", description="transformers optimizer name, e.g. adamw_torch, paged_adamw_8bit.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps (resume point after a kill).")
    report_to: ReportTo = report_to_field()


def trainer_args(args_cls: type, train: TrainConfig, output_dir: Path, precision: Precision, seed: int,
                 **extra: Any) -> Any:
    """Build `args_cls` (SFTConfig, RewardConfig, TrainingArguments) from our settings."""
    check_installed(train.report_to, "train.report_to")  # one line now, not transformers' error at Trainer()
    fields = getattr(args_cls, "__dataclass_fields__", {})
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=train.lr,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        warmup_ratio=train.warmup_ratio,
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN step is logged as NaN, not as the window's average
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.use_cpu,
        seed=seed,
        data_seed=seed,
        report_to=resolve(train.report_to) or "none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    # transformers 5.x renamed gradient_checkpointing → activation_checkpointing (the old name warns).
    key = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    kwargs[key] = train.gradient_checkpointing
    if "warmup_ratio" not in fields:  # transformers 5: warmup_steps < 1 is a ratio
        kwargs["warmup_steps"] = kwargs.pop("warmup_ratio")
    kwargs.update(extra)
    return args_cls(**kwargs)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest *complete* `checkpoint-N` folder, to resume a killed run from.

    The Trainer writes trainer_state.json last, so a folder without a readable one was cut off mid-save
    (a kill during checkpointing); such folders are removed so the run can write them again.
    """
    import json
    import re
    import shutil

    if not output_dir.is_dir():
        return None
    found = []
    for path in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)
    return None


def held_out_eval_args(train_cfg: Any, has_eval_data: bool) -> dict[str, Any]:
    """Trainer args that evaluate held-out data at every checkpoint when there is some, else never."""
    return {"eval_strategy": "steps" if has_eval_data else "no",
            "eval_steps": train_cfg.save_steps if has_eval_data else None}


def loss_history(log_history: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of a logged metric."""
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e and "step" in e]


def train(trainer: Any, stage: str, hint: str | None = None) -> tuple[Any, str | None, int]:
    """`trainer.train()` for a stage: guarded by NonFiniteGuard, resumed from the newest complete checkpoint
    under its output_dir. Returns (TrainOutput, the checkpoint it resumed from or None, that checkpoint's
    step: read before training, since checkpoint rotation may delete the folder while training)."""
    from align.divergence import NonFiniteGuard

    trainer.add_callback(NonFiniteGuard(stage, hint))
    resume = last_checkpoint(Path(trainer.args.output_dir))
    resumed_step = checkpoint_step(resume)
    if resume is not None:
        trainer.add_callback(_resume_note(stage, Path(resume).name, resumed_step))
    try:
        return trainer.train(resume_from_checkpoint=resume), resume, resumed_step
    except TrainingDiverged:
        for callback in trainer.callback_handler.callbacks:  # end the progress bar's line: the error gets its own
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.close()
        raise
    finally:
        end_runs(trainer.args.report_to)  # each stage its own W&B run


def _resume_note(stage: str, checkpoint: str, step: int) -> Any:
    """A callback that says in the console and the stage's log.txt that training resumed, and where.

    Trainer resumes silently apart from a line on its own logger; a user who killed a run should see
    that the re-run continued it. The total is the checkpoint's max_steps, known once training begins.
    """
    from transformers import TrainerCallback

    class ResumeNote(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            log.info("%s: resuming from %s (step %d of %d)", stage, checkpoint, step, state.max_steps)

    return ResumeNote()


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The optimizer step a checkpoint folder was saved at (0 for None: a fresh start)."""
    import json

    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def mean_train_loss(log_history: list[dict], run_loss: float, resumed_step: int, global_step: int) -> float:
    """Mean training loss over every step, also when this run resumed from a checkpoint.

    Trainer's `training_loss` averages only the steps of the current `train()` call; the steps before a
    resume are known from the logged losses restored with the checkpoint's trainer_state.json, each the
    mean over its logging window (the steps since the previous log). Steps after the last log before the
    resume point (when logging_steps does not divide save_steps) were never logged and are left out.
    """
    if resumed_step <= 0:
        return run_loss
    total, counted, last = 0.0, 0, 0
    for step, loss in sorted(loss_history(log_history, "loss")):
        if step > resumed_step:
            break
        total, counted, last = total + loss * (step - last), counted + step - last, step
    this_run = global_step - resumed_step
    return (total + run_loss * this_run) / (counted + this_run) if counted + this_run > 0 else run_loss

