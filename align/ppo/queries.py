"""Queries for rollouts: prompts from any data source, and a deterministic sampler over them.

Besides every format ``align.data.load_examples`` reads (their responses are ignored), prompt-only
records are accepted: ``{"prompt": "..."}``, ``{"prompt": [messages]}``, ``{"instruction", "input"}``
without an output, ``{"messages": [...]}`` ending with a user turn, and ``.txt`` files (one prompt
per line).
"""

from __future__ import annotations

import random
from pathlib import Path

from align.data import DataConfig, alpaca_user_message, load_examples, read_records, to_examples
from align.errors import AlignError

Conversation = list[dict]

_SKIP_FILES = ("result.json", "metrics.json", "config.json", "stats.json")


def _messages(where: str, messages: object) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise AlignError(f"{where}: a prompt must be a non-empty list of {{role, content}} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "user":
        raise AlignError(f"{where}: a prompt must end with a user message, got {messages[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def queries_from_record(where: str, rec: dict, fmt: str = "auto") -> list[Conversation]:
    """The prompt(s) of one record: prompt-only records here, full examples through align.data."""
    if fmt == "auto":
        if "prompt" in rec and "completion" not in rec:
            prompt = rec["prompt"]
            if isinstance(prompt, str):
                if not prompt.strip():
                    raise AlignError(f"{where}: empty prompt")
                return [[{"role": "user", "content": prompt}]]
            return [_messages(where, prompt)]
        if "instruction" in rec and "output" not in rec and "instances" not in rec:
            instruction, extra = rec.get("instruction"), rec.get("input") or ""
            if not isinstance(instruction, str) or not instruction.strip() or not isinstance(extra, str):
                raise AlignError(f"{where}: 'instruction' must be a non-empty string and 'input' a string")
            return [[{"role": "user", "content": alpaca_user_message(instruction, extra)}]]
        if "messages" in rec and isinstance(rec["messages"], list) and rec["messages"] \
                and isinstance(rec["messages"][-1], dict) and rec["messages"][-1].get("role") == "user":
            return [_messages(where, rec["messages"])]
    return [ex["prompt"] for ex in to_examples(where, rec, fmt)]


def load_queries(cfg: DataConfig | str) -> list[Conversation]:
    """Every prompt of a data source as a conversation ending with a user message."""
    cfg = DataConfig.model_validate(cfg)
    path = Path(cfg.path).expanduser()
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        queries = [[{"role": "user", "content": line}] for line in lines if line]
    elif path.is_file() and path.suffix in (".json", ".jsonl") or path.is_dir():
        files = [path] if path.is_file() else sorted(
            f for f in [*path.glob("*.jsonl"), *path.glob("*.json")] if f.name not in _SKIP_FILES
        )
        if not files:
            raise AlignError(f"{path}: directory holds no .json or .jsonl prompt files")
        queries = [q for f in files for where, rec in read_records(f) for q in queries_from_record(where, rec, cfg.format)]
    else:  # csv / parquet / hub datasets: full examples only
        queries = [ex["prompt"] for ex in load_examples(cfg)]
    if cfg.max_samples:
        queries = queries[: cfg.max_samples]
    if cfg.system_prompt:
        queries = [q if q[0]["role"] == "system" else [{"role": "system", "content": cfg.system_prompt}, *q]
                   for q in queries]
    if not queries:
        raise AlignError(f"{cfg.path}: no prompts found")
    return queries


def last_user_message(conversation: Conversation) -> str:
    """The text a programmatic reward sees as `prompt`."""
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


class QuerySampler:
    """Batches of prompt indices: shuffled once per pass with (seed, pass), so step N's batch is
    the same in a resumed run as in an uninterrupted one, with no RNG state to carry."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise AlignError("ppo: no prompts to sample from")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(self.n))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}  # keep one pass in memory
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        """Prompt indices for PPO step `step` (0-based)."""
        out: list[int] = []
        start = step * self.batch_size
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._order(epoch)[offset])
        return out
