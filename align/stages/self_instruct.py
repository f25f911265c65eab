"""Self-Instruct data generation: a teacher model writes instruction data from a few seed tasks.

The loop itself lives in `align.data_gen.generate`; this stage picks the teacher (a local model or an
OpenAI-compatible API, see `align.teachers`), runs the loop in the stage folder and hands the exported
data to the next stage (``sft.data: "@self_instruct"``).

Exports are written only when the run finished (see `align.data_gen.generate.generate`).
Outputs: ``data`` (the first export format, Alpaca JSON by default; loads with
`align.data.load_examples`), one entry per export format, ``records`` (``machine_generated.jsonl``, the
resumable record of kept tasks) and ``stats`` (``stats.json``: drops per filter, diversity, time).
An interrupted run resumes where it stopped when run again with the same settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.data_gen.generate import EXPORT_FILES, SelfInstructSettings
from align.errors import AlignError
from align.stages import StageContext, StageResult
from align.teachers import TeacherConfig

log = logging.getLogger("align")


class Config(BaseModel):
    """The `self_instruct:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherConfig = Field(description="The model that writes the data: a model reference (local) or "
                                   "{type: openai, model, base_url, api_key_env}.")
    seeds: str | None = Field(None, description="Seed tasks JSONL in the Self-Instruct format; None = the seed "
                              "tasks shipped with align (data_gen/seed_tasks.jsonl).", json_schema_extra={"input": "file"})
    method: Literal["self_instruct", "alpaca"] = Field(
        "self_instruct", description="self_instruct: instructions, then classification, then instances; "
        "alpaca: whole tasks in one prompt.")
    num_instructions: int = Field(100, gt=0, description="Tasks to keep.")
    sampling: SelfInstructSettings = Field(default_factory=SelfInstructSettings,
                                           description="Prompting, token budgets, filters and stopping rules.")
    formats: list[Literal["alpaca", "self_instruct", "chat"]] = Field(
        default_factory=lambda: ["alpaca", "chat", "self_instruct"], min_length=1,
        description="Files to export; the first is the stage's `data` output.")
    allow_incomplete: bool = Field(False, description="Finish (instead of failing) when the run stops short of "
                                   "num_instructions; stats.json records complete: false either way.")


def run(cfg: Config, ctx: StageContext, *, standalone: bool = False) -> StageResult:
    from align.data_gen.generate import generate
    from align.data_gen.prompts import bootstrap_stop
    from align.data_gen.seeds import load_seed_tasks
    from align.teachers import make_teacher

    teacher_cfg = cfg.teacher
    updates: dict[str, Any] = {}
    if "seed" not in teacher_cfg.model_fields_set:
        updates["seed"] = ctx.seed
    teacher_cfg = teacher_cfg.model_copy(update=updates)
    sampling = cfg.sampling
    if sampling.bootstrap.stop is None and teacher_cfg.resolved_endpoint == "chat":
        # Chat models often put blank lines between list items; the parser copes, a "\n\n" stop would not.
        boot = sampling.bootstrap
        stops = bootstrap_stop(boot.num_prompt_instructions, boot.prompt, chat=True)
        sampling = sampling.model_copy(update={"bootstrap": boot.model_copy(update={"stop": stops})})

    seed_tasks = load_seed_tasks(cfg.seeds)
    teacher = make_teacher(teacher_cfg)
    try:
        result = generate(teacher, seed_tasks, ctx.stage_dir, num_instructions=cfg.num_instructions, method=cfg.method,
                          config=sampling, seed=ctx.seed, formats=cfg.formats, export_incomplete=cfg.allow_incomplete)
    finally:
        close = getattr(teacher, "close", None)
        if close is not None:
            close()
    stats = result.stats
    log.info("self-instruct: %s", str(result.report).replace("\n", "\n  "))
    if not result.complete and not cfg.allow_incomplete:
        raise AlignError(f"self_instruct: {stats['stop_reason']}. The {stats['kept']} tasks kept so far are in "
                         f"{ctx.stage_dir}; run again to continue, raise sampling.max_teacher_calls / "
                         "max_idle_rounds, use a stronger teacher, or set allow_incomplete: true")
    if not result.files and not standalone:
        raise AlignError(f"self_instruct: {stats['stop_reason']}; no task was kept, so there is no data to pass on. "
                         "Use a stronger teacher or raise sampling.max_teacher_calls / max_idle_rounds")
    outputs = {"data": str(result.files[cfg.formats[0]])} if result.files else {}
    outputs.update({fmt: str(path) for fmt, path in result.files.items()})
    outputs["records"] = str(ctx.stage_dir / "machine_generated.jsonl")
    outputs["stats"] = str(ctx.stage_dir / "stats.json")
    metrics: dict[str, Any] = {
        "kept": stats["kept"],
        "target": stats["target"],
        "complete": stats["complete"],
        "raw_generations": stats["raw_generations"],
        "teacher_calls": stats["teacher_calls"],
        "rounds": stats["rounds"],
        "instances": stats["instances"]["total"],
        "unique_verbs": stats["diversity"]["unique_verbs"],
        "unique_verb_noun_pairs": stats["diversity"]["unique_pairs"],
        "generation_seconds": stats["elapsed_s"],
    }
    metrics.update({f"dropped/{reason}": n for reason, n in stats["filters"]["dropped"].items()})
    return StageResult(outputs=outputs, metrics=metrics)


def run_standalone(settings: dict, out_dir: str | Path, seed: int = 0) -> StageResult:
    """`align self-instruct`: this stage alone, writing straight into `out_dir` (resumable the same way)."""
    from pydantic import ValidationError

    try:
        cfg = Config.model_validate({**settings, "allow_incomplete": True})
    except ValidationError as exc:
        raise AlignError(f"self-instruct: {exc}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))  # names, never key values
    ctx = StageContext(name="self_instruct", stage_dir=out, run_dir=out, seed=seed, upstream={})
    result = run(cfg, ctx, standalone=True)
    (out / "result.json").write_text(result.to_json())
    if not result.metrics["complete"]:
        log.warning("self-instruct: incomplete (%d/%d tasks); see %s", result.metrics["kept"],
                    result.metrics["target"], out / "stats.json")
    return result


__all__ = ["Config", "run", "run_standalone", "EXPORT_FILES"]
