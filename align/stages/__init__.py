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

    def resolve(self, value: Any) -> Any:
        """Replace `@stage` / `@stage.output` strings with the path that stage produced."""
        if isinstance(value, str) and value.startswith("@"):
            stage, _, key = value[1:].partition(".")
            result = self.upstream[stage]
            return result.outputs[key] if key else next(iter(result.outputs.values()))
        return value


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
