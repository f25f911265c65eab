"""`align push`: a finished stage's model as a Hugging Face Hub repo others can load.

It uploads the folder `align export` writes (with the model card naming the repo as where to load it from)
through `huggingface_hub` (HfApi.create_repo + upload_folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.sharing.export import export_model


def push_model(stage: str | Path, repo_id: str, private: bool = False, merge: bool = False,
               dtype: str = "float32", api: Any = None) -> str:
    """Upload the stage's model folder (or its merged export) to the Hub repo `repo_id`; returns the repo URL.

    api: an object with huggingface_hub.HfApi's create_repo / upload_folder (default HfApi(); token from
    HF_TOKEN or `hf auth login`).
    """
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise AlignError(f"--repo-id {repo_id!r}: expected NAMESPACE/NAME, e.g. my-user/my-model")
    with tempfile.TemporaryDirectory(prefix="align-push-") as tmp:
        folder = export_model(stage, Path(tmp) / "model", merge=merge, dtype=dtype, location=repo_id)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        try:
            url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                              commit_message=f"Upload {Path(stage).name} model from align")
        except AlignError:
            raise
        except Exception as exc:  # network, authentication, permissions: huggingface_hub raises many types
            raise AlignError(f"push to {repo_id} failed: {type(exc).__name__}: {exc}") from exc
    return str(url)
