"""The one place where our TrainConfig becomes TRL/transformers training arguments.

TrainingArguments has ~100 fields; recipes see a dozen. Everything else is decided here
(precision from the hardware, checkpoint cadence, no silent column dropping).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from align.config import TrainConfig
from align.models import Precision


def trainer_args(args_cls: type, train: TrainConfig, output_dir: Path, precision: Precision, seed: int,
                 **extra: Any) -> Any:
    """Build `args_cls` (SFTConfig, RewardConfig, TrainingArguments) from our settings."""
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
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.use_cpu,
        seed=seed,
        data_seed=seed,
        report_to=[r for r in train.report_to if r != "none"] or "none",
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


def loss_history(log_history: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of a logged metric."""
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e and "step" in e]


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
