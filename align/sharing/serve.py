"""`align serve`: a small OpenAI-compatible HTTP server over a local model.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` with the
OpenAI JSON shapes (``choices[].message.content`` / ``choices[].text``, ``finish_reason``,
``usage``) and the parameters ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``.
No streaming. Requests are handled in threads; one lock serialises the model.

Any OpenAI-compatible client (our `openai` teacher, the LLM judge, curl) can use it. For tests it
can also misbehave on purpose: ``fail_first={"429": 1, "500": 1, "timeout": 1}`` answers the first
requests with those failures (in that order) so a client's retry path runs over real HTTP.

Built on the standard library's ThreadingHTTPServer rather than a web framework: the API surface
is three routes and the project should not need a server dependency for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from align.errors import AlignError
from align.httpd import BodyLengthError, body_length, in_background

log = logging.getLogger("align.serve")

# Longer than the labeling page's 5 s: API clients keep idle keep-alive connections in a pool, and a server
# that closes them sooner only makes them reconnect more often.
READ_TIMEOUT_S = 30.0
FAILURE_KINDS = ("408", "429", "500", "502", "503", "504", "timeout", "disconnect")


class RequestError(Exception):
    """A bad request: answered with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class FailurePlan:
    """The failures to inject, consumed one per request in the order given."""

    def __init__(self, fail_first: dict[str, int] | None):
        self._queue: list[str] = []
        for kind, count in (fail_first or {}).items():
            kind = str(kind)
            if kind not in FAILURE_KINDS:
                raise AlignError(f"serve: fail_first key {kind!r}; expected one of {', '.join(FAILURE_KINDS)}")
            self._queue.extend([kind] * int(count))
        self._lock = threading.Lock()

    def next(self) -> str | None:
        with self._lock:
            return self._queue.pop(0) if self._queue else None


class ModelBackend:
    """The model behind the server: text in, (text, finish_reason, tokens) out, one request at a time."""

    def __init__(self, model_ref: str):
        from align.models import load_for_generation

        self.model, self.tokenizer = load_for_generation(model_ref)
        self.lock = threading.Lock()
        self._requests = 0

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt(self, messages: list[dict]) -> str:
        from align.generation import chat_prompt

        return chat_prompt(self.tokenizer, messages)

    def generate(self, prompts: list[str], *, max_tokens: int, temperature: float, top_p: float,
                 stop: list[str] | None, n: int, seed: int | None) -> list[list[tuple[str, str, int]]]:
        """Per prompt, n (text, finish_reason, completion_tokens)."""
        from align.generation import generate_texts

        with self.lock:
            self._requests += 1
            out = generate_texts(self.model, self.tokenizer, prompts, max_new_tokens=max_tokens, temperature=temperature,
                                 top_p=top_p, stop=stop, num_return_sequences=n,
                                 seed=seed if seed is not None else self._requests, by_length=True, progress=False)
        return [[(str(c), c.finish_reason, c.tokens) for c in row] for row in out]


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise RequestError(400, f"messages[{i}] must be an object with string 'role' and 'content'", "messages")
        clean.append({"role": m["role"], "content": content})
    return clean


def _sampling(body: dict, default_max_tokens: int) -> dict[str, Any]:
    def number(key: str, default, cast, low, high):
        value = body.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(400, f"'{key}' must be a number", key)
        value = cast(value)
        if not low <= value <= high:
            raise RequestError(400, f"'{key}' must be between {low} and {high}, got {value}", key)
        return value

    if body.get("stream"):
        raise RequestError(400, "streaming is not supported by align serve", "stream")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError(400, "'stop' must be a string or a list of strings", "stop")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, "'seed' must be an integer", "seed")
    return {
        "max_tokens": number("max_tokens", default_max_tokens, int, 1, 32768) if max_tokens is not None
        else default_max_tokens,
        "temperature": number("temperature", 1.0, float, 0.0, 2.0),
        "top_p": number("top_p", 1.0, float, 1e-6, 1.0),
        "n": number("n", 1, int, 1, 16),
        "stop": stop or None,
        "seed": seed,
    }


class OpenAIServer(ThreadingHTTPServer):
    """The HTTP server: routes, failure injection and request statistics (for tests and logs)."""

    daemon_threads = True  # a stalled handler must not block shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], backend: ModelBackend, model_name: str, *,
                 fail_first: dict[str, int] | None = None, stall_s: float = 10.0, delay_s: float = 0.0,
                 api_key: str | None = None, read_timeout_s: float = READ_TIMEOUT_S):
        if not read_timeout_s > 0:
            raise AlignError(f"serve: read timeout must be a positive number of seconds, got {read_timeout_s!r}")
        self.read_timeout_s = read_timeout_s
        super().__init__(address, Handler)
        self.backend = backend
        self.model_name = model_name
        self.failures = FailurePlan(fail_first)
        self.stall_s = stall_s
        self.delay_s = delay_s
        self.api_key = api_key
        self.created = int(time.time())
        self.stats: Counter = Counter()  # requests, status codes, max_in_flight
        self._in_flight = 0
        self._stats_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def enter(self) -> None:
        with self._stats_lock:
            self.stats["requests"] += 1
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)

    def leave(self, status: int) -> None:
        with self._stats_lock:
            self._in_flight -= 1
            self.stats[f"status_{status}"] += 1


class Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

    def setup(self) -> None:
        # Every read and write on the connection gives up after read_timeout_s without progress: a client that
        # stops mid-request (or holds an idle keep-alive connection) frees its thread instead of holding it.
        self.timeout = self.server.read_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client gave up (e.g. its timeout) or stopped reading

    def _error(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
               headers: dict[str, str] | None = None) -> int:
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": None}}, headers)
        return status

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.server.enter()
        status = 200
        try:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                              "created": self.server.created,
                                                              "owned_by": "align"}]})
            elif self.path.rstrip("/") in ("", "/health"):
                self._send(200, {"status": "ok"})
            else:
                status = self._error(404, f"unknown route GET {self.path}", kind="not_found_error")
        finally:
            self.server.leave(status)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self.server.enter()
        status = 200
        try:
            status = self._post()
        except RequestError as exc:
            status = self._error(exc.status, exc.message, exc.param, exc.kind)
        except Exception as exc:  # a bug or a model failure: answer 500, keep serving
            log.exception("serve: request failed")
            status = self._error(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")
        finally:
            self.server.leave(status)

    def _read_body(self) -> dict:
        try:
            length = body_length(self.headers)
        except BodyLengthError as exc:
            self.close_connection = True  # the body was not read: the connection is out of step
            raise RequestError(exc.status, exc.message) from None
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True  # part of the body may still come: the connection is out of step
            raise RequestError(408, f"incomplete request body: Content-Length announced {length} bytes and nothing "
                                    f"more came for {self.server.read_timeout_s:g} s") from None
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc.msg}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        return body

    def _post(self) -> int:
        body = self._read_body()  # always drain the body so keep-alive connections stay in sync
        route = self.path.rstrip("/")
        if route.startswith("/v1"):
            route = route[3:]
        if route not in ("/chat/completions", "/completions"):
            return self._error(404, f"unknown route POST {self.path}", kind="not_found_error")
        srv = self.server
        if srv.api_key is not None and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._error(401, "invalid or missing API key", kind="authentication_error")
        if srv.delay_s:
            time.sleep(srv.delay_s)
        failure = srv.failures.next()
        if failure == "timeout":
            time.sleep(srv.stall_s)  # longer than the client's timeout: it gives up and retries
            return self._error(504, "stalled on purpose (fail_first)", kind="server_error")
        if failure == "disconnect":
            self.close_connection = True
            self.connection.shutdown(2)
            return 0
        if failure is not None:
            code = int(failure)
            headers = {"Retry-After": "0"} if code == 429 else None
            return self._error(code, f"injected failure {code} (fail_first)",
                               kind="rate_limit_error" if code == 429 else "server_error", headers=headers)
        model = body.get("model")
        if model is not None and model != srv.model_name:
            return self._error(404, f"The model '{model}' does not exist; this server serves '{srv.model_name}'",
                               "model", kind="not_found_error")
        if route == "/chat/completions":
            self._send(200, self._chat(body))
        else:
            self._send(200, self._completions(body))
        return 200

    def _chat(self, body: dict) -> dict:
        backend = self.server.backend
        params = _sampling(body, default_max_tokens=256)
        prompt = backend.chat_prompt(_messages(body))
        outs = backend.generate([prompt], **params)[0]
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                    "logprobs": None} for i, (text, reason, _) in enumerate(outs)]
        return self._envelope("chat.completion", "chatcmpl", choices, backend.count_tokens(prompt),
                              sum(t for _, _, t in outs))

    def _completions(self, body: dict) -> dict:
        backend = self.server.backend
        params = _sampling(body, default_max_tokens=16)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
        outs = backend.generate(prompts, **params)
        choices = [{"index": i * params["n"] + j, "text": text, "finish_reason": reason, "logprobs": None}
                   for i, row in enumerate(outs) for j, (text, reason, _) in enumerate(row)]
        return self._envelope("text_completion", "cmpl", choices, sum(backend.count_tokens(p) for p in prompts),
                              sum(t for row in outs for _, _, t in row))

    def _envelope(self, obj: str, prefix: str, choices: list, prompt_tokens: int, completion_tokens: int) -> dict:
        import uuid

        return {
            "id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": obj, "created": int(time.time()),
            "model": self.server.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def make_server(model_ref: str, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
                fail_first: dict[str, int] | None = None, stall_s: float = 10.0, delay_s: float = 0.0,
                api_key: str | None = None, backend: ModelBackend | None = None,
                read_timeout_s: float = READ_TIMEOUT_S) -> OpenAIServer:
    """A server bound to host:port (port 0 = a free port; see `.url`), not yet serving.

    fail_first: inject failures for the first requests, e.g. {"429": 1, "500": 1, "timeout": 1}.
    stall_s: how long a "timeout" failure stalls. delay_s: latency added to every POST (tests of
    concurrency). api_key: when set, POSTs need `Authorization: Bearer <api_key>`. read_timeout_s: how long
    a connection may send nothing the server waits for (a request, the rest of a body) before it is answered
    408 or closed; other connections are served meanwhile.
    """
    backend = backend or ModelBackend(model_ref)
    try:
        return OpenAIServer((host, port), backend, model_name or model_ref, fail_first=fail_first, stall_s=stall_s,
                            delay_s=delay_s, api_key=api_key, read_timeout_s=read_timeout_s)
    except OSError as exc:
        raise AlignError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@contextmanager
def running_server(model_ref: str, **kwargs: Any) -> Iterator[OpenAIServer]:
    """A server answering in a background thread for the duration of the block (port 0 by default)."""
    kwargs.setdefault("port", 0)
    with in_background(make_server(model_ref, **kwargs)) as server:
        yield server


def serve(model_ref: str, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          read_timeout_s: float = READ_TIMEOUT_S) -> None:
    """Serve until interrupted (the `align serve` command)."""
    server = make_server(model_ref, host, port, model_name=model_name, read_timeout_s=read_timeout_s)
    print(f"align serve: {server.model_name} at {server.url} (POST /chat/completions, /completions; GET /models)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
