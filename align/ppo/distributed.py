"""Data parallelism for the PPO loop: thin helpers over torch.distributed.

Every helper is a no-op (or the identity) when there is one process or no process group, so the
single-process loop runs exactly the code it always ran. Under ``torchrun`` / ``accelerate launch``
each process rolls out its shard of the step's queries, the shards are gathered (rollouts are
small: token ids, masks and a few per-token floats), and every process then holds the same global
batch: advantages, whitening statistics and logged stats are computed on it exactly as one process
would. Updates split each micro-batch across processes and sum gradients before clipping, so every
optimizer steps identically and the weights stay in sync (the job DDP does for Trainer stages;
written out here because the PPO loop does several forwards per role and no DDP wrapper fits it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in flat buckets of at most this many elements


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() else None


def is_initialized() -> bool:
    dist = _dist()
    return dist is not None and dist.is_initialized()


def init_from_env() -> bool:
    """Join the process group a launcher described in the environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    Reuses a group someone else (accelerate, via HF Trainer) already started. On CUDA each process
    takes the GPU of its LOCAL_RANK (before any model is loaded, so models land there); the backend
    is nccl on CUDA, gloo on CPU. Returns whether more than one process takes part.
    """
    dist = _dist()
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if dist is None:
        return False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return False
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_world_size() > 1


def world_size() -> int:
    return _dist().get_world_size() if is_initialized() else 1


def rank() -> int:
    return _dist().get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        _dist().barrier()


def _comm_device() -> torch.device:
    """Where collectives need their tensors: the current GPU for nccl, the CPU for gloo."""
    if "nccl" in str(_dist().get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over processes (a new tensor on the input's device); the input itself if alone."""
    if world_size() == 1:
        return tensor
    buf = tensor.detach().to(_comm_device(), copy=True)
    _dist().all_reduce(buf)
    return buf.to(tensor.device)


def all_reduce_stats(stats: dict[str, float]) -> dict[str, float]:
    """Sum each value over processes (float64). Every process must pass the same keys."""
    if world_size() == 1:
        return stats
    keys = sorted(stats)
    summed = all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, summed.tolist(), strict=True))


def all_gather_object(obj: T) -> list[T]:
    """Every process's obj (picklable: small tensors, dicts, dataclasses), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """src's obj on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def broadcast_parameters(params: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy src's values into every process's parameters (as DDP does once at wrap time)."""
    if world_size() == 1:
        return
    for p in params:
        buf = p.detach().to(_comm_device(), copy=True)
        _dist().broadcast(buf, src=src)
        with torch.no_grad():
            p.copy_(buf.to(p.device))


def reduce_gradients(params: list[torch.Tensor], average: bool = False) -> None:
    """Sum (or average) .grad over processes, in flat buckets per dtype.

    A parameter keeps grad None only where it is None on every process, so the optimizer skips the
    same parameters everywhere (AdamW would otherwise still decay and move a zero-gradient weight).
    """
    if world_size() == 1:
        return
    has_grad = all_reduce_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.int32))
    active = [p for p, n in zip(params, has_grad.tolist(), strict=True) if n > 0]
    for p in active:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in active:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for p in group:
            bucket.append(p)
            size += p.grad.numel()
            if size >= _BUCKET_ELEMENTS:
                _reduce_bucket(bucket, average)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket, average)


def _reduce_bucket(params: list[torch.Tensor], average: bool) -> None:
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_comm_device())
    _dist().all_reduce(flat)
    if average:
        flat /= world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


# --------------------------------------------------------------------------- rollouts


def concat_rollouts(parts: list, pad_id: int):
    """One Rollouts from several (rank order), padded to common widths.

    Query tensors (``query_*``) are left-padded, per-token response tensors right-padded (with
    pad_id for token ids, 0 / False elsewhere): the layout one process would have built for the
    whole batch. Lists and (B,) tensors are concatenated; optional fields must be set everywhere
    or nowhere.
    """
    from align.errors import AlignError

    if len(parts) == 1:
        return parts[0]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(parts[0]):
        values = [getattr(p, f.name) for p in parts]
        if all(v is None for v in values):
            merged[f.name] = None
        elif any(v is None for v in values):
            raise AlignError(f"ppo: rollouts field {f.name} is set on some processes only")
        elif isinstance(values[0], list):
            merged[f.name] = [x for v in values for x in v]
        elif isinstance(values[0], torch.Tensor) and values[0].dim() == 2:
            width = max(v.shape[1] for v in values)
            fill = pad_id if f.name.endswith("_ids") else 0
            left = f.name.startswith("query")
            padded = []
            for v in values:
                extra = v.new_full((v.shape[0], width - v.shape[1]), fill)
                padded.append(torch.cat([extra, v] if left else [v, extra], dim=1))
            merged[f.name] = torch.cat(padded)
        elif isinstance(values[0], torch.Tensor):
            merged[f.name] = torch.cat(values)
        elif isinstance(values[0], dict):  # per-process timings: the slowest process sets the pace
            merged[f.name] = {k: max(v[k] for v in values) for k in values[0]}
        else:
            raise AlignError(f"ppo: do not know how to gather rollouts field {f.name} ({type(values[0]).__name__})")
    return type(parts[0])(**merged)


def gather_rollouts(local, pad_id: int):
    """Every process's rollouts as one global batch (rank 0's first); `local` itself when alone."""
    if world_size() == 1:
        return local
    return concat_rollouts(all_gather_object(local), pad_id)
