"""Hugging Face Hub ids without a network: fail fast, once, with what to do instead.

Without this, loading a hub id on a machine that cannot reach the Hub retries every file request
with back-off (about a minute, each retry printed) before transformers' own error. So before a hub id
is handed to `from_pretrained`, one short connection probe (cached for the process) decides:

- Hub reachable: the id is used as it is;
- offline (``HF_HUB_OFFLINE=1``) or unreachable, model in the local Hugging Face cache: the cached
  snapshot folder is used (no request at all);
- otherwise: one AlignError saying the machine has no access and how to use a local directory.

Datasets hub ids get the same probe (`check_hub_dataset`).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from align.errors import AlignError

log = logging.getLogger("align")
PROBE_TIMEOUT_S = 3.0
# Files whose presence in the cache means the model was downloaded before (a checkpoint or an adapter).
_MARKERS = ("config.json", "adapter_config.json")


def hub_endpoint() -> str:
    """The Hub's base URL (HF_ENDPOINT), read at call time so tests and callers can point it elsewhere."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_mode() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_unreachable(endpoint: str | None = None) -> str | None:
    """Why the Hub cannot be reached (e.g. 'Name or service not known'), or None when a TCP connection opens.

    A plain TCP connect with a short timeout, to the HTTPS proxy when one is configured.
    """
    return _probe(endpoint or hub_endpoint(), PROBE_TIMEOUT_S)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout_s: float) -> str | None:
    url = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{target.hostname}:{port}: {exc.strerror or exc}" if not isinstance(exc, TimeoutError) else \
            f"{target.hostname}:{port}: no answer within {timeout_s:g} s"


def cached_snapshot(repo_id: str) -> str | None:
    """The local Hugging Face cache folder of a model downloaded before, or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in _MARKERS:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # a malformed id and the like: not cached
            return None
        if isinstance(found, str):
            return str(Path(found).parent)
    return None


def check_hub_dataset(repo_id: str) -> None:
    """Fail at once for a datasets hub id the Hub cannot serve (datasets would retry for about a minute).

    With HF_HUB_OFFLINE=1 datasets reads its own cache without any request, so that is left to it.
    """
    if offline_mode():
        return
    reason = hub_unreachable()
    if reason is not None:
        raise AlignError(
            f"dataset {repo_id!r} is a Hugging Face Hub id, but this machine has no access to the Hugging Face Hub "
            f"({reason}). Download it where the Hub is reachable (`hf download {repo_id} --repo-type dataset "
            "--local-dir DIR`), copy it here and give a local .json/.jsonl/.csv/.parquet file; or set "
            "HF_HUB_OFFLINE=1 to use a copy already in the datasets cache"
        )


def hub_model_ref(repo_id: str) -> str:
    """What `from_pretrained` should load for a hub id: the id (Hub reachable) or its cached snapshot folder."""
    offline = offline_mode()
    reason = "HF_HUB_OFFLINE is set" if offline else hub_unreachable()
    if reason is None:
        return repo_id
    cached = cached_snapshot(repo_id)
    if cached is not None:
        log.info("%s: the Hub is not reachable (%s); using the cached copy %s", repo_id, reason, cached)
        return cached
    where = "HF_HUB_OFFLINE is set" if offline else f"this machine has no access to the Hugging Face Hub ({reason})"
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise AlignError(
        f"model {repo_id!r} is a Hugging Face Hub id, but {where} and it is not in the local cache ({home}/hub). "
        f"Download it where the Hub is reachable (`hf download {repo_id} --local-dir DIR`), copy DIR here and "
        "give that directory as the model; a path that does not start with ./, / or ~ is read as a hub id"
    )
