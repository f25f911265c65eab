"""Instruction data in, conversational prompt/completion examples out.

Accepted inputs (detected per record, or forced with `format:`):
- Alpaca JSON/JSONL: ``{instruction, input, output}``
- Self-Instruct JSONL: ``{instruction, instances: [{input, output}]}`` (one example per instance)
- chat JSONL: ``{messages: [{role, content}, ...]}`` (the last assistant turn is the completion)
- prompt/completion: ``{prompt, completion}`` (strings or message lists)
- anything `datasets.load_dataset` takes (hub id, local csv/parquet/json) with those columns.

Output: ``{"prompt": [messages...], "completion": [{"role": "assistant", ...}]}``, which TRL's
SFTTrainer turns into a loss on the completion tokens only, for any chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from align.errors import AlignError
from align.jsonl import read_records
from align.sections import Shorthand

DataFormat = Literal["auto", "alpaca", "self_instruct", "chat", "prompt_completion"]


class DataConfig(Shorthand):
    """Where training examples come from."""

    model_config = ConfigDict(extra="forbid")
    shorthand_key: ClassVar[str] = "path"  # a plain string stands for the path

    path: str = Field(description="JSON/JSONL file, directory, datasets hub id, gold:train|gold:heldout, or @stage.")
    format: DataFormat = Field("auto", description="Record format; auto detects it per record.")
    split: str = Field("train", description="Split to read when loading through datasets.")
    max_samples: int | None = Field(None, gt=0, description="Use only the first N examples.")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="Hold out this fraction for evaluation loss.")
    system_prompt: str | None = Field(None, description="Prepended as a system message when set.")
    where: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Keep only records whose fields have these values, e.g. {split: train} "
        "(local JSON/JSONL files).")


def detect_format(rec: dict) -> str | None:
    if "messages" in rec:
        return "chat"
    if "instances" in rec and "instruction" in rec:
        return "self_instruct"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    return None


def _text(where: str, rec: dict, key: str, required: bool = True) -> str:
    value = rec.get(key, None if required else "")
    if value is None:
        value = "" if not required else None
    if not isinstance(value, str):
        raise AlignError(f"{where}: key '{key}' must be a string, got {type(value).__name__ if value is not None else 'nothing'}")
    return value


def alpaca_user_message(instruction: str, input_text: str) -> str:
    """The Alpaca convention: instruction, then the input (if any) after a blank line."""
    return f"{instruction.strip()}\n\n{input_text.strip()}" if input_text.strip() else instruction.strip()


def to_examples(where: str, rec: dict, fmt: str) -> list[dict]:
    """One record → list of {prompt: [...], completion: [...]} examples."""
    fmt = detect_format(rec) if fmt == "auto" else fmt
    if fmt is None:
        raise AlignError(
            f"{where}: unrecognised record with keys {sorted(rec)}; expected one of: "
            "{instruction, input, output} (Alpaca), {instruction, instances} (Self-Instruct), "
            "{messages} (chat), {prompt, completion}"
        )
    if fmt == "alpaca":
        user = alpaca_user_message(_text(where, rec, "instruction"), _text(where, rec, "input", required=False))
        return [_pair(where, user, _text(where, rec, "output"))]
    if fmt == "self_instruct":
        instances = rec.get("instances")
        if not isinstance(instances, list) or not instances:
            raise AlignError(f"{where}: 'instances' must be a non-empty list of {{input, output}} objects")
        instruction = _text(where, rec, "instruction")
        out = []
        for j, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise AlignError(f"{where}: instances[{j}] must be an object with input and output")
            out.append(_pair(f"{where} instances[{j}]", alpaca_user_message(
                instruction, _text(where, inst, "input", required=False)), _text(f"{where} instances[{j}]", inst, "output")))
        return out
    if fmt == "chat":
        return [_chat(where, rec.get("messages"))]
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, str) and isinstance(completion, str):
        return [_pair(where, prompt, completion)]
    if isinstance(prompt, list) and isinstance(completion, list):
        return [_chat(where, prompt + completion)]
    raise AlignError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists")


def _pair(where: str, user: str, assistant: str) -> dict:
    if not user.strip():
        raise AlignError(f"{where}: empty instruction")
    if not assistant.strip():
        raise AlignError(f"{where}: empty output (nothing to learn from)")
    return {"prompt": [{"role": "user", "content": user}], "completion": [{"role": "assistant", "content": assistant}]}


def _chat(where: str, messages: Any) -> dict:
    if not isinstance(messages, list) or not messages:
        raise AlignError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise AlignError(f"{where}: messages[{j}].role is {m['role']!r}; expected system, user, assistant or tool")
    last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or last == 0:
        raise AlignError(f"{where}: a chat record needs an assistant message after at least one other message")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": clean[:last], "completion": [clean[last]]}


_NOT_DATA = ("result.json", "metrics.json", "config.json", "stats.json", "tasks.jsonl")


_DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")


def is_local_path(path: str) -> bool:
    """Whether a data path names a local file or folder (else it is read as a datasets hub id)."""
    return (Path(path).expanduser().exists() or path.startswith((".", "/", "~"))
            or Path(path).suffix in _DATA_SUFFIXES)


def check_data_source(path: str) -> None:
    """Reject a data path that cannot be read, without reading it (`align validate`, and every loader).

    A gold split must exist; a local path (existing, starting with ./, / or ~, or ending in a data file
    suffix) must exist, and a folder must hold .json/.jsonl files. Hub dataset ids are checked when read.
    """
    if path.startswith("gold:"):
        from align.eval.gold import parse_gold_spec

        parse_gold_spec(path)
        return
    local = Path(path).expanduser()
    if local.is_dir():
        if not [f for f in (*local.glob("*.jsonl"), *local.glob("*.json")) if f.name not in _NOT_DATA]:
            raise AlignError(f"{local}: directory holds no .json or .jsonl data files")
    elif not local.exists() and is_local_path(path):
        raise AlignError(f"data file not found: {path}")


def _source_records(cfg: DataConfig) -> list[tuple[str, dict]]:
    """Raw records of a data source (files, folder, csv/parquet, hub id), filtered by `where`.

    `gold:train` / `gold:heldout` (or `gold:SET:SPLIT`) name a split of align's shipped gold prompts.
    """
    check_data_source(cfg.path)
    if cfg.path.startswith("gold:"):
        from align.eval.gold import gold_spec_path

        path, split = gold_spec_path(cfg.path)
        cfg = cfg.model_copy(update={"path": str(path), "where": {**cfg.where, "split": split}})
    path = Path(cfg.path).expanduser()
    local_json = path.is_dir() or (path.is_file() and path.suffix in (".json", ".jsonl"))
    if path.is_dir():
        files = sorted([*path.glob("*.jsonl"), *path.glob("*.json")])
        files = [f for f in files if f.name not in _NOT_DATA]
        records = [r for f in files for r in read_records(f)]
    elif local_json:
        records = read_records(path)
    elif is_local_path(cfg.path):
        records = _records_from_datasets(str(path), cfg.split, local=True)
    else:
        records = _records_from_datasets(cfg.path, cfg.split, local=False)
    if cfg.where:
        records = [(w, r) for w, r in records if all(r.get(k) == v for k, v in cfg.where.items())]
        if not records:
            raise AlignError(f"{cfg.path}: no records with {cfg.where}")
    return records


def _with_system(conversation: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and conversation[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *conversation]
    return conversation


def prompts_from_record(where: str, rec: dict, fmt: str = "auto") -> list[list[dict]]:
    """The prompt(s) of one record as chat messages ending with a user turn (one per Self-Instruct instance).

    Prompt-only records are accepted here (``{prompt}`` as text or messages, ``{instruction, input}``
    without an output, ``{messages}`` ending with a user turn); full examples give their prompt.
    """
    if fmt == "auto":
        if "prompt" in rec and "completion" not in rec:
            return [_user_ending(where, rec["prompt"])]
        if "instruction" in rec and "output" not in rec and "instances" not in rec:
            instruction, extra = rec.get("instruction"), rec.get("input") or ""
            if not isinstance(instruction, str) or not instruction.strip() or not isinstance(extra, str):
                raise AlignError(f"{where}: 'instruction' must be a non-empty string and 'input' a string")
            return [[{"role": "user", "content": alpaca_user_message(instruction, extra)}]]
        messages = rec.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "user":
            return [_user_ending(where, messages)]
    return [ex["prompt"] for ex in to_examples(where, rec, fmt)]


def _user_ending(where: str, prompt: Any) -> list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignError(f"{where}: empty prompt")
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise AlignError(f"{where}: a prompt must be a non-empty string or a list of {{role, content}} messages")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
    if prompt[-1]["role"] != "user":
        raise AlignError(f"{where}: a prompt must end with a user message, got {prompt[-1]['role']!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def load_prompts(cfg: DataConfig | str, unique: bool = False) -> list[list[dict]]:
    """Prompts of a data source (for rollouts, ranking, evaluation), as conversations ending with a user turn.

    `.txt` files hold one prompt per line. With `unique`, repeated prompts are kept once (first occurrence).
    """
    cfg = DataConfig.model_validate(cfg)
    path = Path(cfg.path).expanduser()
    if path.is_file() and path.suffix == ".txt":
        prompts = [[{"role": "user", "content": line.strip()}]
                   for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = [p for where, rec in _source_records(cfg) for p in prompts_from_record(where, rec, cfg.format)]
    if unique:
        seen: set[str] = set()
        kept = []
        for p in prompts:
            key = json.dumps(p, sort_keys=True)
            if key not in seen:
                seen.add(key)
                kept.append(p)
        prompts = kept
    if cfg.max_samples:
        prompts = prompts[: cfg.max_samples]
    prompts = [_with_system(p, cfg.system_prompt) for p in prompts]
    if not prompts:
        raise AlignError(f"{cfg.path}: no prompts found")
    return prompts


def load_examples(cfg: DataConfig | str) -> list[dict]:
    """All examples of a data source in conversational prompt/completion form."""
    cfg = DataConfig.model_validate(cfg)
    records = _source_records(cfg)
    examples: list[dict] = []
    for where, rec in records:
        examples.extend(to_examples(where, rec, cfg.format))
        if cfg.max_samples and len(examples) >= cfg.max_samples:
            break
    if cfg.max_samples:
        examples = examples[: cfg.max_samples]
    for ex in examples:
        ex["prompt"] = _with_system(ex["prompt"], cfg.system_prompt)
    if not examples:
        raise AlignError(f"{cfg.path}: no examples found")
    return examples


def _records_from_datasets(name: str, split: str, local: bool) -> list[tuple[str, dict]]:
    """Anything datasets.load_dataset understands: csv/parquet files or a hub dataset id."""
    import datasets

    try:
        if local:
            builder = {".csv": "csv", ".parquet": "parquet", ".txt": "text"}.get(Path(name).suffix)
            if builder is None:
                raise AlignError(f"{name}: unsupported data file type; use .json, .jsonl, .csv or .parquet")
            ds = datasets.load_dataset(builder, data_files=name, split=split)
        else:
            from align.hub import check_hub_dataset

            check_hub_dataset(name)
            ds = datasets.load_dataset(name, split=split)
    except AlignError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the name and the reason
        raise AlignError(f"cannot load dataset {name!r} (split {split!r}): {type(exc).__name__}: {exc}") from None
    return [(f"{name} row {i}", dict(row)) for i, row in enumerate(ds)]


def split_examples(examples: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train / held-out split."""
    import random

    if eval_fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(examples) * eval_fraction)))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
