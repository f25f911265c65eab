"""`align label`'s HTTP API and labels file, spoken to with plain HTTP (no browser needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from align.errors import AlignError
from align.preferences.label.server import CSP, make_server, running_server
from align.preferences.label.tasks import load_tasks, task_id
from align.preferences.rankings import parse_record

TASKS = [
    {"prompt": "Say hi.", "responses": ["hi", "hello", "hey there"]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "responses": ["4", "5"]},
    {"prompt": "Name a colour.", "responses": ["red", "blue", "green", "dog"]},
]


def write_tasks(path: Path, tasks: list[dict] = TASKS) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def http(method: str, url: str, body: dict | bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(raw), hdrs
    except json.JSONDecodeError:
        return status, {"text": raw.decode()}, hdrs


def base(srv) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def tasks_file(tmp_path) -> Path:
    return write_tasks(tmp_path / "tasks.jsonl")


def test_task_ids_are_index_plus_prompt_hash(tasks_file):
    tasks = load_tasks(tasks_file)
    assert [t.task_id.split("-")[0] for t in tasks] == ["0", "1", "2"]
    assert tasks[0].task_id == task_id(0, "Say hi.")
    assert task_id(0, "Say hi.") != task_id(0, "Say hello.")  # a different prompt at the same index
    assert tasks[1].prompt == TASKS[1]["prompt"]  # chat prompts stay chat messages


@pytest.mark.parametrize(("line", "expected"), [
    ('{"prompt": "p", "responses": ["only one"]}', "2 to 9 responses"),
    ('{"prompt": "p"}', "needs 'prompt' and 'responses'"),
    ('{"prompt": "p", "responses": ["a", 3]}', "list of strings"),
    ('{"prompt": "", "responses": ["a", "b"]}', "empty prompt"),
    ('{"prompt": "p", "responses": ["a", "b"]', "not valid JSON"),
    ('["p", ["a", "b"]]', "expected a JSON object"),
])
def test_malformed_tasks_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "ok", "responses": ["a", "b"]}\n\n' + line + "\n")
    with pytest.raises(AlignError, match=rf"tasks\.jsonl:3: .*{expected}"):
        load_tasks(path)


def test_missing_or_empty_tasks_file(tmp_path):
    with pytest.raises(AlignError, match="tasks file not found"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(AlignError, match="no tasks"):
        load_tasks(tmp_path / "empty.jsonl")


def test_submit_validates_and_writes_ranking_records(tasks_file, tmp_path):
    out = tmp_path / "out" / "rankings.jsonl"
    with running_server(tasks_file, out, labeler="ann") as srv:
        url = base(srv)
        status, progress, _ = http("GET", url + "/api/progress")
        assert status == 200
        assert (progress["total"], progress["done"], progress["first_unlabeled"]) == (3, 0, 0)
        status, task, _ = http("GET", url + "/api/task/0")
        assert status == 200 and task["responses"] == TASKS[0]["responses"] and task["label"] is None
        tid = task["task_id"]

        bad = [
            ({"task_id": tid, "ranking": [[0], [1]]}, "permutation of 0..2"),
            ({"task_id": tid, "ranking": [[0], [1], [1]]}, "permutation of 0..2"),
            ({"task_id": tid, "ranking": [0, 1, 2]}, "not a non-empty list of indices"),
            ({"task_id": tid, "ranking": [[0], [], [1, 2]]}, "not a non-empty list"),
            ({"task_id": tid, "ranking": [[0], [1], [3]]}, "permutation of 0..2"),
            ({"task_id": tid, "ranking": [[0, 1, 2]], "flags": [["nasty"], [], []]}, "unknown flag 'nasty'"),
            ({"task_id": tid, "ranking": [[0, 1, 2]], "flags": [[]]}, "list of 3 lists"),
            ({"task_id": tid, "skipped": True, "ranking": [[0, 1, 2]]}, "skipped task has no ranking"),
            ({"task_id": "0-000000000000", "ranking": [[0, 1, 2]]}, "unknown task_id"),
            ({"task_id": tid, "ranking": [[0, 1, 2]], "extra": 1}, "unknown field"),
        ]
        for body, message in bad:
            status, answer, _ = http("POST", url + "/api/submit", body)
            assert status == 400, body
            assert message in answer["error"], (body, answer)
        status, answer, _ = http("POST", url + "/api/submit", b"{not json")
        assert status == 400 and "not valid JSON" in answer["error"]
        assert not out.exists()  # nothing invalid was written

        status, answer, _ = http("POST", url + "/api/submit", {
            "task_id": tid, "ranking": [[2], [0, 1]], "flags": [[], ["off-topic", "harmful"], []]})
        assert status == 200 and answer["replaced"] is False and answer["next"] == 1
        tid1 = http("GET", url + "/api/task/1")[1]["task_id"]
        status, answer, _ = http("POST", url + "/api/submit", {"task_id": tid1, "skipped": True, "ranking": None})
        assert status == 200 and answer["next"] == 2
        assert answer["progress"] | {"flags": None} == {"total": 3, "labeled": 1, "skipped": 1, "done": 2,
                                                         "first_unlabeled": 2, "labeler": "ann", "flags": None}
        status, task, _ = http("GET", url + "/api/task/0")
        assert task["label"] == {"ranking": [[2], [0, 1]], "flags": [[], ["harmful", "off-topic"], []], "skipped": False}
        assert http("GET", url + "/api/task/3")[0] == 404

    assert lines(out) == [
        {"prompt": "Say hi.", "responses": ["hi", "hello", "hey there"], "ranking": [[2], [0, 1]],
         "flags": [[], ["harmful", "off-topic"], []], "skipped": False, "task_id": tid, "labeler": "ann"},
        {"prompt": TASKS[1]["prompt"], "responses": ["4", "5"], "flags": [[], []], "skipped": True,
         "task_id": tid1, "labeler": "ann"},
    ]
    # A ranked record is exactly what the reward stage's reader takes.
    rec = parse_record(lines(out)[0], "out:1")
    assert rec.ranking == [[2], [0, 1]] and rec.responses == TASKS[0]["responses"]


def test_relabeling_replaces_in_place_and_keeps_other_labelers(tasks_file, tmp_path):
    out = tmp_path / "rankings.jsonl"
    ids = [t.task_id for t in load_tasks(tasks_file)]
    # Two servers on one file, as two labelers would run them.
    with running_server(tasks_file, out, labeler="ann") as ann, running_server(tasks_file, out, labeler="bob") as bob:
        assert http("POST", base(ann) + "/api/submit", {"task_id": ids[0], "ranking": [[0], [1], [2]]})[0] == 200
        assert http("POST", base(bob) + "/api/submit", {"task_id": ids[0], "ranking": [[1], [0], [2]]})[0] == 200
        assert http("POST", base(ann) + "/api/submit", {"task_id": ids[2], "ranking": [[3], [2], [1], [0]]})[0] == 200
        inode = out.stat().st_ino
        status, answer, _ = http("POST", base(ann) + "/api/submit", {"task_id": ids[0], "ranking": [[2], [1], [0]]})
        assert status == 200 and answer["replaced"] is True
        assert out.stat().st_ino != inode  # rewritten to a new file and swapped in (os.replace)
        # bob's server sees the rewritten file and still has his label
        assert http("GET", base(bob) + "/api/progress")[1]["done"] == 1
        assert http("GET", base(ann) + "/api/progress")[1]["first_unlabeled"] == 1
    got = [(r["task_id"], r["labeler"], r["ranking"]) for r in lines(out)]
    assert got == [(ids[0], "ann", [[2], [1], [0]]), (ids[0], "bob", [[1], [0], [2]]),
                   (ids[2], "ann", [[3], [2], [1], [0]])]
    assert not list(tmp_path.glob(".*.tmp"))


def test_labels_of_another_tasks_file_are_kept_but_not_counted(tasks_file, tmp_path):
    out = tmp_path / "rankings.jsonl"
    foreign = {"prompt": "other", "responses": ["a", "b"], "ranking": [[0], [1]], "task_id": "0-ffffffffffff",
               "labeler": "ann", "flags": [[], []], "skipped": False}
    plain = {"prompt": "x", "responses": ["a", "b"], "ranking": [[1], [0]]}
    out.write_text(json.dumps(foreign) + "\n" + json.dumps(plain) + "\n")
    with running_server(tasks_file, out, labeler="ann") as srv:
        assert http("GET", base(srv) + "/api/progress")[1]["done"] == 0
        tid = http("GET", base(srv) + "/api/task/0")[1]["task_id"]
        http("POST", base(srv) + "/api/submit", {"task_id": tid, "ranking": [[0], [1], [2]]})
    assert lines(out)[:2] == [foreign, plain] and len(lines(out)) == 3


def test_token_host_and_headers(tasks_file, tmp_path):
    with running_server(tasks_file, tmp_path / "r.jsonl", token="s3cret/+") as srv:
        url = base(srv)
        assert srv.url.endswith("/?token=s3cret%2F%2B")
        for path in ("/", "/static/label.js", "/api/progress", "/api/task/0"):
            assert http("GET", url + path)[0] == 403, path
            assert http("GET", url + path + "?token=wrong")[0] == 403, path
        assert http("POST", url + "/api/submit", {"task_id": "x"})[0] == 403
        status, page, headers = http("GET", url + "/?token=s3cret%2F%2B")
        assert status == 200
        assert headers["Content-Security-Policy"] == CSP and "script-src 'self'" in CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        # the page passes the token on to its own script and stylesheet
        assert 'src="/static/label.js?token=s3cret%2F%2B"' in page["text"]
        status, _, headers = http("GET", url + "/static/label.js", headers={"X-Label-Token": "s3cret/+"})
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert http("GET", url + "/api/progress", headers={"X-Label-Token": "s3cret/+"})[0] == 200
        # DNS rebinding: a loopback server only answers to loopback host names
        status, answer, _ = http("GET", url + "/api/progress?token=s3cret%2F%2B", headers={"Host": "evil.example:80"})
        assert status == 403 and "loopback" in answer["error"]
        assert http("GET", url + "/static/../server.py?token=s3cret%2F%2B")[0] == 404
        # a form post (no JSON content type) is refused
        status, _, _ = http("POST", url + "/api/submit?token=s3cret%2F%2B", b"a=1",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 415


def test_non_local_bind_needs_allow_remote(tasks_file, tmp_path, capsys):
    with pytest.raises(AlignError, match="--allow-remote"):
        make_server(tasks_file, tmp_path / "r.jsonl", host="0.0.0.0", port=0)
    server = make_server(tasks_file, tmp_path / "r.jsonl", host="0.0.0.0", port=0, allow_remote=True)
    server.server_close()


def test_cli_refuses_remote_bind_and_reports_bad_output(tasks_file, tmp_path, capsys):
    from align.cli import main

    assert main(["label", str(tasks_file), "--out", str(tmp_path / "r.jsonl"), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["label", str(tasks_file)]) == 2
    assert "needs --out" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "0-x", "labeler": "a"}\n{oops\n{"task_id": "1-x", "labeler": "a"}\n')
    assert main(["label", str(tasks_file), "--out", str(bad), "--port", "0"]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err


def raw_post(srv, length_header: str | None, body: bytes = b"") -> bytes:
    """POST /api/submit over a plain socket with any Content-Length; the status line, or b'' if none came."""
    import socket

    host, port = srv.server_address[:2]
    head = f"POST /api/submit HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    if length_header is not None:
        head += f"Content-Length: {length_header}\r\n"
    with socket.create_connection((host, port), timeout=60) as sock:  # a hang guard; answers come at once
        sock.sendall(head.encode() + b"\r\n" + body)  # the connection stays open: a server waiting for more blocks
        try:
            return sock.recv(4096).split(b"\r\n", 1)[0]
        except TimeoutError:
            return b""


@pytest.mark.parametrize("length, status", [("abc", b"400"), ("-1", b"400"), ("1e3", b"400"), (None, b"411"),
                                            (str(2 << 20), b"413")])
def test_bad_content_length_is_answered_at_once(tasks_file, tmp_path, length, status):
    with running_server(tasks_file, tmp_path / "labels.jsonl") as srv:
        assert raw_post(srv, length, b'{"task_id": "x"}').split(b" ")[1] == status
        assert http("GET", base(srv) + "/api/progress")[0] == 200  # still serving


def test_a_body_shorter_than_its_content_length_gets_408_after_the_read_timeout(tasks_file, tmp_path):
    """A client that announces more bytes than it sends is answered 408 and dropped; others are served meanwhile."""
    import socket

    from align.preferences.label.server import READ_TIMEOUT_S

    assert 1 <= READ_TIMEOUT_S <= 30  # a few seconds by default
    with running_server(tasks_file, tmp_path / "labels.jsonl", read_timeout_s=0.3) as srv:
        host, port = srv.server_address[:2]
        head = (f"POST /api/submit HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\n\r\n")
        # the client's timeout is only a hang guard: the server answers after its own 0.3 s
        with socket.create_connection((host, port), timeout=120) as sock:
            sock.sendall(head.encode() + b'{"task_id": "x"}')  # 16 of the 100 bytes, then silence
            assert http("GET", base(srv) + "/api/progress")[0] == 200  # still serving others
            reply = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status.split(b" ")[1] == b"408", reply[:200]
        assert b"Content-Length announced 100 bytes" in rest
        assert not (tmp_path / "labels.jsonl").exists() or not (tmp_path / "labels.jsonl").read_text().strip()
    with pytest.raises(AlignError, match="read_timeout_s must be a positive"):
        make_server(tasks_file, tmp_path / "labels.jsonl", port=0, read_timeout_s=0)
