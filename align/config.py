"""Recipes: YAML files naming the stages to run, validated against typed settings.

A recipe is a mapping with a few top-level keys (``name``, ``description``, ``seed``, ``vars``)
and one section per stage (``self_instruct``, ``sft``, ``rank``, ``reward``, ``ppo``, ``eval``).
Stages always run in that order. Two kinds of references:

- ``${a.b.c}`` copies another field of the recipe (resolved when the recipe loads);
  ``${env:NAME}`` / ``${env:NAME,default}`` reads an environment variable.
- ``@stage`` (or ``@stage.output``) names the output of an earlier stage (resolved when the
  run reaches it, e.g. ``sft.data: "@self_instruct"``, ``ppo.policy: "@sft"``).

Command-line overrides are dotted paths: ``sft.train.lr=1e-4``.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, Tag, ValidationError, create_model

from align.errors import AlignError
from align.sections import section_model, shorthand_key, walk
from align.stages import STAGE_ORDER, stage_config_classes

_REF = re.compile(r"\$\{([^}]+)\}")


def recipe_model() -> type[BaseModel]:
    """The recipe schema: common keys + one optional section per known stage."""
    fields: dict[str, Any] = {
        "name": (str, Field("recipe", description="Recipe name, shown in reports.")),
        "description": (str, ""),
        "seed": (int, Field(42, description="Seed for every stage that samples or shuffles.")),
        "vars": (dict[str, Any], Field(default_factory=dict, description="Free values for ${vars.x} references.")),
    }
    for stage, cls in stage_config_classes().items():
        fields[stage] = (cls | None, None)
    return create_model("Recipe", __config__=ConfigDict(extra="forbid"), **fields)


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> BaseModel:
    """Read, override, interpolate and validate a recipe; every failure is one clear AlignError."""
    path = Path(path)
    if not path.is_file():
        raise AlignError(f"recipe not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AlignError(f"{yaml_error_where(exc, path)}: not valid YAML: {yaml_error_text(exc)}") from None
    if not isinstance(raw, dict):
        raise AlignError(f"{path}: a recipe must be a mapping of keys to values, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item, source=str(path))
    raw = resolve_references(raw, source=str(path))
    return validate_recipe(raw, source=str(path), text=text)


def yaml_error_where(exc: yaml.YAMLError, path: str | Path) -> str:
    """'file:line:column' of a YAML error (yaml names a parsed string '<unicode string>', not the file)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """What went wrong, with yaml's own position lines (which name '<unicode string>') left out."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [exc.context, exc.problem]
        if exc.context_mark is not None and exc.problem_mark is not None and exc.context_mark.line != exc.problem_mark.line:
            parts[0] = f"{exc.context} (line {exc.context_mark.line + 1})" if exc.context else None
        return "; ".join(p for p in parts if p) or str(exc)
    return str(exc)


def validate_recipe(raw: dict, source: str = "<recipe>", text: str | None = None) -> BaseModel:
    model = recipe_model()
    try:
        recipe = model.model_validate(raw)
    except ValidationError as exc:
        raise AlignError(format_validation_error(exc, model, source, text)) from None
    present = [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
    if not present:
        raise AlignError(f"{source}: the recipe has no stages; add at least one of: {', '.join(STAGE_ORDER)}")
    check_stage_inputs(recipe, source)
    return recipe


def apply_override(raw: dict, item: str, source: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to the raw recipe mapping."""
    if "=" not in item:
        raise AlignError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. sft.train.lr=1e-4")
    key, value_text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise AlignError(f"override {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise AlignError(f"override {item!r}: value is not valid YAML: {yaml_error_text(exc)}") from None
    model = recipe_model()

    def expand(i: int) -> str | None:  # `model: x` written out as `model: {name: x}` to override a key under it
        return shorthand_key(section_model(model, parts[:i]))

    try:
        node = walk(raw, parts, create=True, expand=expand)
    except TypeError as exc:
        where = ".".join(parts[: exc.args[0]])
        kind = type(walk(raw, parts[: exc.args[0]])).__name__
        raise AlignError(f"override {item!r}: {where} is a {kind} in {source}, not a section") from None
    node[parts[-1]] = value


def resolve_references(raw: dict, source: str = "<recipe>") -> dict:
    """Replace ${a.b} with the value at a.b (whole-string refs keep their type) and ${env:X,default}."""
    resolved = copy.deepcopy(raw)

    def resolve_value(value: Any, where: str, stack: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: resolve_value(v, f"{where}.{k}" if where else str(k), stack) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve_value(v, f"{where}.{i}", stack) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def one(ref: str) -> Any:
            if ref.startswith("env:"):
                name, _, default = ref[4:].partition(",")
                if name in os.environ:
                    return os.environ[name]
                if _:
                    return default
                raise AlignError(f"{source}: {where}: environment variable {name} is not set (and no default given)")
            if ref in stack:
                raise AlignError(f"{source}: {where}: circular reference ${{{ref}}} ({' -> '.join(stack + (ref,))})")
            try:
                target = walk(raw, ref.split("."))
            except KeyError:
                raise AlignError(f"{source}: {where}: reference ${{{ref}}} points to no key in the recipe") from None
            return resolve_value(target, ref, stack + (ref,))

        match = _REF.fullmatch(value)
        if match:
            return one(match.group(1).strip())
        return _REF.sub(lambda m: str(one(m.group(1).strip())), value)

    resolved = resolve_value(resolved, "", ())
    return resolved


def stage_refs(value: Any) -> list[str]:
    """All `@stage` references inside a stage section, as stage names."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        for v in value.values():
            found.extend(stage_refs(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(stage_refs(v))
    elif isinstance(value, str) and value.startswith("@"):
        found.append(value[1:].split(".")[0])
    return found


def check_stage_inputs(recipe: BaseModel, source: str) -> None:
    """Every @stage reference must name an earlier stage that the recipe has."""
    present = [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
    for stage in present:
        for ref in stage_refs(getattr(recipe, stage)):
            if ref not in STAGE_ORDER:
                hint = _did_you_mean(ref, STAGE_ORDER)
                raise AlignError(f"{source}: {stage}: '@{ref}' names no stage{hint}; stages are {', '.join(STAGE_ORDER)}")
            if ref not in present:
                raise AlignError(
                    f"{source}: {stage}: input '@{ref}' refers to stage '{ref}', which this recipe does not have "
                    f"(it has: {', '.join(present)}); add a '{ref}' section or point to a file instead"
                )
            if STAGE_ORDER.index(ref) >= STAGE_ORDER.index(stage):
                raise AlignError(f"{source}: {stage}: input '@{ref}' must name an earlier stage ({ref} runs after {stage})")


def recipe_inputs(section: Any, where: str) -> list[tuple[str, str, str]]:
    """(key, kind, reference) of every input a stage section names: kind is model, data, rankings,
    gold_prompts (a gold: spec or a prompt file) or file.

    ModelConfig and DataConfig fields are found by type; plain string fields say what they hold with
    ``json_schema_extra={"input": kind}``. Stage references (@stage) are left out: they exist once that
    stage has run.
    """
    from align.data import DataConfig
    from align.models import ModelConfig

    found: list[tuple[str, str, str]] = []
    if isinstance(section, ModelConfig):
        found.append((where, "model", section.name))
    elif isinstance(section, DataConfig):
        found.append((where, "data", section.path))
    elif isinstance(section, BaseModel):
        for name, field in type(section).model_fields.items():
            value, key = getattr(section, name), f"{where}.{name}"
            kind = (field.json_schema_extra or {}).get("input") if isinstance(field.json_schema_extra, dict) else None
            if kind and isinstance(value, str):
                found.append((key, kind, value))
            elif kind and isinstance(value, dict):  # e.g. eval.policies: name -> model reference
                found.extend((f"{key}.{k}", kind, v) for k, v in value.items() if isinstance(v, str))
            else:
                found.extend(recipe_inputs(value, key))
    elif isinstance(section, (list, tuple)):
        for i, value in enumerate(section):
            found.extend(recipe_inputs(value, f"{where}.{i}"))
    elif isinstance(section, dict):
        for k, value in section.items():
            found.extend(recipe_inputs(value, f"{where}.{k}"))
    return [item for item in found if not item[2].startswith("@")]


def check_recipe_inputs(recipe: BaseModel, source: str = "<recipe>", stages: list[str] | None = None) -> None:
    """Every local input of the given stages (default: all) exists: model folders, data and rankings files;
    and every tracker their `train.report_to` names is installed.

    The same checks the loaders start with (`check_model_ref`, `check_data_source`, `check_rankings_source`),
    run without loading a model or going online, so `align validate` rejects what `align run` would, and
    `align run` rejects it before the first stage starts instead of when the stage that reads it begins.
    """
    from align.data import check_data_source
    from align.eval.gold import check_prompt_set
    from align.models import check_model_ref
    from align.preferences.rankings import check_rankings_source
    from align.trackers import check_installed

    checks = {"model": check_model_ref, "data": check_data_source, "rankings": check_rankings_source,
              "gold_prompts": check_prompt_set, "file": _check_file}
    present = [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
    for stage in stages or present:
        for key, kind, ref in recipe_inputs(getattr(recipe, stage), stage):
            try:
                checks[kind](ref)
            except AlignError as exc:
                raise AlignError(f"{source}: {key}: {exc}") from None
        report_to = getattr(getattr(getattr(recipe, stage, None), "train", None), "report_to", None)
        if report_to:  # a tracker the stage would report to is installed
            try:
                check_installed(report_to, f"{stage}.train.report_to")
            except AlignError as exc:
                raise AlignError(f"{source}: {exc}") from None


def _check_file(ref: str) -> None:
    if not Path(ref).expanduser().is_file():
        raise AlignError(f"file not found: {ref}")


# --------------------------------------------------------------------------- error messages


def _did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _arms(annotation: Any) -> list[tuple[set[str], Any]]:
    """The arms of a union annotation, each with the names pydantic may put in an error's location for it:
    its class name, or its tag (a `Tag`, or the value of its `type` field, as in `judge: {type: gold}`)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    arms = []
    for arm in get_args(annotation):
        names: set[str] = set()
        if get_origin(arm) is Annotated:
            arm, *meta = get_args(arm)
            names |= {m.tag for m in meta if isinstance(m, Tag)}
        names.add(getattr(arm, "__name__", str(arm)))
        if _is_model(arm) and "type" in arm.model_fields:
            names |= {v for v in get_args(arm.model_fields["type"].annotation) if isinstance(v, str)}
        arms.append((names, arm))
    return arms


def _child(annotation: Any, part: Any) -> Any:
    """The annotation of `part` below `annotation` (a model's field, a dict's value, a list's item), or None."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if _is_model(annotation):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    if get_origin(annotation) is dict:
        return get_args(annotation)[1]
    if get_origin(annotation) in (list, tuple) and isinstance(part, int):
        return get_args(annotation)[0]
    for _, arm in _arms(annotation):  # an untagged union (`DataConfig | None`): the arm that has the key
        if (found := _child(arm, part)) is not None:
            return found
    return None


def _error_path(model: type[BaseModel], loc: tuple) -> tuple[tuple, type[BaseModel] | None, list[type[BaseModel]]]:
    """A pydantic error location as the recipe's keys, without the markers pydantic adds (validator kinds,
    union arms: 'str', a class name, a tag such as `simpo` in `dpo.method.simpo.gamma`); the model that owns
    its last key; and the other models that union could have been (to name where a misplaced key belongs)."""
    clean: list = []
    node: Any = model
    owner: type[BaseModel] | None = None
    siblings: list[type[BaseModel]] = []
    others: list[type[BaseModel]] = []
    for part in loc:
        if part in ("function-before", "function-after"):
            continue
        arms = _arms(node)
        picked = next((arm for names, arm in arms if part in names), None)
        if picked is not None:
            siblings = [arm for _, arm in arms if arm is not picked and _is_model(arm)]
            node = picked
            continue
        models = [node] if _is_model(node) else [arm for _, arm in arms if _is_model(arm)]
        owner = next((m for m in models if str(part) in m.model_fields), models[0] if models else None)
        others, siblings = siblings, []
        clean.append(part)
        node = _child(node, part)
    return tuple(clean), owner, others


def _unknown_key(name: str, owner: type[BaseModel] | None, others: list[type[BaseModel]], higher: str = "") -> str:
    """Why `name` is no key of `owner`, and where it may belong: to another choice of the same union
    (`dpo.method.loss_type` under `type: simpo`), to a section below (`dpo.beta` is `dpo.method.beta`), to a
    section above (`higher`: `ppo.train.log.report_to` is `ppo.train.report_to`), or it is misspelt."""
    allowed = list(owner.model_fields) if owner else []
    listing = f"; allowed here: {', '.join(allowed)}" if allowed else ""
    elsewhere = [_arm_name(m) for m in others if name in m.model_fields]
    if elsewhere and owner is not None:
        return f"not a setting of {_arm_name(owner)} (it is one of {', '.join(elsewhere)}){listing}"
    below = [f"{field}.{name}" for field, section in _sections(owner) if name in section.model_fields]
    if below:
        return f"unknown key (did you mean '{below[0]}'?)"
    hint = _did_you_mean(name, allowed) or higher
    return f"unknown key{hint}" + ("" if hint else listing)


def _higher_up(model: type[BaseModel], loc: tuple) -> str:
    """A did-you-mean for a key written one section too deep (`ppo.train.log.report_to` for
    `ppo.train.report_to`): the nearest section above that has it."""
    for n in range(len(loc) - 2, -1, -1):
        node: Any = model
        for part in loc[:n]:
            node = _child(node, part) if node is not None else None
        models = [node] if _is_model(node) else [arm for _, arm in _arms(node)] if node is not None else []
        if any(_is_model(m) and str(loc[-1]) in m.model_fields for m in models):
            return f" (did you mean '{'.'.join(str(p) for p in (*loc[:n], loc[-1]))}'?)"
    return ""


def _sections(model: type[BaseModel] | None) -> list[tuple[str, type[BaseModel]]]:
    """(field, section model) of every section directly below `model`, each choice of a union included."""
    found = []
    for name, field in (model.model_fields.items() if model else []):
        annotation = field.annotation
        arms = [arm for _, arm in _arms(annotation)] or [annotation]
        found += [(name, arm) for arm in arms if _is_model(arm)]
    return found


def _arm_name(model: type[BaseModel]) -> str:
    """How a recipe names one arm of a union: its `type` (`simpo`), else its class name."""
    field = model.model_fields.get("type")
    return str(field.default) if field is not None and isinstance(field.default, str) else model.__name__


def _line_of(text: str | None, loc: tuple) -> int | None:
    """1-based line of the key at `loc` in the YAML text, or of its closest existing parent."""
    if not text:
        return None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, text: str | None) -> str:
    lines = [f"{source}: invalid recipe ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        clean, owner, others = _error_path(model, tuple(err["loc"]))
        key = ".".join(str(p) for p in clean) or "(top level)"
        line = _line_of(text, clean)
        where = f"{source}:{line}: " if line else ""
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(str(clean[-1]), owner, others, _higher_up(model, clean))
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            got = err.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            what = err["msg"].removeprefix("Value error, ")  # our validators' own sentences need no prefix
            msg = f"{what}{got_text}"
        lines.append(f"  {where}{key}: {msg}")
    return "\n".join(lines)
