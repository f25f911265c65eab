"""Kill `align label` (SIGKILL, mid-session) and start it again: it resumes at the first unlabeled
task, and the labels file has every label once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TASKS = [{"prompt": f"Question {i}?", "responses": [f"answer {i}a", f"answer {i}b", f"answer {i}c"]} for i in range(5)]


def start(tasks: Path, out: Path, labeler: str = "ann") -> tuple[subprocess.Popen, str]:
    """`align label` in a child process on a free port; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "align.cli", "label", str(tasks), "--out", str(out), "--port", "0",
         "--labeler", labeler, "--token", "tok"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300  # a hang guard: the server starts in a few seconds
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(r"open (http://127\.0\.0\.1:\d+)/\?token=tok", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("align label did not start:\n" + "".join(seen))


def call(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "X-Label-Token": "tok"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def submit(url: str, n: int, **body) -> dict:
    task = call(f"{url}/api/task/{n}")
    return call(f"{url}/api/submit", {"task_id": task["task_id"], **body})


@pytest.fixture
def tasks_file(tmp_path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return path


def test_sigkill_then_restart_resumes_without_loss_or_duplicates(tasks_file, tmp_path):
    out = tmp_path / "rankings.jsonl"
    proc, url = start(tasks_file, out)
    try:
        assert call(f"{url}/api/progress")["first_unlabeled"] == 0
        submit(url, 0, ranking=[[2], [0], [1]])
        submit(url, 1, skipped=True, ranking=None)
        submit(url, 0, ranking=[[1], [0, 2]])  # changed their mind: replaces, no duplicate
        submit(url, 3, ranking=[[0], [1], [2]])  # labeled out of order; task 2 is still open
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # Simulate the kill landing in the middle of a write: a torn last line.
    with out.open("a") as fh:
        fh.write('{"prompt": "Question 4?", "responses": ["ans')

    proc, url = start(tasks_file, out)
    try:
        progress = call(f"{url}/api/progress")
        assert (progress["first_unlabeled"], progress["done"], progress["labeled"], progress["skipped"]) == (2, 3, 2, 1)
        assert call(f"{url}/api/task/0")["label"]["ranking"] == [[1], [0, 2]]
        answer = submit(url, 2, ranking=[[0, 1, 2]])
        assert answer["next"] == 4
        answer = submit(url, 4, ranking=[[2], [1], [0]])
        assert answer["next"] is None and answer["progress"]["done"] == 5
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()

    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses: the torn one is gone
    assert [(r["task_id"].split("-")[0], r.get("ranking"), r["skipped"]) for r in records] == [
        ("0", [[1], [0, 2]], False),
        ("1", None, True),
        ("3", [[0], [1], [2]], False),
        ("2", [[0, 1, 2]], False),
        ("4", [[2], [1], [0]], False),
    ]
    assert {r["labeler"] for r in records} == {"ann"}
    assert [r["prompt"] for r in records] == ["Question 0?", "Question 1?", "Question 3?", "Question 2?", "Question 4?"]
