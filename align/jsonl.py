"""JSON records from files: one reader for every .jsonl (one object a line) and .json (a list) align reads.

A line that is not a JSON object fails the read with an `AlignError` naming ``file:line``, what was wrong
and what was expected. Blank lines are skipped. Callers choose a tolerance where their files need one:

- ``torn_tail``: a last line with no newline after it that does not parse is a write cut off by a kill,
  not corruption; it is skipped (files align appends to while it runs: labels, stats, rankings).
- ``skip_bad``: every line that is not a JSON object is skipped (the run report, which shows whatever a
  killed or damaged run left rather than fail).
- ``missing_ok``: a file that does not exist has no records.

Lines are split at ``\\n`` only, as JSONL defines them (``str.splitlines`` would also split inside a string
holding U+2028), and each line is decoded on its own, so a kill that cuts a multi-byte character in half
is a torn tail like any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from align.errors import AlignError

ONE_PER_LINE = "one JSON object per line"


class EmptyFileError(AlignError):
    """A data file with nothing in it (callers with a more specific message catch this one)."""


def json_kind(value: object) -> str:
    """The JSON name of a parsed value's type, for messages ("array", not "list")."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def parse_jsonl(data: bytes, path: str | Path, *, like: str | None = None, torn_tail: bool = False,
                skip_bad: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each object line of `data`, the contents of `path`.

    `like` is an example record for error messages ("expected one JSON object per line like {...}").
    """
    expected = ONE_PER_LINE + (f" like {like}" if like else "")
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        except json.JSONDecodeError as exc:
            problem = f"not valid JSON ({exc.msg} at column {exc.colno})"
        else:
            if isinstance(record, dict):
                yield lineno, record
                continue
            if skip_bad:
                continue
            raise AlignError(f"{path}:{lineno}: expected a JSON object{f' like {like}' if like else ''}, "
                             f"got a JSON {json_kind(record)}")
        if skip_bad or (torn_tail and lineno == len(lines)):  # no newline after it: a write cut off by a kill
            continue
        raise AlignError(f"{path}:{lineno}: {problem}; expected {expected}")


def iter_jsonl(path: str | Path, *, like: str | None = None, torn_tail: bool = False, skip_bad: bool = False,
               missing_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each record of a JSONL file; the tolerances are in the module doc."""
    path = Path(path)
    if missing_ok and not path.exists():
        return
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AlignError(f"{path}: file not found; expected a JSONL file ({ONE_PER_LINE})") from None
    yield from parse_jsonl(data, path, like=like, torn_tail=torn_tail, skip_bad=skip_bad)


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a .json file (a list of objects) or a .jsonl file, each with where it is ('file:line', or
    'file record i' in a list) for the caller's own error messages."""
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():  # json.loads would say "Expecting value", which names neither the file nor the cause
        raise EmptyFileError(f"{path}: empty file; expected a JSON list of records (.json) or {ONE_PER_LINE} "
                             "(.jsonl)")
    if path.suffix != ".json" and not data.lstrip().startswith(b"["):
        return [(f"{path}:{lineno}", rec) for lineno, rec in parse_jsonl(data, path)]
    try:
        records = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AlignError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected a JSON list of "
                         "records") from None
    except json.JSONDecodeError as exc:
        raise AlignError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}); expected a "
                         "JSON list of records") from None
    if not isinstance(records, list):
        raise AlignError(f"{path}: expected a JSON list of records, got a JSON {json_kind(records)}")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise AlignError(f"{path}: record {i}: expected a JSON object, got a JSON {json_kind(rec)}")
    return [(f"{path} record {i}", rec) for i, rec in enumerate(records)]


def repair_torn_tail(path: str | Path) -> int:
    """Truncate a torn final line (bytes after the last newline: a write a kill interrupted), durably, before
    a resumed run appends; returns how many bytes were removed (0 when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        # Read backwards in blocks until the last newline is found.
        end = size
        block = 4096
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = start + idx + 1
                break
            end = start
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep
