"""Memory arithmetic: pure functions of a model's architecture and a few numbers.

Weights by dtype and bitsandbytes quantization, adapter and full-model trainable tensors, optimizer
state, the KV cache and generation buffers. Nothing here reads a recipe: the stage estimators
(`align.plan.training_stages`, `align.plan.generation_stages`) pass in what the settings say.
docs/memory.md derives each formula.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from align.errors import AlignError
from align.model_configs import LINEAR_NAMES, Arch
from align.models import AdapterConfig
from align.plan.settings import as_adapter

KIB, MIB, GIB = 1024, 1024**2, 1024**3
CUDA_OVERHEAD = 512 * MIB  # allocator fragmentation, cuBLAS workspaces, small buffers (not the CUDA context)
# TRL >= 1.x scores the LM head in tiles (trl/kernels/chunked_logprob.py); full logits are never built.
TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK = 4096, 32768


@dataclass(frozen=True)
class Term:
    """One named amount of memory. `phase` "resident" lasts the whole stage; other phases take turns."""

    name: str
    bytes: float
    phase: str = "resident"
    note: str = ""


# --------------------------------------------------------------------------- precision


@dataclass(frozen=True)
class Dtypes:
    weight: int  # bytes per base weight (non-quantized)
    act: int  # bytes per activation element
    label: str


def dtypes_for(device: str, precision: str) -> Dtypes:
    """Mirror `align.models.pick_precision`: auto = bf16 on a GPU, fp32 on CPU."""
    if device == "cuda":
        if precision in ("auto", "bf16", "fp16"):
            return Dtypes(2, 2, "bf16" if precision != "fp16" else "fp16")
        return Dtypes(4, 4, "fp32")
    if precision == "fp16":
        raise AlignError("precision fp16 needs a CUDA GPU; plan with --device cuda, or use fp32/bf16 on CPU")
    # CPU bf16 = fp32 weights + bf16 autocast; activations are counted as fp32 (an upper bound).
    return Dtypes(4, 4, "fp32" if precision != "bf16" else "fp32+bf16-autocast")


# --------------------------------------------------------------------------- weights


def quantized_linear_bytes(numel: int, rows: int, quantization: str) -> float:
    """Bytes of one bitsandbytes-quantized weight matrix of `numel` elements and `rows` output rows.

    8bit (LLM.int8): 1 B/weight + an fp32 scale per output row; outliers are split off at matmul
    time, not stored. 4bit (NF4, double quant): 0.5 B/weight + absmax per 64-weight block, itself
    quantized to 8 bit with an fp32 absmax per 256 blocks, + two 256-entry fp32 code tables.
    """
    if quantization == "8bit":
        return numel + 4 * rows
    if quantization == "4bit":
        blocks = math.ceil(numel / 64)
        return numel / 2 + blocks + 4 * math.ceil(blocks / 256) + 2 * 256 * 4
    raise AlignError(f"unknown quantization {quantization!r}; expected none, 8bit or 4bit")


def base_weight_bytes(arch: Arch, weight_bytes: int, quantization: str) -> float:
    """All base weights. bitsandbytes quantizes only the blocks' nn.Linear layers: embeddings,
    lm_head and norms stay in the compute dtype."""
    other = arch.embedding_params() + arch.lm_head_params() + arch.norm_params()
    other += arch.num_layers * arch.bias_params_per_layer()
    if quantization == "none":
        return (other + arch.num_layers * arch.linear_params_per_layer()) * weight_bytes
    per_layer = sum(quantized_linear_bytes(a * b, b, quantization) for a, b in arch.linear_shapes().values())
    return other * weight_bytes + arch.num_layers * per_layer


# --------------------------------------------------------------------------- trainable parameters


@dataclass(frozen=True)
class Tensors:
    """`count` tensors of `numel` elements each (what optimizer-state rules need)."""

    numel: int
    count: int
    rows: int = 0  # for factored optimizers (Adafactor); 0 = 1-D


def lora_targets(arch: Arch, target_modules: str | list[str] | tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """{module: (in, out, how many)} of the modules an adapter wraps (peft semantics)."""
    shapes = {name: (*shape, arch.num_layers) for name, shape in arch.linear_shapes().items()}
    shapes["lm_head"] = (arch.hidden_size, arch.vocab_size, 1)
    if target_modules == "all-linear":
        return {n: shapes[n] for n in LINEAR_NAMES}
    if isinstance(target_modules, str):  # peft: a string is a regex over full module names
        full = {n: f"model.layers.0.{'self_attn' if n in LINEAR_NAMES[:4] else 'mlp'}.{n}" for n in LINEAR_NAMES}
        full["lm_head"] = "lm_head"
        found = {n: shapes[n] for n, path in full.items() if re.fullmatch(target_modules, path)}
    else:
        found = {}
        for item in target_modules:
            short = item.split(".")[-1]
            if short not in shapes:
                raise AlignError(f"adapter.target_modules: {item!r} is not a linear layer of a Llama-style model; "
                                 f"known: all-linear, {', '.join(shapes)}")
            found[short] = shapes[short]
    if not found:
        raise AlignError(f"adapter.target_modules {target_modules!r} matches no layer of a Llama-style model")
    return found


def full_tensors(arch: Arch) -> list[Tensors]:
    h, L = arch.hidden_size, arch.num_layers
    out = [Tensors(a * b, L, rows=b) for a, b in arch.linear_shapes().values()]
    out += [Tensors(h, 2 * L + 1), Tensors(arch.vocab_size * h, 1 if arch.tie_embeddings else 2, rows=arch.vocab_size)]
    if arch.qkv_bias:
        out += [Tensors(arch.q_dim, L), Tensors(arch.kv_dim, 2 * L)]
    return out


def adapter_tensors(arch: Arch, adapter: AdapterConfig | dict[str, Any]) -> list[Tensors]:
    """Trainable tensors of an adapter (LoRA A r×in and B out×r per wrapped module; DoRA adds a magnitude)."""
    adapter = as_adapter(adapter)
    kind = adapter.type
    if kind == "full":
        return full_tensors(arch)
    if kind in ("lora", "dora"):
        r = adapter.r
        out: list[Tensors] = []
        top = adapter.top_layers
        for fan_in, fan_out, count in lora_targets(arch, adapter.target_modules).values():
            if top and count == arch.num_layers:  # top_layers: only the last N blocks carry adapters
                count = min(count, top)
            out += [Tensors(r * fan_in, count, rows=r), Tensors(fan_out * r, count, rows=fan_out)]
            if kind == "dora":
                out.append(Tensors(fan_out, count))
        return out
    tokens = adapter.num_virtual_tokens
    if kind == "prefix":  # a key and a value per layer per virtual token
        return [Tensors(tokens * arch.num_layers * 2 * arch.kv_dim, 1, rows=tokens)]
    return [Tensors(tokens * arch.hidden_size, 1, rows=tokens)]  # prompt tuning


def numel(tensors: list[Tensors]) -> int:
    return sum(t.numel * t.count for t in tensors)


def optimizer_bytes(optim: str, tensors: list[Tensors], param_bytes: int, device: str) -> tuple[float, float, str]:
    """(state bytes, optimizer-step temporaries, note) for a transformers `optim` name.

    torch optimizers keep their state in the parameter dtype; bitsandbytes keeps 32-bit state in
    fp32 and 8-bit state as 1 B + an fp32 absmax per 256-value block (tensors under 4096 values
    stay 32-bit). torch's foreach AdamW (the GPU default) allocates one state-sized temporary in
    step(); on CPU it updates one tensor at a time.
    """
    name = optim.lower()
    note = ""
    if "lion" in name or name.startswith(("sgd", "rmsprop", "adagrad")):
        states = 0 if name.startswith("sgd") else 1
    elif "adafactor" in name:
        states = -1
    elif "ademamix" in name:
        states = 3
    else:
        states = 2
        if not name.startswith(("adamw", "adam", "paged_adam")):
            note = f"optim {optim!r} estimated as AdamW"
    bnb = "8bit" in name or "bnb" in name or name.startswith("paged") or name in ("lion_32bit",)
    if "paged" in name:
        note = "paged: counted on the GPU; under pressure it spills to CPU RAM instead of failing"
    total = 0.0
    for t in tensors:
        n = t.numel * t.count
        if states == -1:  # Adafactor: a row and a column second-moment vector per matrix
            total += 4 * (t.rows + t.numel // max(t.rows, 1)) * t.count if t.rows else 4 * n
        elif "8bit" in name and t.numel >= 4096:
            total += states * n * (1 + 4 / 256)
        elif "4bit" in name and t.numel >= 4096:
            total += states * n * (0.5 + 4 / 128)
        else:
            total += states * n * (4 if bnb else param_bytes)
    biggest = max((t.numel for t in tensors), default=0)
    if bnb or "fused" in name or states <= 0:
        step = 0.0
    elif device == "cuda":
        step = numel(tensors) * param_bytes
    else:
        step = 2 * biggest * param_bytes
    return total, step, note


def weights_term(a: Arch, d: Dtypes, quantization: str, prefix: str = "", head: str = "lm",
                 upcast: bool = False) -> Term:
    """Base weights; a classifier (reward model) has a scalar head instead of lm_head. `upcast`: the
    non-quantized weights in fp32 (peft's prepare_model_for_kbit_training)."""
    label = {"none": d.label, "8bit": "int8", "4bit": "NF4+double quant"}[quantization]
    if head == "classifier" and not a.tie_embeddings:
        a = replace(a, tie_embeddings=True)  # no separate vocab matrix (the score head is tiny)
    other_bytes = 4 if upcast and quantization != "none" else d.weight
    note = f"{a.total_params() / 1e6:,.1f}M params"
    if quantization != "none":
        note += f"; embeddings/{'score' if head == 'classifier' else 'lm_head'}/norms in "
        note += "fp32" if upcast else d.label
    total = base_weight_bytes(a, d.weight, quantization)
    if other_bytes != d.weight:
        other = a.embedding_params() + a.lm_head_params() + a.norm_params() + a.num_layers * a.bias_params_per_layer()
        total += other * (other_bytes - d.weight)
    return Term(f"{prefix}weights ({label})", total, note=note)


def overhead_term(device: str) -> list[Term]:
    if device != "cuda":
        return []
    return [Term("framework overhead", CUDA_OVERHEAD, note="allocator slack, cuBLAS workspaces; CUDA context "
                 "(~0.3-0.6 GiB more in nvidia-smi) not counted")]


# --------------------------------------------------------------------------- weights of a loaded model, generation


def kv_cache_bytes(arch: Arch, batch: int, tokens: int, act_bytes: int) -> float:
    """2 (key and value) x layers x kv_heads x head_dim x tokens x batch x bytes."""
    return 2 * arch.num_layers * arch.num_kv_heads * arch.hd * tokens * batch * act_bytes


def generation_terms(arch: Arch, d: Dtypes, batch: int, prompt_len: int, new_tokens: int, phase: str,
                     prefix: str = "") -> list[Term]:
    """KV cache at full length, plus the prefill's biggest per-layer intermediates and one layer's cache
    growth (transformers' DynamicCache grows by torch.cat, briefly holding old and new)."""
    tokens = prompt_len + new_tokens
    kv = kv_cache_bytes(arch, batch, tokens, d.act)
    prefill = batch * prompt_len * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
    sampling = 3 * batch * arch.vocab_size * 4
    return [Term(f"{prefix}KV cache", kv, phase, f"batch {batch} x {tokens} tokens"),
            Term(f"{prefix}prefill + sampling buffers", prefill + sampling + kv / arch.num_layers, phase)]

