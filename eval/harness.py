"""Standard benchmarks on a policy through EleutherAI's lm-evaluation-harness, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from align.errors import AlignError


class LmEvalConfig(BaseModel):
    """Standard benchmarks through EleutherAI's lm-evaluation-harness (`pip install lm_eval`)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(description="lm-eval task names, e.g. [hellaswag, arc_easy] or local YAML task names.")
    include_path: str | None = Field(
        None, description="Folder of local task YAMLs (offline use); lm-eval runs inside it, so data_files "
        "paths in the YAMLs are relative to it.")
    limit: int | None = Field(None, gt=0, description="Examples per task (None = all).")
    batch_size: int = Field(8, gt=0)
    num_fewshot: int | None = None


def run_lm_eval(model_ref: str, cfg: LmEvalConfig, out_dir: Path) -> dict[str, Any]:
    """Run lm-evaluation-harness on one model (adapters via its `peft=` model arg); returns task metrics."""
    from align.models import resolve_model_ref

    resolved = Path(resolve_model_ref(model_ref))
    adapter = resolved / "adapter_config.json"
    if adapter.exists():
        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model_args = f"pretrained={base},peft={resolved},tokenizer={resolved}"
    else:
        model_args = f"pretrained={resolved}"
    out_dir = out_dir.resolve()
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args + ",dtype=float32",
           "--tasks", ",".join(cfg.tasks), "--batch_size", str(cfg.batch_size), "--output_path", str(out_dir),
           "--device", "cuda" if _cuda() else "cpu"]
    cwd = None
    if cfg.include_path:
        cwd = str(Path(cfg.include_path).resolve())
        if not Path(cwd).is_dir():
            raise AlignError(f"eval.lm_eval.include_path: {cfg.include_path} is not a folder")
        cmd += ["--include_path", cwd]
    if cfg.limit:
        cmd += ["--limit", str(cfg.limit)]
    if cfg.num_fewshot is not None:
        cmd += ["--num_fewshot", str(cfg.num_fewshot)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1")}
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise AlignError("eval.lm_eval needs lm-evaluation-harness: pip install lm_eval") from exc
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    (out_dir / "lm_eval.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise AlignError(f"lm_eval failed for {model_ref} (exit {proc.returncode}); see {out_dir / 'lm_eval.log'}:\n"
                         + proc.stderr[-1500:])
    results_files = sorted(out_dir.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not results_files:
        raise AlignError(f"lm_eval wrote no results under {out_dir}")
    results = json.loads(results_files[-1].read_text())["results"]
    return {task: {k: v for k, v in vals.items() if isinstance(v, (int, float))} for task, vals in results.items()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
