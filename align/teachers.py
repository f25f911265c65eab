"""Teachers: the models that write Self-Instruct data (and that an LLM judge asks for verdicts).

One small interface, two backends chosen by config:

- ``local``: a model `align.models` can load, generating in batches on this machine;
- ``openai``: any OpenAI-compatible HTTP API (OpenAI, vLLM, llama.cpp server, `align serve`) through
  the official ``openai`` client, with a concurrency limit and our own retry loop.

A teacher has ``complete(prompts, ...)`` (text continuation of raw prompts) and
``chat(conversations, ...)`` (assistant replies to message lists). Both return one `Generated` per input,
in input order: a ``str`` that also carries its ``finish_reason`` ("stop", or "length" when the token
limit cut it off, which Self-Instruct's parsers need to drop a truncated last item).

The API key is read from the environment variable named by ``api_key_env`` at call time and is
never stored in the config, written to disk, or logged.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal, Protocol

from pydantic import ConfigDict, Field, model_validator

from align.errors import AlignError
from align.generation import Generated
from align.sections import Shorthand

log = logging.getLogger("align.teachers")

# A key is still required by the client; local servers ignore it.
NO_KEY = "no-key"


class TeacherConfig(Shorthand):
    """Which model writes the data, and how to reach it."""

    model_config = ConfigDict(extra="forbid")
    shorthand_key: ClassVar[str] = "model"  # a plain string stands for the model

    type: Literal["local", "openai"] = Field("local", description="local: load the model here; openai: an "
                                             "OpenAI-compatible HTTP API.")
    model: str = Field(description="local: a model reference (built-in, dir, .gguf, hub id, @stage); "
                       "openai: the model name the server expects.")
    base_url: str | None = Field(None, description="openai: API base URL, e.g. http://127.0.0.1:8000/v1 "
                                 "(None = the client's default, api.openai.com).")
    api_key_env: str | None = Field(None, description="openai: NAME of the environment variable holding the "
                                    "API key (never the key itself). None = no key (local servers).")
    endpoint: Literal["chat", "completions"] | None = Field(
        None, description="What `complete` uses. completions: raw text continuation; chat: the prompt is sent as "
        "one user message. None = completions for local, chat for openai. `chat` always uses chat.")
    max_concurrency: int = Field(4, gt=0, description="openai: requests in flight at once.")
    max_retries: int = Field(5, ge=0, description="openai: retries per request on 429, 5xx, timeouts and "
                             "connection errors (exponential backoff with jitter).")
    retry_backoff_s: float = Field(1.0, ge=0, description="openai: first retry waits up to this long; doubles "
                                   "each retry (capped at 60 s); a server's Retry-After wins when given.")
    timeout_s: float = Field(120.0, gt=0, description="openai: seconds before one request counts as timed out.")
    batch_size: int = Field(8, gt=0, description="local: prompts per forward batch; openai completions: "
                            "prompts per request.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (used when temperature > 0).")
    seed: int = Field(0, description="local: sampling seed (each call advances it).")

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(f"api_key_env must be the NAME of an environment variable (letters, digits, _), "
                             f"not {'a key' if len(self.api_key_env) > 20 else repr(self.api_key_env)}")
        if self.type == "local" and self.base_url:
            raise ValueError("base_url is only used with type: openai")
        return self

    @property
    def resolved_endpoint(self) -> str:
        return self.endpoint or ("completions" if self.type == "local" else "chat")


def finish_reason(text: str) -> str | None:
    """The finish reason of a teacher's text; None when the teacher did not say (a plain str)."""
    return getattr(text, "finish_reason", None)


class Teacher(Protocol):
    """What data generation and judging need from a model."""

    def complete(self, prompts: list[str], *, max_tokens: int, temperature: float,
                 stop: list[str] | None = None) -> list[Generated]: ...

    def chat(self, conversations: list[list[dict]], *, max_tokens: int, temperature: float) -> list[Generated]: ...


def make_teacher(cfg: TeacherConfig | dict | str) -> Teacher:
    """A teacher for the config (a bare string is a local model reference)."""
    cfg = TeacherConfig.model_validate(cfg)
    return LocalTeacher(cfg) if cfg.type == "local" else OpenAITeacher(cfg)


# --------------------------------------------------------------------------- local


class LocalTeacher:
    """Batched generation with a model loaded in this process (loaded on first use)."""

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self._model = None
        self._tokenizer = None
        self._calls = 0
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            from align.models import load_for_generation

            log.info("teacher: loading local model %s", self.cfg.model)
            self._model, self._tokenizer = load_for_generation(self.cfg.model)
        return self._model, self._tokenizer

    def complete(self, prompts: list[str], *, max_tokens: int, temperature: float,
                 stop: list[str] | None = None) -> list[Generated]:
        with self._lock:
            model, tokenizer = self._load()
            if self.cfg.resolved_endpoint == "chat":
                from align.generation import chat_prompt

                prompts = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
            return self._generate(list(prompts), max_tokens, temperature, stop)

    def chat(self, conversations: list[list[dict]], *, max_tokens: int, temperature: float) -> list[Generated]:
        from align.generation import chat_prompt

        with self._lock:
            model, tokenizer = self._load()
            return self._generate([chat_prompt(tokenizer, c) for c in conversations], max_tokens, temperature, None)

    def _generate(self, prompts: list[str], max_tokens: int, temperature: float,
                  stop: list[str] | None) -> list[Generated]:
        from align.generation import generate_texts

        self._calls += 1
        out = generate_texts(self._model, self._tokenizer, prompts, max_new_tokens=max_tokens, temperature=temperature,
                             top_p=self.cfg.top_p, stop=stop, batch_size=self.cfg.batch_size,
                             seed=self.cfg.seed + self._calls, by_length=True, progress=False)
        return [row[0] for row in out]


# --------------------------------------------------------------------------- OpenAI-compatible

RETRY_STATUS = frozenset({408, 409, 429})


def is_retryable(exc: BaseException) -> bool:
    """429, 408, 409, any 5xx, timeouts and connection errors are worth another try; 4xx otherwise are not."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    return False


def backoff_delay(attempt: int, base_s: float, retry_after: float | None = None, cap_s: float = 60.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full jitter over base * 2^attempt.

    A server's Retry-After (seconds) takes precedence when present, capped the same way.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap_s)
    ceiling = min(cap_s, base_s * (2**attempt))
    return (rng or random).uniform(ceiling / 2, ceiling)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAITeacher:
    """An OpenAI-compatible API: thread pool for concurrency, our own retry policy (client retries off)."""

    def __init__(self, cfg: TeacherConfig):
        import openai

        self.cfg = cfg
        api_key = NO_KEY
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env, "")
            if not api_key:
                raise AlignError(f"teacher: environment variable {cfg.api_key_env} (api_key_env) is not set or empty")
        # max_retries=0: the loop in _request is the only retry policy, so it is the one that counts.
        self._client = openai.OpenAI(api_key=api_key, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0)
        self._rng = random.Random(cfg.seed)
        self._stats_lock = threading.Lock()
        self.attempts = 0  # HTTP requests sent, retries included
        self.retries = 0

    def close(self) -> None:
        self._client.close()

    def _request(self, call, what: str):
        """Run one API call with retries on transient failures."""
        attempt = 0
        while True:
            with self._stats_lock:
                self.attempts += 1
            try:
                return call()
            except Exception as exc:
                if not is_retryable(exc):
                    raise AlignError(f"teacher {self.cfg.model} at {self.cfg.base_url or 'api.openai.com'}: "
                                     f"{what} failed: {_describe(exc)}") from None
                if attempt >= self.cfg.max_retries:
                    raise AlignError(f"teacher {self.cfg.model} at {self.cfg.base_url or 'api.openai.com'}: {what} "
                                     f"failed after {attempt + 1} attempts: {_describe(exc)}") from None
                with self._stats_lock:
                    delay = backoff_delay(attempt, self.cfg.retry_backoff_s, _retry_after(exc), rng=self._rng)
                    self.retries += 1
                log.warning("teacher: %s: %s; retry %d/%d in %.2fs", what, _describe(exc), attempt + 1,
                            self.cfg.max_retries, delay)
                time.sleep(delay)
                attempt += 1

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.cfg.max_concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def _chat_one(self, messages: list[dict], max_tokens: int, temperature: float,
                  stop: list[str] | None = None) -> Generated:
        kwargs: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if temperature > 0 and self.cfg.top_p < 1:
            kwargs["top_p"] = self.cfg.top_p
        if stop:
            kwargs["stop"] = stop[:4]  # the OpenAI API accepts at most 4
        response = self._request(lambda: self._client.chat.completions.create(**kwargs), "chat completion")
        if not response.choices:
            raise AlignError(f"teacher {self.cfg.model}: chat completion returned no choices")
        choice = response.choices[0]
        return Generated((choice.message.content or "").strip(), choice.finish_reason)

    def chat(self, conversations: list[list[dict]], *, max_tokens: int, temperature: float) -> list[Generated]:
        return self._map(lambda conv: self._chat_one(conv, max_tokens, temperature), list(conversations))

    def complete(self, prompts: list[str], *, max_tokens: int, temperature: float,
                 stop: list[str] | None = None) -> list[Generated]:
        prompts = list(prompts)
        if self.cfg.resolved_endpoint == "chat":
            replies = self._map(lambda p: self._chat_one([{"role": "user", "content": p}], max_tokens, temperature,
                                                         stop), prompts)
            return [_cut(r, r.finish_reason, stop) for r in replies]  # servers may ignore or only partly honour stop
        size = self.cfg.batch_size
        batches = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        return [text for batch in self._map(lambda b: self._complete_batch(b, max_tokens, temperature, stop), batches)
                for text in batch]

    def _complete_batch(self, prompts: list[str], max_tokens: int, temperature: float,
                        stop: list[str] | None) -> list[Generated]:
        kwargs: dict[str, Any] = {"model": self.cfg.model, "prompt": prompts, "max_tokens": max_tokens,
                                  "temperature": temperature}
        if temperature > 0 and self.cfg.top_p < 1:
            kwargs["top_p"] = self.cfg.top_p
        if stop:
            kwargs["stop"] = stop[:4]
        response = self._request(lambda: self._client.completions.create(**kwargs), "completion")
        texts: list[Generated | None] = [None] * len(prompts)
        for position, choice in enumerate(response.choices):
            index = choice.index if choice.index is not None else position
            if 0 <= index < len(prompts) and texts[index] is None:
                texts[index] = _cut(choice.text or "", choice.finish_reason, stop)
        if any(t is None for t in texts):
            raise AlignError(f"teacher {self.cfg.model}: completion answered {len(response.choices)} choices for "
                             f"{len(prompts)} prompts")
        return texts  # type: ignore[return-value]


def _cut(text: str, reason: str | None, stop: list[str] | None) -> Generated:
    """Text cut at the first stop string; a text that reached one ended there, whatever the server said."""
    from align.generation import cut_at_stop

    cut = cut_at_stop(text, stop)
    if stop and any(s in text for s in stop):
        reason = "stop"
    return Generated(cut, reason)


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__ + (f" (HTTP {status})" if status else "")
    message = str(getattr(exc, "message", "") or exc).strip()
    return f"{name}: {message[:300]}" if message else name
