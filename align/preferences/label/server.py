"""`align label`: a local web page where a person ranks each task's responses best → worst.

Routes: ``GET /`` (the page), ``GET /static/label.js|label.css|favicon.svg``, ``GET /api/progress``,
``GET /api/task/<n>`` and ``POST /api/submit``. The standard library's ThreadingHTTPServer is
enough for one person clicking; the page is plain HTML/JS/CSS shipped in ``static/`` (no build
step, nothing fetched from elsewhere).

Responses are untrusted model output. The page renders their markdown by building DOM nodes with
``textContent`` (never ``innerHTML``), and every answer carries a Content-Security-Policy that allows
only this server's own script and style files, so even a rendering bug cannot run injected script.

Binds to 127.0.0.1 unless told otherwise; on a loopback bind requests must name a loopback Host
(so a web page on another site cannot reach the server through DNS rebinding). With ``token``
set, every request must carry it (``?token=`` or the ``X-Label-Token`` header) or gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from align.errors import AlignError
from align.httpd import BodyLengthError, body_length, in_background
from align.preferences.label.store import FLAGS, LabelStore, SubmissionError, check_submission, label_record
from align.preferences.label.tasks import Task, load_tasks

log = logging.getLogger("align.label")

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"label.js": "text/javascript; charset=utf-8", "label.css": "text/css; charset=utf-8",
                "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 1 << 20
READ_TIMEOUT_S = 5.0  # a client that stops sending (a body shorter than its Content-Length) is dropped after this
TOKEN_HEADER = "X-Label-Token"
_TASK_ROUTE = re.compile(r"^/api/task/(\d+)$")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LabelApp:
    """What the routes do, apart from HTTP: tasks, this labeler's labels, progress."""

    def __init__(self, tasks: list[Task], store: LabelStore, labeler: str):
        if not labeler.strip():
            raise AlignError("--labeler must be a non-empty name")
        self.tasks, self.store, self.labeler = tasks, store, labeler
        self._by_id = {t.task_id: t for t in tasks}

    def _labels(self) -> dict[str, dict]:
        return {tid: rec for tid, rec in self.store.labels(self.labeler).items() if tid in self._by_id}

    def next_unlabeled(self, after: int = -1) -> int | None:
        """The first task after `after` this labeler has not labeled, wrapping round; None when all are."""
        labels = self._labels()
        todo = [t.index for t in self.tasks if t.task_id not in labels]
        return next((i for i in todo if i > after), todo[0] if todo else None)

    def progress(self) -> dict:
        labels = self._labels()
        skipped = sum(1 for rec in labels.values() if rec.get("skipped"))
        return {"total": len(self.tasks), "labeled": len(labels) - skipped, "skipped": skipped,
                "done": len(labels), "first_unlabeled": self.next_unlabeled(), "labeler": self.labeler,
                "flags": list(FLAGS)}

    def task(self, n: int) -> dict:
        if not 0 <= n < len(self.tasks):
            raise LookupError(f"no task {n}; tasks are numbered 0..{len(self.tasks) - 1}")
        task = self.tasks[n]
        rec = self._labels().get(task.task_id)
        label = None
        if rec is not None:
            label = {"ranking": rec.get("ranking"), "flags": rec.get("flags"), "skipped": bool(rec.get("skipped"))}
        return {"index": n, "total": len(self.tasks), "task_id": task.task_id, "prompt": task.prompt,
                "responses": task.responses, "label": label}

    def submit(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise SubmissionError("expected a JSON object {task_id, ranking, flags, skipped}")
        task = self._by_id.get(body.get("task_id"))  # type: ignore[arg-type]
        if task is None:
            raise SubmissionError(f"unknown task_id {body.get('task_id')!r} (reload the page)")
        ranking, flags, skipped = check_submission(task, body)
        replaced = self.store.save(label_record(task, self.labeler, ranking, flags, skipped))
        log.info("label: task %d %s%s", task.index, "skipped" if skipped else f"ranked {ranking}",
                 " (replaced the earlier label)" if replaced else "")
        return {"ok": True, "task_id": task.task_id, "replaced": replaced, "next": self.next_unlabeled(task.index),
                "progress": self.progress()}


def _page(token: str | None) -> bytes:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    qs = f"?token={quote(token, safe='')}" if token else ""
    return html.replace("{{QS}}", qs).encode("utf-8")


def make_handler(app: LabelApp, token: str | None, check_host: bool,
                 read_timeout_s: float = READ_TIMEOUT_S) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "align-label"
        protocol_version = "HTTP/1.1"
        # Every read on the connection (request line, headers, body, an idle keep-alive) gives up after this,
        # so a client that announces more bytes than it sends cannot hold its connection and thread forever.
        timeout = read_timeout_s

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")  # the token may be in the URL
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def _allowed(self, query: dict[str, list[str]]) -> bool:
            if check_host:
                host = self.headers.get("Host", "")
                name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
                if not is_loopback(name):
                    self._json(403, {"error": f"Host {host!r} is not a loopback address"})
                    return False
            if token:
                given = self.headers.get(TOKEN_HEADER) or (query.get("token") or [""])[0]
                if not hmac.compare_digest(given.encode(), token.encode()):
                    self._json(403, {"error": "missing or wrong access token (open the URL align label printed)"})
                    return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urlsplit(self.path)
            if not self._allowed(parse_qs(url.query)):
                return
            path = url.path
            if path in ("/", "/index.html"):
                self._send(200, _page(token), "text/html; charset=utf-8")
            elif path.startswith("/static/") and path[len("/static/"):] in STATIC_TYPES:
                name = path[len("/static/"):]
                self._send(200, (STATIC / name).read_bytes(), STATIC_TYPES[name])
            elif path == "/api/progress":
                self._json(200, app.progress())
            elif match := _TASK_ROUTE.match(path):
                try:
                    self._json(200, app.task(int(match.group(1))))
                except LookupError as exc:
                    self._json(404, {"error": str(exc)})
            else:
                self._json(404, {"error": f"no such page: {path}"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if not self._allowed(parse_qs(url.query)):
                return
            if url.path != "/api/submit":
                self._json(404, {"error": f"no such endpoint: POST {url.path}"})
                return
            # A JSON content type makes a cross-site form post impossible without a CORS preflight we never grant.
            if not self.headers.get("Content-Type", "").startswith("application/json"):
                self._json(415, {"error": "send the submission as Content-Type: application/json"})
                return
            try:
                length = body_length(self.headers, MAX_BODY)
            except BodyLengthError as exc:
                self.close_connection = True  # the body was not read: the connection is out of step
                self._json(exc.status, {"error": exc.message})
                return
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True  # part of the body may still come: the connection is out of step
                self._json(408, {"error": f"incomplete request body: Content-Length announced {length} bytes "
                                          f"and nothing more came for {read_timeout_s:g} s"})
                return
            try:
                body = json.loads(raw or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._json(400, {"error": f"not valid JSON: {exc}"})
                return
            try:
                self._json(200, app.submit(body))
            except SubmissionError as exc:
                self._json(400, {"error": str(exc)})
            except AlignError as exc:
                self._json(500, {"error": str(exc)})

    return Handler


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True
    app: LabelApp
    token: str | None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/" + (f"?token={quote(self.token, safe='')}" if self.token else "")


class LabelServer6(LabelServer):
    address_family = socket.AF_INET6


def make_server(tasks_path: str | Path, out_path: str | Path, *, host: str = "127.0.0.1", port: int = 8600,
                labeler: str = "default", token: str | None = None, allow_remote: bool = False,
                read_timeout_s: float = READ_TIMEOUT_S) -> LabelServer:
    """Load the tasks, open the labels file and bind (port 0 picks a free port); does not serve yet.

    read_timeout_s: how long a connection may go without sending anything the server waits for (a request,
    the rest of a body) before it is answered 408 or closed; other connections are served meanwhile.
    """
    if not read_timeout_s > 0:
        raise AlignError(f"read_timeout_s must be a positive number of seconds, got {read_timeout_s!r}")
    local = is_loopback(host)
    if not local and not allow_remote:
        raise AlignError(f"--host {host} would let other machines read the tasks and write labels; "
                         "pass --allow-remote to bind to a non-local address (and set --token)")
    if token is not None and not token:
        raise AlignError("--token must not be empty")
    tasks = load_tasks(tasks_path)
    app = LabelApp(tasks, LabelStore(out_path), labeler)
    server_class = LabelServer6 if ":" in host else LabelServer
    try:
        server = server_class((host, port), make_handler(app, token, check_host=local, read_timeout_s=read_timeout_s))
    except OSError as exc:
        raise AlignError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (try another --port)") from None
    server.app, server.token = app, token
    return server


@contextmanager
def running_server(tasks_path: str | Path, out_path: str | Path, **kwargs: Any) -> Iterator[LabelServer]:
    """A labeling server answering in a background thread for the duration of the block (port 0 by default)."""
    kwargs.setdefault("port", 0)
    with in_background(make_server(tasks_path, out_path, **kwargs)) as server:
        yield server


def serve(tasks_path: str | Path, out_path: str | Path, *, host: str = "127.0.0.1", port: int = 8600,
          labeler: str = "default", token: str | None = None, allow_remote: bool = False,
          read_timeout_s: float = READ_TIMEOUT_S) -> None:
    """Serve until interrupted (the `align label` command)."""
    server = make_server(tasks_path, out_path, host=host, port=port, labeler=labeler, token=token,
                         allow_remote=allow_remote, read_timeout_s=read_timeout_s)
    if not is_loopback(host):
        print(f"WARNING: serving on {host}:{server.server_address[1]}, reachable from other machines; anyone who "
              f"can reach it can read the tasks{' and write labels' if not token else ' if they know the token'}"
              f"{'. Set --token.' if not token else '.'}", file=sys.stderr, flush=True)
    progress = server.app.progress()
    where = (f"resuming at task {progress['first_unlabeled'] + 1}" if progress["first_unlabeled"] is not None
             else "every task is labeled")
    print(f"align label: {progress['total']} tasks from {tasks_path}, labeler {labeler!r}, "
          f"{progress['done']} done ({where}); labels go to {out_path}", flush=True)
    print(f"align label: open {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
