"""The labels file: one JSON line per (task, labeler), appended and fsynced as each label is made.

A record is a ranking record (what the reward stage reads) plus who made it and what they noticed::

    {"prompt": ..., "responses": [...], "ranking": [[2], [0, 3], [1]],
     "flags": [[], ["off-topic"], [], []], "skipped": false, "task_id": "0-9f86d0...", "labeler": "ann"}

A skipped task has ``"skipped": true`` and no ``ranking``. Labeling a task again replaces the old
record: the file is rewritten to a temp file and swapped in with ``os.replace``, so it never holds
two records for one (task, labeler) and a crash leaves the old or the new file, never half of one.
Readers still let the last record per (task_id, labeler) win, for files joined by hand.

Writers take an exclusive ``flock`` on ``<file>.lock`` (a separate file, because the labels file is
replaced and a lock on a replaced file locks nothing), so several ``align label`` processes — one
per labeler — can share one output file.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.jsonl import iter_jsonl
from align.preferences.label.tasks import Task

try:
    import fcntl
except ImportError:  # Windows: one process per file, guarded by the thread lock only
    fcntl = None  # type: ignore[assignment]

FLAGS = ("harmful", "off-topic", "unreadable")


class SubmissionError(ValueError):
    """A submission the server answers with 400 and this message."""


def check_submission(task: Task, body: Any) -> tuple[list[list[int]] | None, list[list[str]], bool]:
    """Validate a page's submission for `task` → (ranking or None when skipped, flags, skipped)."""
    if not isinstance(body, dict):
        raise SubmissionError("expected a JSON object {task_id, ranking, flags, skipped}")
    unknown = sorted(set(body) - {"index", "task_id", "ranking", "flags", "skipped"})
    if unknown:
        raise SubmissionError(f"unknown field(s) {unknown}; expected task_id, ranking, flags, skipped")
    if body.get("task_id") != task.task_id:
        raise SubmissionError(f"task_id {body.get('task_id')!r} is not task {task.index}'s id {task.task_id!r} "
                              "(reload the page)")
    skipped = body.get("skipped", False)
    if not isinstance(skipped, bool):
        raise SubmissionError("'skipped' must be true or false")
    k = task.k
    flags = body.get("flags")
    if flags is None:
        flags = [[] for _ in range(k)]
    if (not isinstance(flags, list) or len(flags) != k
            or not all(isinstance(f, list) and all(isinstance(x, str) for x in f) for f in flags)):
        raise SubmissionError(f"'flags' must be a list of {k} lists (one per response) of flag names")
    for f in flags:
        bad = [x for x in f if x not in FLAGS]
        if bad:
            raise SubmissionError(f"unknown flag {bad[0]!r}; expected one of {', '.join(FLAGS)}")
    flags = [sorted(set(f), key=FLAGS.index) for f in flags]
    ranking = body.get("ranking")
    if skipped:
        if ranking is not None:
            raise SubmissionError("a skipped task has no ranking; send 'ranking': null")
        return None, flags, True
    expected = f"a permutation of 0..{k - 1} in tie groups, best first, e.g. [[2], [0, 1]]"
    if not isinstance(ranking, list) or not ranking:
        raise SubmissionError(f"'ranking' must be {expected}")
    for group in ranking:
        if (not isinstance(group, list) or not group
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in group)):
            raise SubmissionError(f"'ranking' must be {expected}; {group!r} is not a non-empty list of indices")
    seen = [i for g in ranking for i in g]
    if sorted(seen) != list(range(k)):
        raise SubmissionError(f"'ranking' must be {expected}; got {ranking!r}")
    return [list(g) for g in ranking], flags, False


def label_record(task: Task, labeler: str, ranking: list[list[int]] | None, flags: list[list[str]],
                 skipped: bool) -> dict:
    """The line written for one label: the ranking format first, then who and what was noticed."""
    record: dict[str, Any] = {"prompt": task.prompt, "responses": task.responses}
    if not skipped:
        record["ranking"] = ranking
    record.update({"flags": flags, "skipped": skipped, "task_id": task.task_id, "labeler": labeler})
    return record


def read_label_lines(path: Path) -> list[dict]:
    """Every complete record of a labels file, in file order (a torn last line is ignored)."""
    return [rec for _, rec in iter_jsonl(path, torn_tail=True, missing_ok=True)]


def label_key(rec: dict) -> tuple[str, str] | None:
    """(task_id, labeler) of a label record; None for records this tool did not write."""
    if isinstance(rec.get("task_id"), str):
        return rec["task_id"], str(rec.get("labeler", ""))
    return None


class LabelStore:
    """One labels file, safe against threads of one server and against other server processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if self.path.is_dir():
            raise AlignError(f"--out {self.path} is a directory; expected a .jsonl file to write labels to")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], list[dict]] | None = None
        read_label_lines(self.path)  # a malformed file fails at startup, not at the first click

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, self.lock_path.open("a") as lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def records(self) -> list[dict]:
        """All records, read again only when the file changed (another labeler may share it)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, read_label_lines(self.path))
        return self._cache[1]

    def labels(self, labeler: str) -> dict[str, dict]:
        """task_id → this labeler's record (the last one wins)."""
        out = {}
        for rec in self.records():
            key = label_key(rec)
            if key and key[1] == labeler:
                out[key[0]] = rec
        return out

    def save(self, record: dict) -> bool:
        """Write one label now (fsynced); True when it replaced an earlier label of the same task."""
        key = label_key(record)
        with self._locked():
            existing = read_label_lines(self.path)
            if any(label_key(r) == key for r in existing):
                self._rewrite(existing, record, key)
                return True
            self._append(record)
            return False

    def _append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.path.open("a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a torn line from a crash: cut it off before appending
                    fh.seek(0)
                    data = fh.read()
                    fh.truncate(data.rfind(b"\n") + 1)
                    fh.seek(0, os.SEEK_END)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self, existing: list[dict], record: dict, key: tuple[str, str] | None) -> None:
        """Put `record` where the old label of its task was, drop any other copies, swap the file in."""
        out, placed = [], False
        for rec in existing:
            if label_key(rec) == key:
                if not placed:
                    out.append(record)
                    placed = True
                continue
            out.append(rec)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in out)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
