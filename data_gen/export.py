"""Write kept tasks as training data: Alpaca JSON, Self-Instruct JSONL, or chat JSONL.

A task is a ``SeedTask`` or a mapping with ``instruction`` and ``instances`` (``[{input, output}]``),
optionally ``id``, ``name`` and ``is_classification``. Alpaca and chat files get one example per
instance; Self-Instruct JSONL keeps one line per task in the seed format, so it can be loaded back with
``seeds.load_seed_tasks`` or used as a seed file itself. All three load with
``datasets.load_dataset("json", data_files=path)`` and with ``align.data.load_examples``. Every file is
written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from align.data import alpaca_user_message
from align.data_gen.seeds import SeedTask
from align.errors import AlignError


def _task_dict(task: SeedTask | Mapping[str, Any], index: int) -> dict[str, Any]:
    if isinstance(task, SeedTask):
        return task.model_dump()
    if not isinstance(task, Mapping) or "instruction" not in task or "instances" not in task:
        raise AlignError(f"task {index}: expected an object with 'instruction' and 'instances'")
    instances = []
    for j, inst in enumerate(task["instances"]):
        if not isinstance(inst, Mapping) or "output" not in inst:
            raise AlignError(f"task {index}: instances[{j}] must be an object with 'input' and 'output'")
        instances.append({"input": str(inst.get("input") or ""), "output": str(inst["output"])})
    return {
        "id": str(task.get("id") or f"task_{index}"),
        "name": str(task.get("name") or ""),
        "instruction": str(task["instruction"]),
        "instances": instances,
        "is_classification": bool(task.get("is_classification", False)),
    }


def to_alpaca(tasks: Iterable[SeedTask | Mapping[str, Any]]) -> list[dict[str, str]]:
    """One ``{instruction, input, output}`` per instance."""
    return [
        {"instruction": t["instruction"].strip(), "input": inst["input"].strip(), "output": inst["output"].strip()}
        for i, task in enumerate(tasks)
        for t in [_task_dict(task, i)]
        for inst in t["instances"]
    ]


def to_chat(tasks: Iterable[SeedTask | Mapping[str, Any]]) -> list[dict[str, list[dict[str, str]]]]:
    """One ``{"messages": [user, assistant]}`` per instance; the user turn is instruction + blank line + input."""
    return [
        {
            "messages": [
                {"role": "user", "content": alpaca_user_message(ex["instruction"], ex["input"])},
                {"role": "assistant", "content": ex["output"]},
            ]
        }
        for ex in to_alpaca(tasks)
    ]


def _write_atomic(path: str | Path, chunks: Iterable[str]) -> Path:
    """Write to a temporary file next to `path`, then rename it over `path`: a reader (or a crash) sees the
    old file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    return _write_atomic(path, (json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))


def write_alpaca_json(tasks: Iterable[SeedTask | Mapping[str, Any]], path: str | Path) -> Path:
    """Alpaca format: a single JSON list of ``{instruction, input, output}``."""
    return _write_atomic(path, [json.dumps(to_alpaca(tasks), ensure_ascii=False, indent=2) + "\n"])


def write_self_instruct_jsonl(tasks: Iterable[SeedTask | Mapping[str, Any]], path: str | Path) -> Path:
    """Self-Instruct seed format, one task per line, all its instances kept."""
    return _write_jsonl((_task_dict(t, i) for i, t in enumerate(tasks)), path)


def write_chat_jsonl(tasks: Iterable[SeedTask | Mapping[str, Any]], path: str | Path) -> Path:
    """Chat format: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` per line."""
    return _write_jsonl(to_chat(tasks), path)


EXPORT_FORMATS = {"alpaca": write_alpaca_json, "self_instruct": write_self_instruct_jsonl, "chat": write_chat_jsonl}
"""Format name -> writer, for a CLI or stage option."""


def export(tasks: Iterable[SeedTask | Mapping[str, Any]], path: str | Path, fmt: str) -> Path:
    """Write tasks in the named format (alpaca | self_instruct | chat)."""
    writer = EXPORT_FORMATS.get(fmt)
    if writer is None:
        raise AlignError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    return writer(list(tasks), path)
