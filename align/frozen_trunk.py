"""Frozen lower layers computed once: record their output, replay it in later forward passes.

With an adapter only on the top layers (``adapter.top_layers``), the bottom decoder layers compute the
same thing in every forward over the same tokens: nothing in them trains, no adapter wraps them and
(with dropout off) nothing in them is random. PPO reuses their output across a step's roles and update
epochs (align.ppo.policy); the reward stage reuses it across training epochs (`TrunkCache`). Replaying
swaps the bottom layers for stand-ins that return the recorded output, so the model's own forward
(position embeddings, attention masks, the top layers, the head) runs unchanged.

transformers has no such hook (its KV cache stores keys and values per layer, not a layer's output for
replay in a training forward), so this is ours.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The transformer's list of decoder layers (the first ModuleList of num_hidden_layers modules)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not n:
        return None
    return next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)


def frozen_prefix(model: nn.Module, *, deterministic: bool = False) -> int:
    """How many bottom decoder layers compute the same output in every forward over the same tokens: no
    adapter (any peft tuner layer, of any adapter loaded) wraps a module in them, none of their parameters
    trains, and the input embeddings have neither. deterministic: also require no active dropout in them
    (a training-mode forward with dropout is random). 0 when the model has no recognisable layer list."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = decoder_layers(model)
    if layers is None:
        return 0
    config = getattr(model, "config", None)
    if deterministic and float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return 0

    def touched(module: nn.Module) -> bool:
        if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
            return True
        if any(p.requires_grad for p in module.parameters()):
            return True
        return deterministic and any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and touched(embeddings):
        return 0
    return next((i for i, layer in enumerate(layers) if touched(layer)), len(layers))


class _Replay(nn.Module):
    """Stands in for a frozen decoder layer: the last one returns the recorded output, the others
    pass their input through (nothing below the last one is needed)."""

    def __init__(self, output: torch.Tensor | None) -> None:
        super().__init__()
        self.output = output

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.output is None:
            return hidden_states
        return self.output.to(device=hidden_states.device, dtype=hidden_states.dtype)


@contextlib.contextmanager
def replay_lower_layers(model: nn.Module, k: int, trunk: torch.Tensor | None) -> Iterator[None]:
    """Forwards inside skip the bottom `k` layers and start from `trunk` (B, L, H), their recorded output
    for exactly these input columns. No-op when trunk is None or k == 0."""
    if trunk is None or k == 0:
        yield
        return
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(k)]
    for i in range(k):
        layers[i] = _Replay(trunk if i == k - 1 else None)
    try:
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


@contextlib.contextmanager
def capture_lower_layers(model: nn.Module, k: int, into: list[torch.Tensor]) -> Iterator[None]:
    """Append the output of layer k-1 (B, L, H) of each forward inside to `into`. No-op when k == 0."""
    if k == 0:
        yield
        return
    layer = decoder_layers(model)[k - 1]

    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        into.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class TrunkCache:
    """The frozen layers' output per training row, recorded in the first epoch and replayed after.

    Rows are right-padded (real tokens at positions 0..n-1 whatever the batch), so a row's output does
    not depend on the batch it was computed in; each row is stored unpadded (n, H), on the CPU.
    """

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.rows: dict[int, torch.Tensor] = {}
        self.hits = 0  # forwards that replayed
        self.misses = 0  # forwards that computed (and recorded)

    def forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], row_ids: torch.Tensor) -> Any:
        """model(**inputs), replaying the bottom layers when every row of the batch is recorded."""
        ids = row_ids.tolist()
        mask = inputs["attention_mask"]
        if all(i in self.rows for i in ids):
            first = self.rows[ids[0]]
            trunk = torch.zeros(mask.shape[0], mask.shape[1], first.shape[-1], dtype=first.dtype)
            for n, i in enumerate(ids):
                row = self.rows[i]
                trunk[n, : row.shape[0]] = row
            self.hits += 1
            with replay_lower_layers(model, self.layers, trunk.to(mask.device)):
                return model(**inputs)
        recorded: list[torch.Tensor] = []
        with capture_lower_layers(model, self.layers, recorded):
            outputs = model(**inputs)
        lengths = mask.sum(-1).tolist()  # right padding: row n's tokens are columns 0..lengths[n]-1
        for n, i in enumerate(ids):
            self.rows[i] = recorded[0][n, : int(lengths[n])].to("cpu", copy=True)
        self.misses += 1
        return outputs


def trunk_cache_for(model: nn.Module, tokens: int, max_gib: float, epochs: float) -> TrunkCache | None:
    """A TrunkCache when it pays and fits: more than one pass over the data, at least one frozen layer
    (dropout off), and tokens x hidden size x bytes within max_gib; else None (logged why)."""
    if max_gib <= 0 or epochs <= 1:
        return None
    k = frozen_prefix(model, deterministic=True)
    if k == 0:
        log.info("trunk cache off: no frozen bottom layer (the adapter or dropout reaches layer 0)")
        return None
    hidden = int(getattr(model.config, "hidden_size", 0) or 0)
    dtype = next(model.parameters()).dtype
    itemsize = 4 if not dtype.is_floating_point or dtype.itemsize < 2 else dtype.itemsize
    gib = tokens * hidden * itemsize / 2**30
    if gib > max_gib:
        log.info("trunk cache off: the %d frozen layers' output would take %.2f GiB (limit %.2f GiB)", k, gib, max_gib)
        return None
    log.info("trunk cache: %d frozen bottom layers computed once, replayed in later epochs (%.3f GiB)", k, gib)
    return TrunkCache(k)
