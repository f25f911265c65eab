"""Append-only JSONL records that survive a crash: the resumable output of a generation run.

A record counts as written once its line, newline included, is on disk: ``RecordWriter.append`` writes
the whole line in one call, then flushes and fsyncs. If the process dies mid-write, the file ends in a
torn line with no newline; ``align.jsonl.repair_torn_tail`` (run by the writer on open and by
``load_records``) truncates it away, so resuming neither loses a committed record nor sees half of one. A newline-terminated line that
is not valid JSON is real corruption and raises an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from align.jsonl import parse_jsonl, repair_torn_tail


def _committed(path: Path) -> list[dict[str, Any]]:
    """The records of the newline-terminated lines: the bytes after the last newline were never committed."""
    data = path.read_bytes()
    return [rec for _, rec in parse_jsonl(data[: data.rfind(b"\n") + 1], path)]


def load_records(path: str | Path, fix: bool = True) -> list[dict[str, Any]]:
    """All complete records of a JSONL file ([] if it does not exist).

    A torn last line is ignored; with ``fix`` (the default) it is also truncated from the file, so the
    next append starts on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return []
    if fix:
        repair_torn_tail(path)
    return _committed(path)


def count_records(path: str | Path) -> int:
    """How many complete records the file holds (a torn last line is not counted; the file is untouched)."""
    return len(load_records(path, fix=False))


class RecordWriter:
    """Append JSON records to a JSONL file, durably, one line each.

    Use as a context manager::

        with RecordWriter(out_path) as writer:   # repairs a torn tail left by a crash
            done = writer.count                  # records already there: resume after them
            writer.append({"instruction": ..., "instances": [...]})
    """

    def __init__(self, path: str | Path, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.count = len(_committed(self.path)) if self.path.exists() else 0
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()/__exit__

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))  # one write per record: a crash leaves at most one torn line
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
