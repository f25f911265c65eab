"""Labeling tasks: one prompt and its K responses, read from the rank stage's ``tasks.jsonl``.

A task's id is its index plus a hash of its prompt (``"3-9f86d081884c"``), so labels stay tied to
the right task when the file is re-read, and a label made for a different tasks file is not
mistaken for one of this file's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.errors import AlignError

MAX_RESPONSES = 9  # number keys 1-9 pick responses; InstructGPT showed K = 4..9


@dataclass(frozen=True)
class Task:
    """One prompt (a string or chat messages) and the responses a labeler puts in order."""

    index: int
    task_id: str
    prompt: str | list[dict]
    responses: list[str]
    where: str  # "file:line", for error messages

    @property
    def k(self) -> int:
        return len(self.responses)


def task_id(index: int, prompt: Any) -> str:
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{index}-{digest[:12]}"


def parse_task(index: int, rec: dict, where: str) -> Task:
    """A ``{prompt, responses}`` record → Task; anything else is an error naming file:line."""
    from align.preferences.rankings import prompt_messages

    if "prompt" not in rec or "responses" not in rec:
        raise AlignError(f"{where}: a labeling task needs 'prompt' and 'responses' (got keys {sorted(rec)}); "
                         "expected {\"prompt\": str, \"responses\": [str, ...]}")
    prompt = rec["prompt"]
    messages = prompt_messages(prompt, where)  # validates a string or a chat-message list
    if not isinstance(prompt, str):
        prompt = messages
    responses = rec["responses"]
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise AlignError(f"{where}: 'responses' must be a list of strings, got {responses!r:.80}")
    if not 2 <= len(responses) <= MAX_RESPONSES:
        raise AlignError(f"{where}: a task needs 2 to {MAX_RESPONSES} responses to rank, got {len(responses)}")
    return Task(index, task_id(index, prompt), prompt, list(responses), where)


def load_tasks(path: str | Path) -> list[Task]:
    """Every task of a JSONL (or JSON list) file, in file order."""
    from align.jsonl import EmptyFileError, read_records

    path = Path(path).expanduser()
    if not path.is_file():
        raise AlignError(f"tasks file not found: {path} (the rank stage writes tasks.jsonl with judge: human)")
    try:
        rows = read_records(path)
    except EmptyFileError:
        rows = []
    tasks = [parse_task(i, rec, where) for i, (where, rec) in enumerate(rows)]
    if not tasks:
        raise AlignError(f"{path}: no tasks; expected one {{\"prompt\": ..., \"responses\": [...]}} per line")
    return tasks
