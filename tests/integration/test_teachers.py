"""Teachers: the local backend, and the OpenAI-compatible one against a real `align serve` on 127.0.0.1."""

from __future__ import annotations

import random
import time

import pytest
from pydantic import ValidationError

from align.errors import AlignError
from align.sharing.serve import ModelBackend, running_server
from align.teachers import TeacherConfig, backoff_delay, make_teacher

PROMPTS = ["Come up with a series of tasks:\n1.", "Task: name a fruit.\nOutput:", "Hello", "1. Write a poem"]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return ModelBackend("tiny-llama")


def remote(srv, **overrides):
    cfg = {"type": "openai", "model": "tiny-llama", "base_url": srv.url, "retry_backoff_s": 0.01, **overrides}
    return make_teacher(cfg)


def test_config_rejects_unknown_keys_and_keys_in_place_of_env_names():
    with pytest.raises(ValidationError, match="extra"):
        TeacherConfig(model="x", temperature=0.3)
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        TeacherConfig(type="openai", model="gpt", api_key_env="sk-abcdefghijklmnopqrstuvwxyz123")
    assert TeacherConfig.model_validate("tiny-llama").type == "local"
    assert TeacherConfig(model="x").resolved_endpoint == "completions"
    assert TeacherConfig(type="openai", model="x").resolved_endpoint == "chat"


def test_local_teacher_complete_and_chat(tiny_model_dir):
    teacher = make_teacher("tiny-llama")
    texts = teacher.complete(PROMPTS, max_tokens=6, temperature=0.0)
    assert len(texts) == len(PROMPTS) and all(isinstance(t, str) for t in texts)
    assert texts == teacher.complete(PROMPTS, max_tokens=6, temperature=0.0)  # greedy is deterministic
    replies = teacher.chat([[{"role": "user", "content": p}] for p in PROMPTS[:2]], max_tokens=6, temperature=0.0)
    assert len(replies) == 2 and all(replies)


def test_generate_texts_keeps_prompt_order_and_says_why_each_text_ended(backend):
    """One local generation function serves stages, the local teacher and align serve."""
    from align.generation import generate_texts

    model, tok = backend.model, backend.tokenizer
    plain = generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, progress=False)
    assert generate_texts(model, tok, PROMPTS, max_new_tokens=6, batch_size=1, by_length=True, progress=False) == plain
    prompt = "Instruction: say hello"
    full = generate_texts(model, tok, [prompt], max_new_tokens=12, progress=False)[0][0]
    stop = full.split()[1]  # a word the greedy continuation is certain to produce
    cut = generate_texts(model, tok, [prompt], max_new_tokens=12, stop=[stop], progress=False)[0][0]
    assert cut.finish_reason == "stop" and stop not in cut and full.startswith(cut)
    assert cut.tokens < full.tokens  # generation stopped at the stop string, not at the token limit
    short = generate_texts(model, tok, [prompt], max_new_tokens=3, progress=False)[0][0]
    assert short.finish_reason == "length" and short.tokens == 3 and full.startswith(short)


def test_completions_endpoint_matches_local_and_keeps_order(backend):
    local = make_teacher({"model": "tiny-llama", "batch_size": 2})
    expected = local.complete(PROMPTS, max_tokens=8, temperature=0.0)
    with running_server("tiny-llama", backend=backend) as srv:
        # batch_size 3: two requests (3 + 1 prompts) answered concurrently, reassembled in order
        teacher = remote(srv, endpoint="completions", batch_size=3, max_concurrency=2)
        got = teacher.complete(PROMPTS, max_tokens=8, temperature=0.0)
    assert got == expected
    assert teacher.attempts == 2
    assert srv.stats["status_200"] == 2


def test_chat_endpoint_for_complete_and_chat(backend):
    local = make_teacher("tiny-llama")
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    expected = local.chat(conversations, max_tokens=8, temperature=0.0)
    with running_server("tiny-llama", backend=backend) as srv:
        teacher = remote(srv)  # endpoint defaults to chat for openai
        assert teacher.chat(conversations, max_tokens=8, temperature=0.0) == expected
        assert teacher.complete(PROMPTS, max_tokens=8, temperature=0.0) == expected
    assert srv.stats["status_200"] == 2 * len(PROMPTS)


@pytest.mark.parametrize("limit", [1, 3])
def test_concurrency_limit_is_reached_and_never_exceeded(backend, limit):
    with running_server("tiny-llama", backend=backend, delay_s=0.25) as srv:
        teacher = remote(srv, max_concurrency=limit)
        started = time.perf_counter()
        out = teacher.chat([[{"role": "user", "content": f"q{i}"}] for i in range(6)], max_tokens=2, temperature=0.0)
        elapsed = time.perf_counter() - started
    assert len(out) == 6
    assert srv.stats["max_in_flight"] == limit
    assert elapsed >= 0.25 * 6 / limit - 0.05


def test_429_and_500_are_retried(backend):
    with running_server("tiny-llama", backend=backend, fail_first={"429": 1, "500": 1}) as srv:
        teacher = remote(srv, endpoint="completions", max_concurrency=1)
        out = teacher.complete(["Hello"], max_tokens=4, temperature=0.0)
    assert len(out) == 1
    assert teacher.attempts == 3 and teacher.retries == 2
    assert (srv.stats["status_429"], srv.stats["status_500"], srv.stats["status_200"]) == (1, 1, 1)


def test_retries_give_up_with_a_clear_error(backend):
    with running_server("tiny-llama", backend=backend, fail_first={"503": 5}) as srv:
        teacher = remote(srv, max_retries=2)
        with pytest.raises(AlignError, match=r"failed after 3 attempts.*503"):
            teacher.chat([[{"role": "user", "content": "hi"}]], max_tokens=2, temperature=0.0)
    assert teacher.attempts == 3
    assert srv.stats["status_503"] == 3


def test_client_errors_are_not_retried(backend, monkeypatch):
    monkeypatch.setenv("ALIGN_TEST_WRONG_KEY", "sk-wrong")
    with running_server("tiny-llama", backend=backend, api_key="sk-right") as srv:
        teacher = remote(srv, api_key_env="ALIGN_TEST_WRONG_KEY")
        with pytest.raises(AlignError, match="401"):
            teacher.chat([[{"role": "user", "content": "hi"}]], max_tokens=2, temperature=0.0)
    assert teacher.attempts == 1


def test_timeout_is_retried(backend, caplog):
    # The stall outlasts any test (its handler thread is a daemon); the client's timeout is what ends the wait,
    # and it is long enough for the retried request to be answered on a busy machine.
    with running_server("tiny-llama", backend=backend, fail_first={"timeout": 1}, stall_s=600.0) as srv:
        teacher = remote(srv, timeout_s=3.0, endpoint="completions")
        out = teacher.complete(["Hello"], max_tokens=3, temperature=0.0)
    assert len(out) == 1
    assert teacher.attempts == 2
    assert "APITimeoutError" in caplog.text  # the client gave up on the stalled answer (not a late 504)


def test_connection_refused_is_retried_then_reported():
    teacher = make_teacher({"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "max_retries": 1,
                            "retry_backoff_s": 0.01, "timeout_s": 2})
    with pytest.raises(AlignError, match="APIConnectionError"):
        teacher.chat([[{"role": "user", "content": "hi"}]], max_tokens=2, temperature=0.0)
    assert teacher.attempts == 2


def test_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ALIGN_TEST_UNSET_KEY", raising=False)
    with pytest.raises(AlignError, match="ALIGN_TEST_UNSET_KEY"):
        make_teacher({"type": "openai", "model": "m", "api_key_env": "ALIGN_TEST_UNSET_KEY"})


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    rng = random.Random(0)
    for attempt in range(6):
        ceiling = min(60.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 40  # jittered, not constant
    assert backoff_delay(3, 0.5, retry_after=2.0) == 2.0
    assert backoff_delay(30, 0.5, rng=rng) <= 60.0


class ReasonBackend:
    """`align serve` backend answering each prompt with a fixed (text, finish_reason)."""

    ANSWERS = {"cut": (" Write a haiku about the", "length"), "done": (" Name three rivers.", "stop"),
               "cut at stop": (" Name a river.\n\nTask 16: more", "length")}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat_prompt(self, messages: list[dict]) -> str:
        return messages[-1]["content"]

    def generate(self, prompts, *, max_tokens, temperature, top_p, stop, n, seed):
        return [[(*self.ANSWERS[p], 5)] * n for p in prompts]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_openai_teacher_returns_each_texts_finish_reason(endpoint):
    """The server's finish_reason reaches the caller per text, in order; a text cut at a stop string ended there."""
    from align.teachers import finish_reason

    prompts = ["done", "cut", "cut at stop"]
    with running_server("fixed", backend=ReasonBackend()) as srv:
        teacher = remote(srv, endpoint=endpoint, batch_size=3, model="fixed")
        got = teacher.complete(prompts, max_tokens=5, temperature=0.0, stop=["\n\n"])
    assert got == ["Name three rivers.", "Write a haiku about the", "Name a river."]
    assert [finish_reason(t) for t in got] == ["stop", "length", "stop"]


def test_local_and_remote_teachers_report_length_at_the_token_limit(backend):
    """tiny-llama never ends a 2-token continuation on its own: every text is cut by max_tokens."""
    local = make_teacher("tiny-llama")
    texts = local.complete(PROMPTS, max_tokens=2, temperature=0.0)
    assert [t.finish_reason for t in texts] == ["length"] * len(PROMPTS)
    roomy = local.complete(["Hello"], max_tokens=200, temperature=0.0, stop=[texts[2][:1] or " "])
    assert roomy[0].finish_reason == "stop"  # ended at a stop string, long before the limit
    with running_server("tiny-llama", backend=backend) as srv:
        for endpoint in ("completions", "chat"):
            got = remote(srv, endpoint=endpoint).complete(PROMPTS, max_tokens=2, temperature=0.0)
            assert [t.finish_reason for t in got] == ["length"] * len(PROMPTS)
    replies = local.chat([[{"role": "user", "content": "hi"}]], max_tokens=2, temperature=0.0)
    assert replies[0].finish_reason == "length" and isinstance(replies[0], str)
