"""A run killed mid-write resumes with every committed record kept once and no half record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from align.data_gen.records import RecordWriter, count_records, load_records
from align.errors import AlignError
from align.jsonl import repair_torn_tail

ENDLESS = 10**9  # the child never finishes on its own: the kill always lands mid-run
PAYLOAD = "x" * 500

CHILD = textwrap.dedent(
    """
    import sys
    from align.data_gen.records import RecordWriter

    path, total = sys.argv[1], int(sys.argv[2])
    with RecordWriter(path) as writer:
        for i in range(writer.count, total):
            writer.append({"i": i, "payload": "x" * 500})
    """
)


def _run_and_kill(path, after_bytes: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(ENDLESS)])
    try:
        deadline = time.monotonic() + 300  # a hang guard only
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.stat().st_size > after_bytes:
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def _check_prefix(records) -> None:
    assert [r["i"] for r in records] == list(range(len(records)))
    assert all(r["payload"] == PAYLOAD for r in records)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_writer_resumes_without_loss_or_duplicates(tmp_path):
    path = tmp_path / "out.jsonl"
    _run_and_kill(path, after_bytes=50_000)
    before = count_records(path)
    assert before > 0
    _check_prefix(load_records(path))
    # Resume in-process: the writer repairs the tail and continues after the committed records.
    with RecordWriter(path) as writer:
        assert writer.count == before
        for i in range(writer.count, before + 50):
            writer.append({"i": i, "payload": PAYLOAD})
    records = load_records(path)
    assert len(records) == before + 50
    _check_prefix(records)


def test_torn_last_line_is_ignored_then_truncated(tmp_path):
    path = tmp_path / "out.jsonl"
    with RecordWriter(path) as writer:
        for i in range(3):
            writer.append({"i": i, "text": "héllo"})
    full = path.read_bytes()
    path.write_bytes(full + b'{"i": 3, "text": "cut of')  # a write killed part-way
    assert count_records(path) == 3
    assert path.read_bytes().endswith(b"cut of")  # counting does not modify the file
    assert [r["i"] for r in load_records(path)] == [0, 1, 2]
    assert path.read_bytes() == full  # loading truncated the torn tail
    with RecordWriter(path) as writer:
        assert writer.count == 3
        writer.append({"i": 3, "text": "whole"})
    assert [r["i"] for r in load_records(path)] == [0, 1, 2, 3]


def test_line_missing_only_its_newline_is_treated_as_uncommitted(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}')
    assert repair_torn_tail(path) == len('{"i": 1}')
    assert load_records(path) == [{"i": 0}]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"i": 0}\n{"i": \n{"i": 2}\n')
    with pytest.raises(AlignError, match=r"out.jsonl:2: not valid JSON"):
        load_records(path)
    path.write_text('{"i": 0}\n[1]\n')
    with pytest.raises(AlignError, match=r"out.jsonl:2: expected a JSON object"):
        load_records(path)


def test_missing_and_empty_files(tmp_path):
    assert load_records(tmp_path / "nope.jsonl") == []
    assert count_records(tmp_path / "nope.jsonl") == 0
    assert repair_torn_tail(tmp_path / "nope.jsonl") == 0
    (tmp_path / "empty.jsonl").write_text("")
    assert load_records(tmp_path / "empty.jsonl") == []
    (tmp_path / "torn_only.jsonl").write_text('{"i": 0')
    assert load_records(tmp_path / "torn_only.jsonl") == []
    assert (tmp_path / "torn_only.jsonl").read_text() == ""


def test_writer_creates_parent_dirs_and_writes_one_line_per_record(tmp_path):
    path = tmp_path / "a" / "b" / "out.jsonl"
    with RecordWriter(path, fsync=False) as writer:
        writer.append({"instruction": "Say hi.\nTwice.", "instances": [{"input": "", "output": "hi hi"}]})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["instruction"] == "Say hi.\nTwice."
