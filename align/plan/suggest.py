"""Suggestions: concrete recipe changes that shrink a stage's peak, each one re-estimated.

A change is a set of dotted keys of the stage's settings (the knobs each estimator names, from
`align.plan.settings`); it is applied to the settings as a mapping, validated again and planned
again, so the figure shown is the plan of the recipe with those overrides.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from align.errors import AlignError
from align.models import AdapterConfig
from align.plan.estimate import StageEstimate, Suggestion
from align.training import TrainConfig

if TYPE_CHECKING:
    from align.plan.planner import Planner

# Values a mapping may leave out are the schema's (typed stages always have every key).
_TRAIN, _ADAPTER = TrainConfig.model_fields, AdapterConfig.model_fields

def _retry(planner: Planner, name: str, section: dict, changes: dict[str, Any]) -> tuple[StageEstimate | None, list[str]]:
    """The stage planned with `changes` applied; None when the changed settings do not validate."""
    changed = copy.deepcopy(section)
    for path, value in changes.items():
        set_path(changed, path, value)
    overrides = [f"{name}.{p}={_yaml(v)}" for p, v in changes.items()]
    try:
        return planner.stage(name, changed), overrides
    except AlignError:  # e.g. a setting's own bounds: not a change to suggest
        return None, overrides


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def suggest(planner: Planner, name: str, section: BaseModel | dict[str, Any], est: StageEstimate,
            budget: float) -> list[Suggestion]:
    """Concrete changes that shrink a stage, each re-estimated; if none fits alone, they are stacked in
    order (mildest step of each first) until the stage fits."""
    knobs = est.knobs
    if not knobs:
        return []
    section = section.model_dump() if isinstance(section, BaseModel) else section

    def current(path: str, default: Any = None) -> Any:
        value = get_path(section, path)
        return default if value is None else value

    options: list[tuple[str, dict[str, Any]]] = []
    quant_paths = knobs.get("quantization") or []
    quant_paths = quant_paths if isinstance(quant_paths, list) else [quant_paths]
    if any(current(p, "none") != "4bit" for p in quant_paths):
        change: dict[str, Any] = {p: "4bit" for p in quant_paths}
        label = "4-bit base weights (NF4)"
        if "adapter" in knobs and current("adapter.type", _ADAPTER["type"].default) == "full":
            r = _ADAPTER["r"].default
            change.update({"adapter.type": "lora", "adapter.r": r})
            label = f"QLoRA: LoRA r={r} on a 4-bit base instead of full fine-tuning"
        options.append((label, change))
    if "value_head" in knobs:
        options.append(("value model as a head on the policy (no second forward)", {knobs["value_head"]: "head"}))
    if "checkpointing" in knobs and not current(knobs["checkpointing"], _TRAIN["gradient_checkpointing"].default):
        options.append(("activation checkpointing", {knobs["checkpointing"]: True}))
    if "optim" in knobs and "8bit" not in str(current(knobs["optim"], _TRAIN["optim"].default)):
        options.append(("8-bit optimizer (bitsandbytes)", {knobs["optim"]: "paged_adamw_8bit"}))

    def halving(path: str, start: int, floor: int) -> list[dict[str, Any]]:
        return [{path: start // 2**k} for k in range(1, 12) if start // 2**k >= floor]

    halvings: list[tuple[str, list[dict[str, Any]]]] = []
    if "batch_size" in knobs:
        bs = int(current(knobs["batch_size"], _TRAIN["batch_size"].default))
        ga = int(current(knobs["grad_accum"], _TRAIN["grad_accum"].default))
        halvings.append(("smaller micro-batch, more accumulation (same effective batch)",
                         [{knobs["batch_size"]: bs // 2**k, knobs["grad_accum"]: ga * 2**k}
                          for k in range(1, 8) if bs % 2**k == 0]))
    if "max_length" in knobs:
        start = int(current(knobs["max_length"], _TRAIN["max_length"].default))
        halvings.append(("shorter max length", halving(knobs["max_length"], start, 64)))
    if "gen_batch" in knobs:
        start = int(current(knobs["gen_batch"], knobs.get("gen_batch_default")))
        halvings.append(("smaller generation batch", halving(knobs["gen_batch"], start, 1)))
    if "max_new_tokens" in knobs:
        start = int(current(knobs["max_new_tokens"], knobs.get("max_new_tokens_default")))
        halvings.append(("fewer new tokens", halving(knobs["max_new_tokens"], start, 16)))

    results: list[Suggestion] = []
    for label, change in options:
        new, overrides = _retry(planner, name, section, change)
        if new is not None and new.total < est.total:
            results.append(Suggestion(label, overrides, new.total, new.total <= budget))
    for label, steps in halvings:
        best = None
        for change in steps:  # the mildest step that fits, else the strongest one tried
            new, overrides = _retry(planner, name, section, change)
            if new is None:
                continue
            best = Suggestion(label, overrides, new.total, new.total <= budget)
            if best.fits:
                break
        if best and best.total < est.total:  # a knob that does not touch the peak is no suggestion
            results.append(best)
    if any(r.fits for r in results):  # one change is enough: no need to stack them
        return results
    combined: dict[str, Any] = {}
    steps_taken = 0
    new = None
    for _, change in options + [(lbl, step) for lbl, steps in halvings for step in steps]:
        trial = {**combined, **change}
        tried, trial_overrides = _retry(planner, name, section, trial)
        if tried is None:  # this step does not validate on top of the others: leave it out
            continue
        combined, new, overrides = trial, tried, trial_overrides
        steps_taken += 1
        if new.total <= budget:
            break
    if steps_taken > 1 and new is not None:
        results.append(Suggestion("combined (in the order above, until it fits)", overrides, new.total,
                                  new.total <= budget))
    return results


def get_path(node: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(node, str) and part != "name":
            return None
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_path(section: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = section
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str):  # a model given as a plain reference
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value
