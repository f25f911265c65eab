"""`align serve` over tiny-llama, spoken to with plain HTTP: OpenAI JSON shapes and parameters."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from align.sharing.serve import ModelBackend, running_server


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return ModelBackend("tiny-llama")


@pytest.fixture(scope="module")
def server(backend):
    with running_server("tiny-llama", backend=backend) as srv:
        yield srv


def http(method: str, url: str, body: dict | bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_lists_the_served_model(server):
    status, body = http("GET", server.url + "/models")
    assert status == 200
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-llama"]


def test_chat_completion_shape_and_usage(server):
    status, body = http("POST", server.url + "/chat/completions", {
        "model": "tiny-llama", "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 6, "temperature": 0})
    assert status == 200
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5  # the chat template adds role markers
    assert 0 < usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completions_batch_of_prompts_with_n(server):
    status, body = http("POST", server.url + "/completions", {
        "model": "tiny-llama", "prompt": ["Task 1:", "The weather"], "max_tokens": 5, "temperature": 1.0, "n": 2,
        "seed": 3})
    assert status == 200
    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(isinstance(c["text"], str) for c in body["choices"])


def test_greedy_matches_local_generation(server, backend):
    from align.generation import generate_texts

    prompt = "Come up with a series of tasks:\n1."
    _, body = http("POST", server.url + "/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
    local = generate_texts(backend.model, backend.tokenizer, [prompt], max_new_tokens=8, temperature=0.0,
                           progress=False)[0][0]
    assert body["choices"][0]["text"] == local


def test_stop_and_length_finish_reasons(server, backend):
    from align.generation import generate_texts

    prompt = "Instruction: say hello"
    full = generate_texts(backend.model, backend.tokenizer, [prompt], max_new_tokens=12, temperature=0.0,
                          progress=False)[0][0]
    stop = full.split()[2]  # a word the greedy continuation is certain to produce
    _, body = http("POST", server.url + "/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                         "stop": [stop]})
    choice = body["choices"][0]
    assert stop not in choice["text"]
    assert choice["finish_reason"] == "stop"
    assert full.startswith(choice["text"])
    _, body = http("POST", server.url + "/completions", {"prompt": prompt, "max_tokens": 3, "temperature": 0})
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize(("route", "payload", "status", "param"), [
    ("/chat/completions", b"{not json", 400, None),
    ("/chat/completions", {"messages": []}, 400, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}, 400, "stream"),
    ("/completions", {"prompt": "x", "temperature": 5}, 400, "temperature"),
    ("/completions", {"prompt": 3}, 400, "prompt"),
    ("/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
    ("/embeddings", {"input": "x"}, 404, None),
])
def test_bad_requests_get_openai_error_bodies(server, route, payload, status, param):
    got, body = http("POST", server.url + route, payload)
    assert got == status
    assert body["error"]["message"]
    assert body["error"]["param"] == param


def test_injected_failures_come_first_then_service(backend):
    with running_server("tiny-llama", backend=backend, fail_first={"429": 1, "503": 1}) as srv:
        codes = [http("POST", srv.url + "/completions", {"prompt": "a", "max_tokens": 2})[0] for _ in range(3)]
    assert codes == [429, 503, 200]
    assert srv.stats["status_429"] == 1 and srv.stats["status_503"] == 1 and srv.stats["status_200"] == 1


def test_api_key_is_checked_when_set(backend):
    with running_server("tiny-llama", backend=backend, api_key="sk-local-test") as srv:
        assert http("POST", srv.url + "/completions", {"prompt": "a", "max_tokens": 2})[0] == 401
        ok, _ = http("POST", srv.url + "/completions", {"prompt": "a", "max_tokens": 2},
                     headers={"Authorization": "Bearer sk-local-test"})
    assert ok == 200


def test_align_serve_command_answers_over_http(tiny_model_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "align.cli", "serve", "tiny-llama", "--port", str(port),
                             "--model-name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in banner
        status, body = http("GET", f"http://127.0.0.1:{port}/v1/models")
        assert status == 200 and body["data"][0]["id"] == "tiny"
        status, body = http("POST", f"http://127.0.0.1:{port}/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert status == 200 and body["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_parser_has_serve():
    from align.cli import build_parser

    args = build_parser().parse_args(["serve", "tiny-llama", "--port", "0"])
    assert (args.command, args.model, args.host, args.port) == ("serve", "tiny-llama", "127.0.0.1", 0)


@pytest.mark.parametrize("length, status", [("abc", b"400"), ("-5", b"400"), (None, b"411")])
def test_bad_content_length_is_answered_at_once(server, length, status):
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else ""
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:  # a hang guard
        sock.sendall(head.encode() + b'\r\n{"prompt": "a"}')
        assert sock.recv(4096).split(b"\r\n", 1)[0].split(b" ")[1] == status


def test_a_stalled_body_gets_408_and_frees_its_thread(backend):
    """A client that announces more bytes than it sends is answered 408 after the read timeout and dropped;
    other clients are served meanwhile."""
    import socket
    from urllib.parse import urlsplit

    from align.errors import AlignError
    from align.sharing.serve import READ_TIMEOUT_S, make_server

    assert 1 <= READ_TIMEOUT_S <= 120
    with running_server("tiny-llama", backend=backend, read_timeout_s=0.3) as srv:
        url = urlsplit(srv.url)
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n")
        with socket.create_connection((url.hostname, url.port), timeout=120) as sock:  # a hang guard
            sock.sendall(head.encode() + b'{"prompt": "a"}')  # 15 of the 100 bytes, then silence
            assert http("GET", srv.url + "/models")[0] == 200  # others are served meanwhile
            reply = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status.split(b" ")[1] == b"408", reply[:200]
        assert b"Content-Length announced 100 bytes" in rest
        assert srv.stats["status_408"] == 1
    with pytest.raises(AlignError, match="read timeout must be a positive"):
        make_server("tiny-llama", port=0, backend=backend, read_timeout_s=0)


def test_read_timeout_flags_reach_the_servers(monkeypatch):
    from align import cli

    seen = {}
    monkeypatch.setattr("align.sharing.serve.serve", lambda model, **kw: seen.setdefault("serve", kw))
    monkeypatch.setattr("align.preferences.label.server.serve", lambda tasks, out, **kw: seen.setdefault("label", kw))
    assert cli.main(["serve", "tiny-llama", "--read-timeout", "2.5"]) == 0
    assert cli.main(["label", "tasks.jsonl", "--out", "labels.jsonl", "--read-timeout", "7"]) == 0
    assert seen["serve"]["read_timeout_s"] == 2.5 and seen["label"]["read_timeout_s"] == 7
    seen.clear()
    assert cli.main(["serve", "tiny-llama"]) == 0
    assert "read_timeout_s" not in seen["serve"]  # the server's own default
