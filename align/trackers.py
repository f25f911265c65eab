"""Experiment trackers (`train.report_to`): which names a recipe may give, whether they are installed here,
and reporting a loop's per-step stats to them outside a transformers Trainer.

The names are transformers' own (its ``INTEGRATION_TO_CALLBACK``: tensorboard, wandb, trackio, mlflow...,
plus ``all`` and ``none``), so every training stage accepts the same list. The Trainer-based stages hand
them to TrainingArguments; the PPO loop drives the same TrainerCallback classes (`Trackers`), so each
service is set up and configured (WANDB_PROJECT, MLFLOW_TRACKING_URI, TRACKIO_DIR...) as in any Trainer.
Nothing heavy is imported at module level: recipe validation stays fast.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from align.errors import AlignError

# Names that need no look-up in transformers (whose integration list costs a multi-second import).
_BUILT_IN = ("tensorboard", "none", "all")

# How to make a tracker available, where it is not `pip install <name>`.
_INSTALL = {
    "azure_ml": "pip install azureml-core",
    "comet_ml": "pip install comet-ml, and set COMET_API_KEY",
    "dagshub": "pip install dagshub mlflow",
    "flyte": "pip install flytekit flytekitplugins-deck-standard",
    "kubeflow": "it reports only inside a Kubeflow TrainJob (KUBEFLOW_TRAINER_SERVER_URL set)",
    "mlflow": "pip install mlflow (and leave DISABLE_MLFLOW_INTEGRATION unset)",
}


def integrations() -> list[str]:
    """The trackers transformers' Trainer can report to."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return list(INTEGRATION_TO_CALLBACK)


def check_names(names: list[str]) -> list[str]:
    """Reject a tracker name transformers does not know (the recipe key is added by the caller's error)."""
    if set(names) <= set(_BUILT_IN):
        return names
    known = integrations()
    for name in names:
        if name not in known and name not in _BUILT_IN:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown tracker '{name}'{hint}; accepted: {', '.join([*known, 'all', 'none'])}")
    return names


ReportTo = Annotated[list[str], AfterValidator(check_names)]


def report_to_field() -> Any:
    """`train.report_to` of every training stage: the same default, the same description."""
    return Field(default_factory=lambda: ["tensorboard"],
                 description="Trackers for the training stats, as transformers names them: tensorboard, wandb, "
                             "trackio, mlflow, comet_ml... (all: every one installed; none: no tracker).")


def run_name(run_dir: Path, stage: str) -> str:
    """The name a stage's run gets in the trackers: the run folder's name and the stage (`quickstart-ppo`)."""
    return f"{Path(run_dir).resolve().name}-{stage}"


def resolve(names: list[str]) -> list[str]:
    """The trackers `names` asks for: `all` becomes every one installed, `none` nothing."""
    out: list[str] = []
    for name in names:
        if name == "all":
            from transformers.integrations import integration_utils as hf

            out.extend(hf.get_available_reporting_integrations())
        elif name != "none":
            out.append(name)
    return list(dict.fromkeys(out))


def check_installed(names: list[str], key: str) -> None:
    """One line naming what to install when a requested tracker cannot run here.

    Called before anything loads (by `align validate`, before `align run`'s first stage and when a stage
    starts), so a missing package is not found mid-training.
    """
    wanted = [n for n in names if n not in ("none", "all")]
    if not wanted:
        return
    if wanted == ["tensorboard"]:  # transformers' own test, without its import
        available = {"tensorboard"} if _has_module("tensorboard") or _has_module("tensorboardX") else set()
    else:
        from transformers.integrations import integration_utils as hf

        available = set(hf.get_available_reporting_integrations())
        if hf.is_azureml_available():  # listed there only without mlflow (its `all` prefers mlflow)
            available.add("azure_ml")
    for name in wanted:
        if name not in available:
            raise AlignError(f"{key}: {name} is not available here: {_INSTALL.get(name, f'pip install {name}')}")


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def end_runs(names: list[str]) -> None:
    """End the W&B run a stage reported to (`names`: the resolved trackers, as in TrainingArguments.report_to).

    transformers' WandbCallback leaves its run open until the process exits (trackio and MLflow end theirs
    at the end of training), so without this every stage of `align run` would log into the first stage's
    run, and offline runs would not be complete on disk when the stage returns.
    """
    wandb = sys.modules.get("wandb") if "wandb" in names else None  # imported by WandbCallback if it ran
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


class Trackers:
    """Reports per-step stats of a loop that is not a transformers Trainer (the PPO loop) to `report_to`.

    Each tracker other than TensorBoard is transformers' TrainerCallback for it (WandbCallback,
    TrackioCallback, MLflowCallback...), driven with a TrainingArguments built from `args` and a
    TrainerState whose global_step is the loop's step; those callbacks name each stat ``train/<name>``,
    as in the Trainer-based stages. TensorBoard keeps a plain SummaryWriter in ``tensorboard_dir`` with the
    stats' own names as tags: TensorBoardCallback would prefix every tag with ``train/``, and the writer's
    ``purge_step`` drops the events a killed run wrote after the checkpoint it resumes from.
    """

    def __init__(self, report_to: list[str], tensorboard_dir: Path, start_step: int, args: dict[str, Any],
                 model: Any = None) -> None:
        names = resolve(report_to)
        self.writer = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)
        self.names = [n for n in names if n != "tensorboard"]
        self.callbacks: list[Any] = []
        self.model = model
        if not self.names:
            return
        from transformers import TrainerControl, TrainerState, TrainingArguments
        from transformers.integrations import get_reporting_integration_callbacks

        self.args = TrainingArguments(report_to=self.names, logging_steps=1, **args)
        self.state = TrainerState(global_step=start_step, max_steps=self.args.max_steps, logging_steps=1)
        self.control = TrainerControl()
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(self.names)]
        for callback in self.callbacks:
            callback.on_train_begin(self.args, self.state, self.control, model=model)

    def log(self, step: int, stats: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(key, value, step)
        if self.callbacks:
            self.state.global_step = step
            for callback in self.callbacks:
                callback.on_log(self.args, self.state, self.control, model=self.model, logs=dict(stats))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        for callback in self.callbacks:
            callback.on_train_end(self.args, self.state, self.control, model=self.model)
        end_runs(self.names)
