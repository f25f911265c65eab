"""Two rules every recipe section follows: a plain string can stand for a section, and keys are dotted paths.

- ``policy: "@sft"`` means ``policy: {name: "@sft"}``: a section model that allows this subclasses
  `Shorthand` and names the key the string fills (`shorthand_key`). Recipe loading, command-line
  overrides (``ppo.policy.precision=bf16`` on ``policy: "@sft"``) and pydantic validation all ask the
  same class.
- ``a.b.c`` walks mappings (and list indices when reading): `walk` is the one walker, used by
  ``${a.b}`` references and overrides.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, model_validator


class Shorthand(BaseModel):
    """A section that a plain string may stand for: the string fills `shorthand_key`."""

    shorthand_key: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {cls.shorthand_key: value} if isinstance(value, str) else value


def shorthand_key(model: Any) -> str | None:
    """The key a plain string fills for this section model, or None when a string cannot stand for it."""
    if isinstance(model, type) and issubclass(model, Shorthand):
        return model.shorthand_key
    return None


def section_model(annotation: Any, parts: list[str] | tuple[str, ...]) -> type[BaseModel] | None:
    """The section model at the dotted path `parts` below a model (or type annotation), or None.

    Follows model fields, dict values and list items (a numeric part), and tries each arm of a union
    (``judge: GoldJudgeConfig | LLMJudgeConfig``, ``data: DataConfig | None``) until one has the path.
    """
    origin = get_origin(annotation)
    if origin is Annotated:  # `Annotated[DPOMethod, Tag("dpo")]`: the model it annotates
        return section_model(get_args(annotation)[0], parts)
    if origin is Union or origin is types.UnionType:
        for arm in get_args(annotation):
            if (found := section_model(arm, parts)) is not None:
                return found
        return None
    if not parts:
        return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    part, rest = parts[0], parts[1:]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return section_model(field.annotation, rest) if field is not None else None
    if origin is dict:
        return section_model(get_args(annotation)[1], rest)
    if origin in (list, tuple) and part.isdigit():
        return section_model(get_args(annotation)[0], rest)
    return None


def walk(root: Any, parts: list[str], *, create: bool = False,
         expand: Any = None) -> Any:
    """The node at the dotted path `parts` below `root`; KeyError(dotted) when there is none.

    create: make missing (or null) sections on the way and return the last mapping *above* the final
    part (for overrides to assign into); a mapping and list indices are walked otherwise.
    expand(i) -> key: when the node at parts[:i] is a plain string that shorthand `key` stands for,
    write it out as ``{key: string}`` first (``model: x`` -> ``model: {name: x}``).
    Raises TypeError(i) when, with create, the node at parts[:i] is not a section.
    """
    node = root
    steps = parts[:-1] if create else parts
    for i, part in enumerate(steps):
        if isinstance(node, dict) and create:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if isinstance(child, str) and expand is not None and (key := expand(i + 1)):
                child = node[part] = {key: child}
            if not isinstance(child, dict):
                raise TypeError(i + 1)
            node = child
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(".".join(parts))
    return node
