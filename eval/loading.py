"""Load the models eval runs, one copy of each base: policies and the reference take turns on it.

Policies and a reference that are LoRA adapters on the same base (e.g. ``@sft``, ``@ppo``) share ONE
copy of the base: the adapters are loaded side by side and switched (a plain base is the same weights
with adapters disabled). ``eval.model`` (`align.models.ModelSettings`: precision / quantization) applies to
every model eval loads, so a QLoRA recipe can evaluate in 4-bit.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.models import ModelSettings


def check_settings(settings: ModelSettings | None) -> None:
    """Fail before loading anything when the machine cannot honour eval.model."""
    import importlib.util

    from align.models import pick_precision

    if settings is None:
        return
    try:
        pick_precision(settings.precision)
    except AlignError as exc:
        raise AlignError(f"eval.model.precision: {exc}") from None
    if settings.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise AlignError(f"eval.model.quantization: {settings.quantization} loads the weights with bitsandbytes, "
                         "which is not installed (pip install bitsandbytes; without a CUDA GPU it needs a "
                         "bitsandbytes build with CPU support); or set eval.model.quantization: none")


@dataclass(frozen=True)
class ModelSpec:
    """A model eval runs, described without loading it."""

    ref: str  # as named (after @stage resolution)
    base: str  # the base weights (local dirs as absolute paths)
    adapter: str | None  # a LoRA adapter dir on that base; None = the base itself
    shareable: bool  # a plain model or a LoRA adapter: can ride on a shared copy of its base

    @property
    def group(self) -> tuple[str, str]:
        """Specs with the same group are served by one loaded model."""
        return ("base", self.base) if self.shareable else ("own", self.adapter or self.base)

    @property
    def identity(self) -> tuple[str, str | None]:
        return self.base, self.adapter


def describe_model(ref: str) -> ModelSpec:
    from align.models import resolve_model_ref

    resolved = resolve_model_ref(ref)
    adapter_cfg = Path(resolved) / "adapter_config.json"
    if adapter_cfg.exists():
        cfg = json.loads(adapter_cfg.read_text())
        return ModelSpec(ref, _norm_path(cfg["base_model_name_or_path"]), _norm_path(resolved),
                         cfg.get("peft_type") == "LORA")
    return ModelSpec(ref, _norm_path(resolved), None, True)


def _norm_path(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


@dataclass
class ModelView:
    """One model as eval sees it: a loaded model (possibly shared) + which adapter to run it with."""

    model: Any
    tokenizer: Any
    adapter: str | None = None  # PeftModel adapter to activate
    base_only: bool = False  # run the shared base with adapters disabled
    quantization: str = "none"  # of the loaded base: a LoRA merges into it only when not quantized

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """The model as this view computes it. An adapter runs merged into the base weights where that
        is exact (align.lora_merge: plain-``generate`` speed, weights put back after)."""
        from align.lora_merge import lora_merged

        if self.adapter is not None:
            self.model.set_adapter(self.adapter)
            with lora_merged(self.model, self.adapter, self.quantization):
                yield self.model
            return
        with self.model.disable_adapter() if self.base_only else contextlib.nullcontext():
            yield self.model


def for_each_policy(specs: dict[str, ModelSpec], reference: ModelSpec | None, settings: ModelSettings | None,
                    evaluate: Callable[[str, ModelView, ModelView | None], None]) -> int:
    """Call ``evaluate(name, policy, reference)`` for every policy, loading each base once; returns the loads.

    Policies are grouped by the model that serves them. The reference rides on its own base's group,
    which goes first; policies on other bases get one separate copy of it, loaded once and kept while
    they take turns. A policy that is the reference gets the very same view as ``reference``
    (``reference`` is None without one). A group's model is freed before the next group loads, so at
    most one group (plus that copy of the reference) is in memory; ``evaluate`` must not keep the views.
    """
    groups: dict[tuple, list[str]] = {}
    for name, spec in specs.items():
        groups.setdefault(spec.group, []).append(name)
    order = sorted(groups, key=lambda g: reference is None or g != reference.group)
    own_reference, loads = None, len(groups)
    for group in order:
        names = groups[group]
        with_ref = reference is not None and reference.group == group
        if reference is not None and not with_ref and own_reference is None:
            own_reference = load_views([reference], settings)[reference.identity]
            loads += 1
        views = load_views([specs[n] for n in names] + ([reference] if with_ref else []), settings)
        ref_view = views[reference.identity] if with_ref else own_reference
        for name in names:
            evaluate(name, views[specs[name].identity], ref_view)
        del views, ref_view
        free_memory()
    del own_reference
    free_memory()
    return loads


def load_views(specs: list[ModelSpec], settings: ModelSettings | None) -> dict[tuple, ModelView]:
    """Load the models of one group: a plain model, or ONE base with every LoRA adapter of the group on it.

    Returns a view per spec identity (base, adapter). A spec that is the base itself runs with adapters
    disabled; an adapter is activated by name before each use.
    """
    from align.models import load_causal_lm, load_tokenizer

    unique = list({s.identity: s for s in specs}.values())
    adapters = [s for s in unique if s.adapter is not None]
    first = adapters[0] if adapters else unique[0]
    model = _loading(first.ref, settings, lambda: load_causal_lm(_model_config(first.ref, settings)))
    model.eval()
    names = {}
    for i, spec in enumerate(adapters):
        names[spec.identity] = "default" if i == 0 else f"eval_{i}"
        if i > 0:  # peft: a second LoRA on the same base weights, switched with set_adapter
            model.load_adapter(spec.adapter, adapter_name=names[spec.identity], is_trainable=False)
    views = {}
    for spec in unique:
        tokenizer = load_tokenizer(spec.ref)
        tokenizer.padding_side = "left"
        views[spec.identity] = ModelView(model, tokenizer, adapter=names.get(spec.identity),
                                         base_only=bool(adapters) and spec.adapter is None,
                                         quantization=settings.quantization if settings else "none")
    return views


def load_reward(path: str, settings: ModelSettings | None):
    """The reward model: as trained (align.preferences.reward_model.load_reward_model) unless eval.model says
    how."""
    from align.preferences.reward_model import load_reward_model

    if settings is None:
        return load_reward_model(path)
    from align.models import load_sequence_classifier
    from align.preferences.reward_model import read_saved_reward_model

    saved = read_saved_reward_model(path)
    folder = str(saved.folder)
    tokenizer = saved.tokenizer()
    # name = the folder: align.models loads an adapter on its base (quantized as asked), a full model as is
    model = _loading(folder, settings,
                     lambda: load_sequence_classifier(_model_config(folder, settings), num_labels=1))
    return saved.wrap(model, tokenizer)


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _model_config(ref: str, settings: ModelSettings | None):
    from align.models import ModelConfig

    return ModelConfig(name=ref, **(settings.model_dump() if settings else {}))


def _loading(what: str, settings: ModelSettings | None, load):
    """Run a loader; bitsandbytes/transformers errors of a quantized load name the recipe key."""
    try:
        return load()
    except (ImportError, RuntimeError, ValueError) as exc:
        if settings is None or settings.quantization == "none":
            raise
        raise AlignError(f"eval.model.quantization: {settings.quantization}: loading {what} failed: {exc}. "
                         "Use quantization: none, or a bitsandbytes build that supports this device.") from exc
