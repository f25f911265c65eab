"""Heuristic quality filters for generated tasks, each with a named reason so drops can be counted.

Instruction filters follow Self-Instruct / Stanford Alpaca: drop instructions that mention things a
text-only model cannot see or produce (images, files, maps, plots...), that are too short or too long,
or that start with punctuation or a non-English character. Instance filters drop empty outputs and
duplicate instances, and reject a whole task whose instances give different outputs for the same
(non-empty) input, which usually means the teacher did not understand the task.

``FilterReport`` tallies kept tasks and drops per reason (including ``near_duplicate`` from the ROUGE-L
pool, recorded by the generation loop), prints as a table and serialises to JSON.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Reason names (stable strings: they end up in JSON reports).
BLACKLISTED_WORD = "blacklisted_word"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
STARTS_NON_ENGLISH = "starts_non_english"
EMPTY_OUTPUT = "empty_output"
DUPLICATE_INSTANCE = "duplicate_instance"
SAME_INPUT_DIFFERENT_OUTPUT = "same_input_different_output"
NO_INSTANCES = "no_instances"
NEAR_DUPLICATE = "near_duplicate"

REASONS = (
    BLACKLISTED_WORD, TOO_SHORT, TOO_LONG, STARTS_WITH_PUNCTUATION, STARTS_NON_ENGLISH, NEAR_DUPLICATE,
    SAME_INPUT_DIFFERENT_OUTPUT, EMPTY_OUTPUT, DUPLICATE_INSTANCE, NO_INSTANCES,
)
"""Every reason a filter in this package can give, in report order."""

BLACKLIST = (
    "image", "images", "picture", "pictures", "graph", "graphs", "file", "files", "map", "maps",
    "draw", "drawing", "plot", "plots", "go to",
)
"""Words that point at inputs or outputs a text-only model cannot handle (Self-Instruct's list plus a few)."""

MIN_WORDS = 3
MAX_WORDS = 150


def _blacklist_re(words: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


_BLACKLIST_RE = _blacklist_re(BLACKLIST)


def blacklisted_word(instruction: str, pattern: re.Pattern[str] = _BLACKLIST_RE) -> str | None:
    """The first blacklisted word in the instruction (whole words only: "profile" does not match "file")."""
    match = pattern.search(instruction)
    return match.group(0) if match else None


def instruction_drop_reason(
    instruction: str,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    blacklist: Sequence[str] | None = None,
) -> str | None:
    """Why the instruction should be dropped (one of the reason names above), or None to keep it.

    Checks run in a fixed order and the first failing one is reported: blacklist, too short (fewer than
    ``min_words`` words), too long (more than ``max_words``), leading punctuation, leading non-English
    character (anything but an ASCII letter or digit).
    """
    text = instruction.strip()
    if blacklist is None or len(blacklist):
        pattern = _BLACKLIST_RE if blacklist is None else _blacklist_re(blacklist)
        if blacklisted_word(text, pattern):
            return BLACKLISTED_WORD
    n_words = len(text.split())
    if not text:
        return TOO_SHORT
    if n_words < min_words:
        return TOO_SHORT
    if n_words > max_words:
        return TOO_LONG
    if text[0] in string.punctuation:
        return STARTS_WITH_PUNCTUATION
    if not (text[0].isascii() and text[0].isalnum()):
        return STARTS_NON_ENGLISH
    return None


def _get(instance: Mapping | object, key: str) -> str:
    value = instance.get(key, "") if isinstance(instance, Mapping) else getattr(instance, key, "")
    return "" if value is None else str(value)


@dataclass
class InstanceCheck:
    """Result of ``filter_instances``: the instances to keep, why the task is dropped (if it is), and
    how many single instances each instance-level filter removed."""

    instances: list[dict[str, str]]
    drop_reason: str | None = None
    removed: dict[str, int] = field(default_factory=dict)


def filter_instances(instances: Iterable[Mapping | object]) -> InstanceCheck:
    """Drop empty-output and duplicate instances; reject the task on conflicting outputs or nothing left.

    Same non-empty input with different outputs rejects the whole task (as in Self-Instruct): the
    instances contradict each other. Same empty input with different outputs is fine ("write a poem").
    Inputs and outputs are compared after stripping outer whitespace.
    """
    removed = {EMPTY_OUTPUT: 0, DUPLICATE_INSTANCE: 0}
    kept: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    output_for_input: dict[str, str] = {}
    conflict = False
    for inst in instances:
        inp, out = _get(inst, "input").strip(), _get(inst, "output").strip()
        if not out:
            removed[EMPTY_OUTPUT] += 1
            continue
        if (inp, out) in seen:
            removed[DUPLICATE_INSTANCE] += 1
            continue
        if inp and output_for_input.setdefault(inp, out) != out:
            conflict = True
        seen.add((inp, out))
        kept.append({"input": inp, "output": out})
    removed = {k: v for k, v in removed.items() if v}
    if conflict:
        return InstanceCheck([], SAME_INPUT_DIFFERENT_OUTPUT, removed)
    if not kept:
        reason = EMPTY_OUTPUT if removed.get(EMPTY_OUTPUT) else NO_INSTANCES
        return InstanceCheck([], reason, removed)
    return InstanceCheck(kept, None, removed)


@dataclass
class FilterReport:
    """Counts of kept tasks and of dropped tasks per reason; ``instances_removed`` counts single instances
    removed from tasks that were otherwise kept or dropped."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    instances_removed: dict[str, int] = field(default_factory=dict)

    def keep(self, n: int = 1) -> None:
        self.kept += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def record(self, reason: str | None) -> bool:
        """Count one task as kept (reason None) or dropped; returns whether it was kept."""
        if reason is None:
            self.keep()
            return True
        self.drop(reason)
        return False

    def add_instance_check(self, check: InstanceCheck) -> None:
        for reason, n in check.removed.items():
            self.instances_removed[reason] = self.instances_removed.get(reason, 0) + n

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def total(self) -> int:
        return self.kept + self.total_dropped

    def merge(self, other: FilterReport) -> FilterReport:
        merged = FilterReport(self.kept + other.kept, dict(self.dropped), dict(self.instances_removed))
        for reason, n in other.dropped.items():
            merged.drop(reason, n)
        for reason, n in other.instances_removed.items():
            merged.instances_removed[reason] = merged.instances_removed.get(reason, 0) + n
        return merged

    def _ordered(self, counts: Mapping[str, int]) -> list[tuple[str, int]]:
        order = {r: i for i, r in enumerate(REASONS)}
        return sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped_total": self.total_dropped,
            "dropped": dict(self._ordered(self.dropped)),
            "instances_removed": dict(self._ordered(self.instances_removed)),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> FilterReport:
        return cls(int(data.get("kept", 0)), dict(data.get("dropped", {})), dict(data.get("instances_removed", {})))

    def __str__(self) -> str:
        total = self.total
        width = max([len("kept"), *(len(r) for r in self.dropped), *(len(r) for r in self.instances_removed)])

        def row(name: str, n: int, of: int) -> str:
            share = f"{100 * n / of:5.1f}%" if of else "    -"
            return f"  {name:<{width}}  {n:>7}  {share}"

        lines = [f"Filter report: {total} tasks", row("kept", self.kept, total)]
        lines += [row(r, n, total) for r, n in self._ordered(self.dropped)]
        if self.instances_removed:
            lines.append("Instances removed (tasks kept or dropped later):")
            lines += [f"  {r:<{width}}  {n:>7}" for r, n in self._ordered(self.instances_removed)]
        return "\n".join(lines)
