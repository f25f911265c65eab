"""Heuristic quality filters for generated tasks, each with a named reason so drops can be counted.

The rules are those of the original code (yizhongw/self-instruct ``bootstrap_instructions.py``
``post_process_gpt3_response`` and ``prepare_for_finetuning.py`` ``filter_invalid_instances`` /
``filter_duplicate_instances``; tatsu-lab/stanford_alpaca ``generate_instruction.py``
``post_process_gpt3_response``):

- instructions: drop those with 3 words or fewer or more than 150, that name something a text-only model
  cannot see or produce (``BLACKLIST``, whole words; the Alpaca method adds ``ALPACA_EXTRA_BLACKLIST``),
  that start with "Write a program", with punctuation or with a non-ASCII character;
- instances: drop those with an empty output, an input equal to the output, or an input or output ending
  in ":" (usually a cut-off generation), and duplicates; reject a whole task whose instances give
  different outputs for the same (non-empty) input: the teacher did not understand the task.

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
WRITE_A_PROGRAM = "write_a_program"
STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
STARTS_NON_ENGLISH = "starts_non_english"
EMPTY_OUTPUT = "empty_output"
INPUT_EQUALS_OUTPUT = "input_equals_output"
ENDS_WITH_COLON = "ends_with_colon"
DUPLICATE_INSTANCE = "duplicate_instance"
SAME_INPUT_DIFFERENT_OUTPUT = "same_input_different_output"
NO_INSTANCES = "no_instances"
NEAR_DUPLICATE = "near_duplicate"

REASONS = (
    BLACKLISTED_WORD, TOO_SHORT, TOO_LONG, WRITE_A_PROGRAM, STARTS_WITH_PUNCTUATION, STARTS_NON_ENGLISH,
    NEAR_DUPLICATE, SAME_INPUT_DIFFERENT_OUTPUT, EMPTY_OUTPUT, INPUT_EQUALS_OUTPUT, ENDS_WITH_COLON,
    DUPLICATE_INSTANCE, NO_INSTANCES,
)
"""Every reason a filter in this package can give, in report order."""

BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to",
)
"""Words that point at inputs or outputs a text-only model cannot handle (Self-Instruct's list)."""

ALPACA_EXTRA_BLACKLIST = ("video", "audio", "music", "flowchart", "diagram")
"""What Stanford Alpaca adds to the list."""

ALPACA_BLACKLIST = BLACKLIST + ALPACA_EXTRA_BLACKLIST

MIN_WORDS = 4
"""Instructions with fewer words are dropped (the originals: ``len(inst.split()) <= 3``)."""
MAX_WORDS = 150

_WRITE_A_PROGRAM_RE = re.compile(r"write\s+a\s+program", re.IGNORECASE)


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

    Checks run in a fixed order and the first failing one is reported: blacklist (``BLACKLIST`` when None),
    too short (fewer than ``min_words`` words), too long (more than ``max_words``), "Write a program..."
    (any case, as the original capitalises before comparing), leading punctuation, leading non-English
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
    if _WRITE_A_PROGRAM_RE.match(text):
        return WRITE_A_PROGRAM
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


def instance_drop_reason(inp: str, out: str) -> str | None:
    """Why one (input, output) instance is unusable (Self-Instruct's ``filter_invalid_instances``), or None.

    Empty output; input equal to the output; input or output ending in ":" (usually a cut-off generation).
    Compares stripped text.
    """
    inp, out = inp.strip(), out.strip()
    if not out:
        return EMPTY_OUTPUT
    if inp == out:
        return INPUT_EQUALS_OUTPUT
    if inp.endswith(":") or out.endswith(":"):
        return ENDS_WITH_COLON
    return None


def filter_instances(instances: Iterable[Mapping | object]) -> InstanceCheck:
    """Drop unusable (``instance_drop_reason``) and duplicate instances; reject the task on conflicting
    outputs or when nothing is left.

    Same non-empty input with different outputs rejects the whole task (as in Self-Instruct): the
    instances contradict each other. Same empty input with different outputs is fine ("write a poem").
    Inputs and outputs are compared after stripping outer whitespace.
    """
    removed: dict[str, int] = {}
    kept: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    output_for_input: dict[str, str] = {}
    conflict = False
    for inst in instances:
        inp, out = _get(inst, "input").strip(), _get(inst, "output").strip()
        reason = instance_drop_reason(inp, out)
        if reason is None and (inp, out) in seen:
            reason = DUPLICATE_INSTANCE
        if reason is not None:
            removed[reason] = removed.get(reason, 0) + 1
            continue
        if inp and output_for_input.setdefault(inp, out) != out:
            conflict = True
        seen.add((inp, out))
        kept.append({"input": inp, "output": out})
    if conflict:
        return InstanceCheck([], SAME_INPUT_DIFFERENT_OUTPUT, removed)
    if not kept:
        # the commonest reason the instances went (report order breaks ties)
        order = {r: i for i, r in enumerate(REASONS)}
        reason = min(removed, key=lambda r: (-removed[r], order.get(r, len(order))), default=NO_INSTANCES)
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
