"""Seed tasks in the Self-Instruct format: load, validate, and pick demonstrations.

One JSON object per line, exactly as in yizhongw/self-instruct's ``seed_tasks.jsonl``::

    {"id": "seed_task_0", "name": "short_name", "instruction": "...",
     "instances": [{"input": "...", "output": "..."}], "is_classification": false}

So the original 175 seeds (or any file in that format) can be dropped in instead of ours. Unknown extra
keys are ignored (third-party seed files often carry e.g. a category); missing or mistyped keys are errors
naming the file and line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from align.errors import AlignError
from align.jsonl import iter_jsonl

SEED_FORMAT = (
    '{"id": "seed_task_0", "name": "short_name", "instruction": "...", '
    '"instances": [{"input": "...", "output": "..."}], "is_classification": false}'
)


class Instance(BaseModel):
    """One worked example of a task: the input (may be empty) and the expected output."""

    model_config = ConfigDict(extra="ignore")

    input: str = Field("", description="Task input; empty when the instruction is self-contained.")
    output: str = Field(description="The correct response.")


class SeedTask(BaseModel):
    """A task: an instruction plus at least one instance."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Unique id, e.g. seed_task_0.")
    name: str = Field("", description="Short snake_case name (optional for machine-generated tasks).")
    instruction: str = Field(description="What to do, in natural language.")
    instances: list[Instance] = Field(min_length=1, description="Worked examples.")
    is_classification: bool = Field(description="Whether the output is one of a finite set of labels.")

    @field_validator("instruction")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value

    @property
    def first_instance(self) -> Instance:
        return self.instances[0]


def default_seed_path() -> Path:
    """Our own 118 hand-written seed tasks, shipped with the package."""
    return Path(str(resources.files("align.data_gen") / "seed_tasks.jsonl"))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"'{loc}': {err['msg']}")
    return "; ".join(parts)


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """All tasks of a seed JSONL file (ours when path is None). Blank lines are skipped; ids must be unique."""
    path = default_seed_path() if path is None else Path(path).expanduser()
    if not path.is_file():
        raise AlignError(f"seed task file not found: {path}")
    tasks: list[SeedTask] = []
    first_line: dict[str, int] = {}
    for lineno, record in iter_jsonl(path, like=SEED_FORMAT):
        try:
            task = SeedTask.model_validate(record)
        except ValidationError as exc:
            raise AlignError(f"{path}:{lineno}: bad seed task: {_describe(exc)}; expected {SEED_FORMAT}") from None
        if task.id in first_line:
            raise AlignError(f"{path}:{lineno}: duplicate id {task.id!r} (first used on line {first_line[task.id]})")
        first_line[task.id] = lineno
        tasks.append(task)
    if not tasks:
        raise AlignError(f"{path}: no seed tasks found; expected one JSON object per line like {SEED_FORMAT}")
    return tasks
