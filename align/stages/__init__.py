"""The pipeline's stages, one module each, in the order they run.

Each stage module defines a pydantic ``Config`` (its recipe section) and
``run(cfg, ctx) -> StageResult``. Heavy imports (torch, transformers) happen inside ``run`` so
that validating a recipe stays fast.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from align.errors import AlignError

STAGE_ORDER: tuple[str, ...] = ("self_instruct", "sft", "rank", "reward", "dpo", "ppo", "eval")


@dataclass
class StageResult:
    """What a stage hands to later stages: named output paths (the first is the default for `@stage`)."""

    outputs: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self, stage_dir: Path | None = None) -> str:
        data: dict[str, Any] = {"outputs": self.outputs, "metrics": self.metrics}
        if stage_dir is not None:  # where the outputs were written, so a moved or copied run still finds them
            data["stage_dir"] = str(stage_dir)
        return json.dumps(data, indent=2, default=str)

    @classmethod
    def from_file(cls, path: Path) -> StageResult:
        """Read result.json; outputs inside the stage folder follow it when the run was moved or copied."""
        data = json.loads(path.read_text())
        outputs = {key: _rebase(value, data.get("stage_dir"), path.parent) for key, value in data["outputs"].items()}
        return cls(outputs=outputs, metrics=data.get("metrics", {}))


def _rebase(output: str, written_in: str | None, stage_dir: Path) -> str:
    """`output` as seen from the stage folder's current place. Recorded paths are as the run named them
    (often relative to where it ran); a path under the folder it was written in moves with the folder.
    Results written before stage_dir was recorded: a missing path whose components include the stage
    folder's name is looked up under the current folder."""
    if Path(output).exists() and (written_in is None or Path(written_in).resolve() == stage_dir.resolve()):
        return output
    parts = Path(output).parts
    if written_in is not None:
        base = Path(written_in).parts
        if parts[: len(base)] == base:
            return str(stage_dir.joinpath(*parts[len(base):]))
        return output
    if stage_dir.name in parts:
        at = len(parts) - 1 - parts[::-1].index(stage_dir.name)
        moved = stage_dir.joinpath(*parts[at + 1:])
        if moved.exists():
            return str(moved)
    return output


@dataclass
class StageContext:
    """Where a stage writes, what earlier stages produced, and run-wide settings."""

    name: str
    stage_dir: Path
    run_dir: Path
    seed: int
    upstream: dict[str, StageResult]


def resolve_refs(value: Any, upstream: dict[str, StageResult], where: str) -> Any:
    """`value` with every `@stage` / `@stage.output` string replaced by the path that stage produced.

    The runner calls it on a stage's config before `run`, so stages only ever see paths. A pydantic
    model is copied with the resolved fields (not re-validated: what its validators derived stays);
    `where` (the recipe key, e.g. "ppo") starts each error message.
    """
    if isinstance(value, BaseModel):
        updates = {}
        for field_name in type(value).model_fields:
            old = getattr(value, field_name)
            new = resolve_refs(old, upstream, f"{where}.{field_name}")
            if new is not old:
                updates[field_name] = new
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, dict):
        resolved = {k: resolve_refs(v, upstream, f"{where}.{k}") for k, v in value.items()}
        return value if all(resolved[k] is value[k] for k in value) else resolved
    if isinstance(value, list):
        items = [resolve_refs(v, upstream, f"{where}[{i}]") for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value)) else items
    if not (isinstance(value, str) and value.startswith("@")):
        return value
    stage, _, key = value[1:].partition(".")
    if stage not in upstream:
        raise AlignError(f"{where}: {value!r} needs the output of stage {stage}, which has not completed")
    outputs = upstream[stage].outputs
    if not outputs:
        raise AlignError(f"{where}: {value!r}: stage {stage} produced no outputs")
    if key and key not in outputs:
        raise AlignError(f"{where}: {value!r}: stage {stage} has no output {key!r}; its outputs are "
                         f"{', '.join(outputs)} (@{stage} alone means the first)")
    return outputs[key] if key else next(iter(outputs.values()))


def stage_module(name: str):
    return importlib.import_module(f"align.stages.{name}")


def stage_config_classes() -> dict[str, type[BaseModel]]:
    """Config class per implemented stage, in run order."""
    classes = {}
    for name in STAGE_ORDER:
        try:
            module = stage_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == f"align.stages.{name}":
                continue  # stage not implemented in this version
            raise
        classes[name] = module.Config
    return classes
