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

    def to_json(self) -> str:
        return json.dumps({"outputs": self.outputs, "metrics": self.metrics}, indent=2, default=str)

    @classmethod
    def from_file(cls, path: Path) -> StageResult:
        data = json.loads(path.read_text())
        return cls(outputs=data["outputs"], metrics=data.get("metrics", {}))


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
