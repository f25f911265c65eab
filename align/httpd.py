"""Stdlib HTTP helpers: a server answering in a background thread, and a checked request-body length."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping
from socketserver import BaseServer
from typing import TypeVar

S = TypeVar("S", bound=BaseServer)
_DIGITS = re.compile(r"[0-9]{1,20}")


@contextlib.contextmanager
def in_background(server: S) -> Iterator[S]:
    """Serve until the block ends, then shut down and close the socket."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class BodyLengthError(Exception):
    """A request whose Content-Length cannot be honoured; `status` is the HTTP answer (400, 411, 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def body_length(headers: Mapping[str, str], max_bytes: int | None = None) -> int:
    """Bytes to read for a POST body, checked before anything is read.

    BaseHTTPRequestHandler leaves this to each handler: `int()` of a non-numeric value raises (no answer
    at all), and `rfile.read(-1)` waits for the client to close the connection, blocking the thread. So:
    missing → 411, not a plain non-negative integer → 400, over `max_bytes` → 413. After any of these
    the body was not read, so the handler must close the connection.
    """
    raw = headers.get("Content-Length")
    if raw is None:
        raise BodyLengthError(411, "a POST needs a Content-Length header (chunked bodies are not accepted)")
    raw = raw.strip()
    if not _DIGITS.fullmatch(raw):
        raise BodyLengthError(400, f"Content-Length must be a non-negative whole number of bytes, got {raw[:40]!r}")
    length = int(raw)
    if max_bytes is not None and length > max_bytes:
        raise BodyLengthError(413, f"request body of {length} bytes is larger than the {max_bytes} allowed")
    return length
