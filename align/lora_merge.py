"""Run a PEFT model with one LoRA adapter folded into its base weights, and put the weights back exactly.

Why: evaluated beside its base, a LoRA adapter costs two extra small matmuls per adapted layer at every
decoding step; folded in, generation runs at the plain model's speed (with the quickstart's adapter on 8
of 30 layers that is a few percent on CPU, `benchmarks/results/stage_generation.md`; more with adapters on
every layer). Every stage that only samples or scores (rank's K responses per prompt, eval's greedy
responses and KL samples, PPO's rollouts) runs this way where it is exact.

peft's ``merge_adapter`` / ``unmerge_adapter`` would do the folding, but unmerging subtracts the delta
again and leaves float drift in the base weights (it accumulates over thousands of PPO steps, and other
adapters on the same base would see it); here each merged weight is a new tensor and the original tensor
object is put back afterwards, at the cost of one extra copy of the adapted weights while merged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def lora_merge_blocker(model: nn.Module, adapter: str | None = None, quantization: str = "none") -> str | None:
    """Why `adapter` (default: the active one) cannot be merged exactly into `model`'s base weights, or None
    when it can."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return "not a PEFT model (nothing to merge)"
    adapter = adapter or model.active_adapter
    if quantization != "none":
        return f"the base is {quantization}-quantized: merging LoRA into it is not exact, so it runs unmerged"
    from peft.tuners.lora import LoraLayer

    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    found = False
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or not _has_adapter(module, adapter):
            continue
        found = True
        if adapter in getattr(module, "lora_variant", {}):
            return f"adapter {adapter!r} is not plain LoRA at {name} (DoRA): it runs unmerged"
        if counts.get(id(module.get_base_layer().weight), 0) > 1:
            return f"{name} shares its weight with another module (tied embeddings): it runs unmerged"
    return None if found else f"no LoRA adapter named {adapter!r} on this model"


def _has_adapter(module: nn.Module, name: str) -> bool:
    return name in getattr(module, "lora_A", {}) or name in getattr(module, "lora_embedding_A", {})


@contextlib.contextmanager
def lora_merged(model: nn.Module, adapter: str | None = None, quantization: str = "none",
                enabled: bool = True) -> Iterator[bool]:
    """Inside, `model` computes what it computes with `adapter` (default: the active one) active, from
    merged weights; yields whether it merged (False: see lora_merge_blocker; the model runs as it was).

    Other adapters on the same base are untouched; every adapter layer is switched off meanwhile (peft's
    disable_adapter), so the LoRA path is not added a second time. No gradients flow into the merged
    weights: use it for sampling and scoring, not training. Which parameters require grad is restored.
    """
    reason = lora_merge_blocker(model, adapter, quantization) if enabled else "off"
    if reason is not None:
        yield False
        return
    from peft.tuners.lora import LoraLayer

    adapter = adapter or model.active_adapter
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, LoraLayer) and _has_adapter(module, adapter):
                    weight = module.get_base_layer().weight
                    delta = module.get_delta_weight(adapter)
                    swapped.append((weight, weight.data))
                    weight.data = weight.data + delta.to(weight.dtype)
        with keep_trainable_set(model), model.disable_adapter():
            yield True
    finally:
        for weight, original in swapped:
            weight.data = original


@contextlib.contextmanager
def keep_trainable_set(model: nn.Module) -> Iterator[None]:
    """Restore every parameter's requires_grad on exit.

    peft's set_adapter makes the active adapter trainable and freezes the others, and leaving
    disable_adapter() re-runs it; which weights the optimizer trains must not depend on which role
    ran a forward last.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
