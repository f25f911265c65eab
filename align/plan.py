"""`align plan`: peak accelerator memory per recipe stage, before anything is downloaded or run.

The estimate is arithmetic on the model's config (`align.model_configs`) and the recipe's
settings. Every figure is a list of named terms; docs/memory.md derives each formula and records
how the estimate compares with measured peaks. In short, for a stage that trains:

    peak = weights + adapter + optimizer state [+ gradients when accumulating]
           + max(forward/backward: activations + loss-head buffers,
                 optimizer step: gradients + optimizer temporaries)
           + framework overhead (CUDA; the CUDA context itself is not counted)

Activations follow what PyTorch saves for backward in a transformers Llama block (checked
tensor-by-tensor with `torch.autograd.graph.saved_tensors_hooks`, see
tests/integration/test_plan_measured_saved.py). Generation adds the KV cache
``2 * layers * kv_heads * head_dim * tokens * batch * bytes``; PPO adds the reference, value and
reward roles, shared on one base or as separate copies, and takes the largest of its phases.

align's own stages (sft, reward, ppo, rank, eval, self_instruct) are read by their fields; any other
section is handled by what it holds (model roles, ``adapter``, ``train``, generation settings). The
keys read are listed in docs/memory.md. ``device="cpu"`` estimates the RAM a CPU run adds (what
the tests measure).

The reward stage's batch element is one prompt with all K of its responses: K is ``rank.k`` only
when ``reward.data`` is ``@rank``; a local rankings/pairs file is read for its largest prompt group;
anything else (a hub dataset) is taken as pairs, K = 2, unless the caller passes ``reward_k``.
The eval stage follows ``eval.model`` (precision, quantization) for every model it loads, one copy
of each base for the LoRA policies and reference on it, and its KL sampling (``kl_samples``,
``kl_batch_size``).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.model_configs import LINEAR_NAMES, Arch, arch_for

KIB, MIB, GIB = 1024, 1024**2, 1024**3
CUDA_OVERHEAD = 512 * MIB  # allocator fragmentation, cuBLAS workspaces, small buffers (not the CUDA context)
ROLE_KEYS = ("model", "policy", "ref_policy", "value_model", "reward_model", "teacher", "judge")
REMOTE_BACKENDS = ("openai", "api", "http", "remote", "server")
# TRL >= 1.x scores the LM head in tiles (trl/kernels/chunked_logprob.py); full logits are never built.
TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK = 4096, 32768
PROMPT_GUESS = 256  # prompt tokens assumed where a stage has no prompt-length setting
DEFAULT_REWARD_K = 2  # responses per prompt in reward data the planner cannot read: preference pairs


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class Term:
    """One named amount of memory. `phase` "resident" lasts the whole stage; other phases take turns."""

    name: str
    bytes: float
    phase: str = "resident"
    note: str = ""


@dataclass
class Suggestion:
    """A change to the recipe and the estimate with it applied."""

    label: str
    overrides: list[str]
    total: float
    fits: bool


@dataclass
class StageEstimate:
    stage: str
    kind: str  # training | ppo | generation | none
    terms: list[Term]
    notes: list[str] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    knobs: dict[str, Any] = field(default_factory=dict)  # setting -> dotted path in the section (for suggestions)

    def phase_totals(self) -> dict[str, float]:
        phases: dict[str, float] = {}
        for t in self.terms:
            if t.phase != "resident":
                phases[t.phase] = phases.get(t.phase, 0.0) + t.bytes
        return phases

    @property
    def peak_phase(self) -> str | None:
        phases = self.phase_totals()
        return max(phases, key=phases.get) if phases else None

    @property
    def total(self) -> float:
        resident = sum(t.bytes for t in self.terms if t.phase == "resident")
        return resident + max(self.phase_totals().values(), default=0.0)

    def term(self, name: str) -> float:
        """Bytes of the first term whose name starts with `name` (0 if none): handy in tests."""
        return next((t.bytes for t in self.terms if t.name.startswith(name)), 0.0)


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


def adapter_tensors(arch: Arch, adapter: dict[str, Any]) -> list[Tensors]:
    """Trainable tensors of an adapter (LoRA A r×in and B out×r per wrapped module; DoRA adds a magnitude)."""
    kind = adapter.get("type", "lora")
    if kind == "full":
        return full_tensors(arch)
    if kind in ("lora", "dora"):
        r = int(adapter.get("r", 16))
        out: list[Tensors] = []
        top = adapter.get("top_layers")
        for fan_in, fan_out, count in lora_targets(arch, adapter.get("target_modules", "all-linear")).values():
            if top and count == arch.num_layers:  # top_layers: only the last N blocks carry adapters
                count = min(count, int(top))
            out += [Tensors(r * fan_in, count, rows=r), Tensors(fan_out * r, count, rows=fan_out)]
            if kind == "dora":
                out.append(Tensors(fan_out, count))
        return out
    tokens = int(adapter.get("num_virtual_tokens", 16))
    if kind == "prefix":  # a key and a value per layer per virtual token
        return [Tensors(tokens * arch.num_layers * 2 * arch.kv_dim, 1, rows=tokens)]
    if kind == "prompt":
        return [Tensors(tokens * arch.hidden_size, 1, rows=tokens)]
    raise AlignError(f"adapter.type {kind!r}: expected lora, dora, prefix, prompt or full")


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


# --------------------------------------------------------------------------- one trainable role


@dataclass(frozen=True)
class TrainSetup:
    """Everything the estimate of one trained model depends on; suggestions `replace()` fields."""

    arch: Arch
    device: str = "cuda"
    precision: str = "auto"
    quantization: str = "none"
    adapter: dict[str, Any] = field(default_factory=lambda: {"type": "lora", "r": 16, "dropout": 0.05,
                                                              "target_modules": "all-linear"})
    batch_size: int = 4
    seq_len: int = 512
    grad_accum: int = 1
    checkpointing: bool = False
    optim: str = "adamw_torch"
    attn: str = "sdpa"
    padded: bool = True  # batches padded to the longest row (an attention mask; GQA keys repeated)
    head: str = "lm-fused"  # lm-fused (TRL tiles) | lm-full (full logits + log-softmax) | classifier
    seqs_per_example: int = 1  # reward models score all responses of a prompt together
    trainer: str = "trl"  # trl: LoRA weights cast to bf16 on quantized bases; own: peft's fp32 adapters
    upcast_non_quantized: bool = False  # prepare_model_for_kbit_training: embeddings/norms in fp32
    head_tokens: int = 0  # positions the loss head scores per sequence (0: all); PPO scores responses only

    @property
    def dtypes(self) -> Dtypes:
        return dtypes_for(self.device, self.precision)

    @property
    def full(self) -> bool:
        return self.adapter.get("type") == "full"

    @property
    def tokens(self) -> int:
        extra = int(self.adapter.get("num_virtual_tokens", 16)) if self.adapter.get("type") in ("prefix", "prompt") else 0
        return self.batch_size * self.seqs_per_example * (self.seq_len + extra)

    def adapter_param_bytes(self) -> int:
        """peft upcasts adapters to fp32; TRL casts them to bf16 on quantized bases; full FT uses the weight dtype."""
        if self.full:
            return self.dtypes.weight
        if self.quantization != "none" and self.trainer == "trl":
            return 2
        return 4

    def lora_path(self) -> tuple[int, bool]:
        """(bytes of the LoRA branch's activations, whether each wrapped layer keeps its own input copy).

        peft casts a layer's input to the adapter dtype, and autocast casts it again for the matmul:
        unless both match the activation dtype, every wrapped layer saves a private copy.
        """
        act, lora = self.dtypes.act, self.adapter_param_bytes()
        if self.device == "cuda" and act == 2:  # bf16 autocast: the LoRA matmul runs in bf16
            return 2, lora != 2
        return lora, lora != act


def layer_activation_bytes(s: TrainSetup, seq: int) -> float:
    """Bytes saved for backward per token by one decoder layer (no checkpointing).

    RMSNorm: an fp32 copy of its input (4h) + the normalized value if the norm weight trains (e·h);
    norm outputs (e·h) if a trained consumer keeps them; attention: rotated q, k, v (repeated to
    all heads when a padding mask forces repeat_kv), the output, fp32 log-sum-exp per head, and the
    padding mask expanded per layer (e·seq); MLP: gate, silu(gate), up (3·e·i) + their product
    (e·i) if down_proj's consumer keeps it; LoRA: r per wrapped layer + its input copy (and the
    dropout mask: 1 B on CUDA, a float on CPU) when it needs one.
    """
    a, e = s.arch, s.dtypes.act
    h, q, kv, i, nh = a.hidden_size, a.q_dim, a.kv_dim, a.intermediate_size, a.num_heads
    targets = lora_targets(a, s.adapter.get("target_modules", "all-linear")) if s.adapter.get("type") in (
        "lora", "dora") else {}
    targets.pop("lm_head", None)
    e_lora, copies = s.lora_path()
    dropout = bool(targets) and float(s.adapter.get("dropout", 0.0)) > 0
    shared = bool(targets) and not copies and not dropout
    total = 2 * (4 * h + (e * h if s.full else 0) + 4)
    total += e * h * (bool(s.full or (shared and targets.keys() & {"q_proj", "k_proj", "v_proj"}))
                      + bool(s.full or (shared and targets.keys() & {"gate_proj", "up_proj"})))
    repeat = kv != q and (s.padded or s.attn == "eager")
    total += e * (q + (2 * q if repeat else 2 * kv) + q)
    if s.attn == "eager":
        total += nh * seq * (4 + (e if e != 4 else 0))  # softmax in fp32 + its cast back
    else:
        total += 4 * nh + (e * seq if s.padded else 0)
    total += e * 3 * i + (e * i if s.full or (shared and "down_proj" in targets) else 0)
    mask_bytes = 1 if s.device == "cuda" else e_lora  # CUDA saves a bool dropout mask; CPU a scaled float noise
    for fan_in, _, _ in targets.values():
        total += e_lora * int(s.adapter.get("r", 16))
        if copies or dropout:
            total += e_lora * fan_in + (mask_bytes * fan_in if dropout else 0)
    return total


def autocast_weight_copies(s: TrainSetup) -> float:
    """bf16 copies of fp32 LoRA weights that autocast makes in the forward and autograd keeps for backward."""
    e_lora, _ = s.lora_path()
    if s.full or s.adapter.get("type") not in ("lora", "dora") or e_lora == s.adapter_param_bytes():
        return 0.0
    return numel(adapter_tensors(s.arch, s.adapter)) * e_lora


def activation_terms(s: TrainSetup) -> list[Term]:
    a, e, L = s.arch, s.dtypes.act, s.arch.num_layers
    top = s.adapter.get("top_layers") if not s.full and s.adapter.get("type", "lora") in ("lora", "dora") else None
    if top:  # frozen blocks below the lowest adapter keep nothing for backward
        L = min(L, int(top))
    seq = s.tokens // (s.batch_size * s.seqs_per_example)
    T = s.tokens
    layer = layer_activation_bytes(s, seq)
    final = 4 * a.hidden_size + (e * a.hidden_size if s.full else 0)  # final norm
    if s.head in ("lm-fused", "classifier") or s.full:
        final += e * a.hidden_size  # the head keeps its input (a copy in TRL's tiled head)
    final += (8 if s.full else 0) + (seq if s.padded else 0)  # token ids, boolean causal mask
    phase = "forward/backward"
    copies = autocast_weight_copies(s)
    extra = [Term("bf16 copies of LoRA weights", copies, phase, "autocast casts, kept for backward")] if copies else []
    if not s.checkpointing:
        return [Term("activations", T * (L * layer + final), phase,
                     f"{L} layers x {layer / KIB:.1f} KiB/token x {T} tokens")] + extra
    return [Term("activations (checkpointed layer inputs)", T * (L * e * a.hidden_size + final), phase,
                 f"{L} layers x {e * a.hidden_size / KIB:.1f} KiB/token x {T} tokens"),
            Term("activations (one layer recomputed)", T * layer, phase, "backward re-runs one block at a time")] + extra


def head_term(s: TrainSetup) -> Term:
    """The loss head's largest moment: the start of backward, with every activation still alive."""
    a, e, T = s.arch, s.dtypes.act, s.tokens
    h, V = a.hidden_size, a.vocab_size
    phase = "forward/backward"
    if s.head == "classifier":
        return Term("scores (classifier head)", T * 4, phase, "one score per token; no vocabulary logits")
    if s.head == "lm-full":
        per = e + (4 if e != 4 else 0) + 12
        return Term("logits (loss)", T * V * per, phase,
                    f"batch x seq x vocab: logits ({e} B), fp32 copy, log-softmax and its gradients ({per} B/entry)")
    if s.head == "ppo":  # align.rl: log-probs and entropy row by row in fp32, both kept for backward
        rows = s.batch_size * (s.head_tokens or s.seq_len)
        per = e + 25
        return Term("logits (policy loss)", rows * V * per, phase,
                    f"{rows} response positions x vocab: logits, fp32 log-probs + entropy terms ({per} B/entry)")
    n = min(T, TRL_TOKEN_CHUNK)
    head_trains = s.full
    grads = 4 * T * h + e * T * h + (4 * V * h + e * V * h if head_trains else 0)
    if s.device == "cuda":
        tile = n * TRL_VOCAB_CHUNK * e
        note = f"TRL tiled LM head: {n} x {TRL_VOCAB_CHUNK} tile, fp32 grad accumulators; full logits never built"
    else:  # torch fallback: the tile + ~8 fp32 temporaries of it (y, z, log_p, p, grad, ...); RSS counts touched pages
        tile = n * min(V, TRL_VOCAB_CHUNK) * (e + 33)
        note = f"TRL tiled LM head, CPU fallback: {n} x {min(V, TRL_VOCAB_CHUNK)} tile and its temporaries"
    return Term("logits (loss, tiled)", tile + grads, phase, note)


def training_terms(s: TrainSetup, prefix: str = "", with_weights: bool = True) -> list[Term]:
    """Terms of one trained model; `prefix` names the role (PPO has two)."""
    d = s.dtypes
    a = s.arch
    terms: list[Term] = []
    if with_weights:
        terms.append(weights_term(a, d, s.quantization, prefix, "classifier" if s.head == "classifier" else "lm",
                                  s.upcast_non_quantized))
    trainable = adapter_tensors(a, s.adapter)
    p_bytes = s.adapter_param_bytes()
    n = numel(trainable)
    kind = s.adapter.get("type", "lora")
    if not s.full:
        terms.append(Term(f"{prefix}adapter ({kind})", n * p_bytes, note=f"{n:,} params x {p_bytes} B"))
    states, step, note = optimizer_bytes(s.optim, trainable, p_bytes, s.device)
    terms.append(Term(f"{prefix}optimizer state ({s.optim})", states, note=note or f"{n:,} trainable params"))
    grads = Term(f"{prefix}gradients", n * p_bytes, "resident" if s.grad_accum > 1 else "optimizer step",
                 "kept across micro-batches" if s.grad_accum > 1 else "freed after each step (set_to_none)")
    terms.append(grads)
    if step:
        terms.append(Term(f"{prefix}optimizer step temporaries", step, "optimizer step"))
    for t in activation_terms(s) + [head_term(s)]:
        terms.append(replace(t, name=prefix + t.name))
    if s.quantization != "none":
        biggest = max(x * y for x, y in a.linear_shapes().values())
        terms.append(Term(f"{prefix}dequantized weight (one layer)", biggest * d.act * 2, "forward/backward",
                          "bitsandbytes dequantizes one weight at a time for the matmul"))
    return terms


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


# --------------------------------------------------------------------------- generation


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


# --------------------------------------------------------------------------- recipe walking


@dataclass(frozen=True)
class Role:
    """A model a stage section names: where its settings sit and what they say."""

    key: str
    path: str  # dotted path of the model config inside the section
    name: str
    precision: str = "auto"
    quantization: str = "none"
    attn: str | None = None
    remote: bool = False


def find_roles(section: dict[str, Any]) -> list[Role]:
    roles = []
    for key in ROLE_KEYS:
        value = section.get(key)
        path = key
        remote = False
        if isinstance(value, dict) and "name" not in value and "model" in value:
            backend = str(value.get("backend") or value.get("type") or "").lower()
            remote = any(b in backend for b in REMOTE_BACKENDS) or "base_url" in value or "url" in value
            path, value = f"{key}.model", value["model"]
        if isinstance(value, str):
            roles.append(Role(key, path, value, remote=remote))
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            backend = str(value.get("backend", "")).lower()
            roles.append(Role(key, path, value["name"], value.get("precision", "auto") or "auto",
                              value.get("quantization", "none") or "none", value.get("attn_implementation"),
                              remote or any(b in backend for b in REMOTE_BACKENDS)))
    return roles


def lookup(section: dict[str, Any], *keys: str, default: Any = None, within: tuple[str, ...] = ("", "generation",
                                                                                                  "train")) -> tuple:
    """(value, dotted path) of the first of `keys` found in the section or its sub-sections."""
    for sub in within:
        node = section.get(sub) if sub else section
        if isinstance(node, dict):
            for k in keys:
                if node.get(k) is not None:
                    return node[k], f"{sub}.{k}" if sub else k
    return default, f"{within[-1]}.{keys[0]}" if within[-1] else keys[0]


def get_path(node: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(node, str) and part != "name":
            return None
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_path(section: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = section
    for part in parts[:-1]:
        child = node.get(part)
        if isinstance(child, str):  # a model given as a plain reference
            child = {"name": child}
        if not isinstance(child, dict):
            child = {}
        node[part] = child
        node = child
    node[parts[-1]] = value


class Planner:
    """Estimates every stage of one recipe (a dict: `recipe.model_dump()`) for one device."""

    def __init__(self, recipe: dict[str, Any], device: str = "cuda", reward_k: int | None = None):
        if device not in ("cuda", "cpu"):
            raise AlignError(f"device {device!r}: expected cuda or cpu")
        if reward_k is not None and reward_k < 2:
            raise AlignError(f"reward K {reward_k}: a prompt needs at least 2 responses to rank")
        self.recipe = recipe
        self.device = device
        self.reward_k = reward_k  # explicit responses per prompt for the reward stage (else see reward_group_size)
        self._archs: dict[str, tuple[Arch, dict | None]] = {}
        self._group_sizes: dict[tuple, tuple[int, str]] = {}

    # ----- models

    def resolve(self, name: str, stack: tuple[str, ...] = ()) -> tuple[Arch, dict[str, Any] | None]:
        """Architecture of a model reference + the adapter it carries (an `@stage` output or adapter dir)."""
        if not name.startswith("@"):
            if name not in self._archs:
                arch, peft_cfg = arch_for(name)
                self._archs[name] = (arch, _adapter_from_peft(peft_cfg) if peft_cfg else None)
            return self._archs[name]
        stage, _, output = name[1:].partition(".")
        section = self.recipe.get(stage)
        if not isinstance(section, dict) or stage in stack:
            raise AlignError(f"model {name!r}: the recipe has no stage {stage!r} to take a model from")
        roles = [r for r in find_roles(section) if r.key in ("model", "policy")]
        if not roles:
            raise AlignError(f"model {name!r}: stage {stage!r} produces no model (it names no model or policy)")
        arch, upstream = self.resolve(roles[0].name, stack + (stage,))
        if stage == "ppo" and upstream and output != "merged":
            return arch, upstream  # align.ppo trains the policy's own adapter further (its `adapter` is unused)
        adapter = section.get("adapter") or {}
        if (stage == "dpo" and upstream and (section.get("start") or "continue") == "continue"
                and adapter.get("type") != "full"):
            return arch, upstream  # dpo start: continue trains the policy's own adapter further
        if output == "merged" or not adapter or adapter.get("type") == "full":
            return arch, None
        return arch, adapter

    # ----- stages

    def stage(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """Dispatch on the stage's name when align knows it, else on what the section holds."""
        handler = {"sft": self.sft, "reward": self.reward, "ppo": self.ppo, "rank": self.rank,
                   "eval": self.eval, "self_instruct": self.self_instruct, "dpo": self.dpo}.get(name)
        if handler is not None:
            return handler(name, section)
        roles = [r for r in find_roles(section) if not r.remote]
        if not roles:
            return StageEstimate(name, "none", [], ["no local model: nothing on the accelerator"])
        trainable = [r for r in roles if r.key in ("model", "policy")]
        if "train" in section and trainable:
            return self.training(name, section, trainable[0], head="lm-full", trainer="own")
        return self.generation(name, section, roles)

    # ----- training stages

    def train_setup(self, section: dict[str, Any], role: Role, **fields: Any) -> tuple[TrainSetup, list[Term], list[str]]:
        arch, upstream = self.resolve(role.name)
        train = section.get("train") or {}
        adapter = dict(section.get("adapter") or {"type": "lora", "r": 16, "dropout": 0.05,
                                                   "target_modules": "all-linear"})
        setup = TrainSetup(
            arch=arch, device=self.device, precision=role.precision, quantization=role.quantization, adapter=adapter,
            batch_size=int(train.get("batch_size", 4)), seq_len=int(train.get("max_length", 512)),
            grad_accum=int(train.get("grad_accum", 1)), checkpointing=bool(train.get("gradient_checkpointing")),
            optim=str(train.get("optim", "adamw_torch")), attn=role.attn or "sdpa",
            padded=not section.get("packing", False), **fields,
        )
        extra: list[Term] = []
        notes = [f"{role.key}: {arch.name} ({arch.source}); {setup.dtypes.label}; "
                 f"{setup.batch_size * setup.seqs_per_example} sequences x {setup.seq_len} tokens per micro-batch "
                 "(padded to max length: the worst case)"]
        notes += list(arch.notes)
        if upstream and adapter.get("type") != "full":
            up = numel(adapter_tensors(arch, upstream))
            extra.append(Term("upstream adapter (merged in)", up * setup.dtypes.weight,
                              note=f"{role.name}: {up:,} params folded into the base"))
        return setup, extra, notes

    def training(self, name: str, section: dict[str, Any], role: Role, **fields: Any) -> StageEstimate:
        setup, extra, notes = self.train_setup(section, role, **fields)
        terms = training_terms(setup) + extra + overhead_term(self.device)
        knobs = {"quantization": f"{role.path}.quantization", "adapter": "adapter",
                 "batch_size": "train.batch_size", "grad_accum": "train.grad_accum",
                 "max_length": "train.max_length", "checkpointing": "train.gradient_checkpointing",
                 "optim": "train.optim"}
        return StageEstimate(name, "training", terms, notes, knobs=knobs)

    def sft(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """TRL's SFTTrainer: LoRA weights in bf16 on quantized bases, the tiled LM head when TRL has it."""
        role = next(r for r in find_roles(section) if r.key == "model")
        return self.training(name, section, role, head="lm-fused" if _trl_tiled_head() else "lm-full",
                             trainer="trl")

    def reward(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """transformers.Trainer over prompt groups: all K responses of a prompt in one forward, a scalar head;
        peft's prepare_model_for_kbit_training upcasts the non-quantized weights to fp32."""
        role = next(r for r in find_roles(section) if r.key == "model")
        k, why = self.reward_group_size(section)
        est = self.training(name, section, role, head="classifier", seqs_per_example=k, trainer="own",
                            upcast_non_quantized=role.quantization != "none")
        est.notes.append(f"{k} responses per prompt ({why}); train.batch_size counts prompts")
        return est

    def dpo(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """TRL's DPO/KTO/ORPO/CPO trainers: chosen and rejected of a pair in one forward (2 sequences per
        pair; KTO 1 per example), the tiled LM head. The reference shares the base: a frozen copy of the
        continued adapter, or the base with adapters disabled; only full fine-tuning without precomputed
        reference log-probs holds a second copy of the weights."""
        role = next(r for r in find_roles(section) if r.key == "model")
        arch, upstream = self.resolve(role.name)
        method = section.get("method") or "dpo"
        adapter = section.get("adapter") or {}
        full = adapter.get("type") == "full"
        continued = upstream is not None and (section.get("start") or "continue") == "continue" and not full
        sub = dict(section, adapter=upstream) if continued else section
        pairs = 1 if method == "kto" else 2
        est = self.training(name, sub, role, head="lm-fused" if _trl_tiled_head() else "lm-full", trainer="trl",
                            seqs_per_example=pairs)
        if continued:  # the SFT adapter itself trains: nothing is merged in
            est.terms = [t for t in est.terms if not t.name.startswith("upstream adapter")]
        setup, _, _ = self.train_setup(sub, role, seqs_per_example=pairs)
        reference_free = method in ("orpo", "cpo", "simpo")
        if reference_free:
            est.notes.append(f"{method}: no reference model")
        elif section.get("precompute_ref_log_probs"):
            est.notes.append("reference log-probs precomputed before training: no reference during training")
        else:
            if continued:
                n = numel(adapter_tensors(arch, upstream))
                est.terms.append(Term("ref_policy: frozen copy of the SFT adapter", n * setup.adapter_param_bytes(),
                                      note=f"{n:,} params on the shared base weights"))
            elif full:
                est.terms.append(weights_term(arch, setup.dtypes, role.quantization, "ref_policy "))
            else:
                est.notes.append("ref_policy = the base with adapters disabled: no extra weights")
            layer = layer_activation_bytes(setup, setup.seq_len)
            est.terms.append(Term("ref_policy forward (no grad)", setup.tokens * layer, "forward/backward",
                                  "one block's activations at a time, while the policy's are kept for backward"))
        est.notes.append(f"train.batch_size counts {'examples' if method == 'kto' else 'pairs'} "
                         f"({pairs} sequence{'s' if pairs > 1 else ''} each)")
        return est

    def reward_group_size(self, section: dict[str, Any]) -> tuple[int, str]:
        """K, the responses one reward batch element holds (all of a prompt's responses), and where it comes from.

        - the planner's explicit `reward_k` when given;
        - `rank.k` when `data` is the rank stage's output (`@rank`);
        - a local rankings / pairs file: the largest prompt group align.rankings makes of it (records sharing
          a prompt are merged, as the reward stage does; `max_records` respected);
        - anything else (a hub dataset, which the planner never downloads, or another stage's output):
          DEFAULT_REWARD_K = 2, preference pairs such as Anthropic HH.
        """
        if self.reward_k is not None:
            return self.reward_k, "set explicitly"
        data = section.get("data")
        data = data.get("path") if isinstance(data, dict) else data
        if not isinstance(data, str):
            return DEFAULT_REWARD_K, "pairs assumed"
        if data.startswith("@"):
            stage = data[1:].partition(".")[0]
            rank = self.recipe.get(stage)
            if stage == "rank" and isinstance(rank, dict):
                return int(rank.get("k", 4)), "rank.k"
            return DEFAULT_REWARD_K, f"{data} is not the rank stage: pairs assumed"
        if not Path(data).expanduser().exists():
            return DEFAULT_REWARD_K, f"{data} is not a local file: pairs assumed (K = 2, e.g. Anthropic HH)"
        key = (data, section.get("max_records"))
        if key not in self._group_sizes:
            from align.rankings import group_by_prompt, read_rankings

            try:
                groups = group_by_prompt(read_rankings(data, section.get("max_records")))
                k = max(len(g.responses) for g in groups)
                self._group_sizes[key] = (max(k, 2), f"largest prompt group in {data}")
            except AlignError as exc:  # unreadable here: the reward stage will say why
                self._group_sizes[key] = (DEFAULT_REWARD_K, f"{data} unreadable ({exc}): pairs assumed")
        return self._group_sizes[key]

    # ----- PPO

    def ppo(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """align.ppo: every role on one base for LoRA policies; a full policy keeps a frozen copy as ref_policy."""
        s = section.get("train") or {}
        ro = s.get("rollout") or {}
        policy = next(r for r in find_roles(section) if r.key == "policy")
        arch, upstream = self.resolve(policy.name)
        adapter = dict(upstream or section.get("adapter") or {"type": "lora", "r": 16, "target_modules": "all-linear"})
        adapter["dropout"] = 0.0  # the PPO model never enters train mode
        mini, accum = int(s.get("mini_batch_size", 4)), int(s.get("grad_accum", 1))
        rollouts = int(ro.get("batch_size", 16))
        gen_batch = int(ro.get("generation_batch_size") or rollouts)
        prompt, new = int(ro.get("max_prompt_length", 256)), int(ro.get("max_new_tokens", 64))
        setup = TrainSetup(arch=arch, device=self.device, precision=policy.precision, quantization=policy.quantization,
                           adapter=adapter, batch_size=mini, seq_len=prompt + new, grad_accum=accum,
                           optim="adamw_torch", attn=policy.attn or "sdpa", padded=True, head="ppo",
                           head_tokens=new, trainer="own")
        d = setup.dtypes
        terms = [replace(t, phase="ppo update") if t.phase == "forward/backward" else t for t in training_terms(setup)]
        if not setup.full:
            terms[0] = replace(terms[0], note=terms[0].note + "; one copy shared by every role")
        notes = [f"policy: {arch.name} ({arch.source}); {d.label}; "
                 f"{'trains the @-referenced adapter' if upstream else adapter.get('type', 'lora')}"]
        if setup.full:
            terms.append(weights_term(arch, d, setup.quantization, "ref_policy (frozen copy) "))
        elif upstream:
            ref = numel(adapter_tensors(arch, upstream))
            terms.append(Term("ref_policy adapter (frozen copy)", ref * 4, note="the starting adapter, on the shared base"))
        else:
            notes.append("ref_policy: the shared base with the adapter disabled (no extra weights)")
        estimator = (s.get("advantage") or {}).get("estimator", "gae")
        critic_free = estimator != "gae"
        if critic_free:
            notes.append(f"value_model: none (advantage {estimator})")
        elif (s.get("value") or {}).get("model", "head") == "adapter" and not setup.full:
            value = replace(setup, head="classifier")
            terms += [replace(t, phase="ppo update") if t.phase == "forward/backward" else t
                      for t in training_terms(value, "value_model ", with_weights=False)]
            notes.append("value_model: its own adapter on the shared base (a second forward/backward)")
        else:
            terms.append(Term("value head", (arch.hidden_size + 1) * 16, note="fp32 weights, grads, Adam state"))
        terms += self._ppo_reward(section, arch, setup, prompt + new, notes)
        terms += generation_terms(arch, d, gen_batch, prompt, new, "rollout", "rollout ")
        if (not setup.full and setup.quantization == "none" and ro.get("merge_for_sampling", True)
                and adapter.get("type", "lora") == "lora"):
            top = adapter.get("top_layers")
            adapted = sum(a * b * (min(c, top) if top and c > 1 else c)
                          for a, b, c in lora_targets(arch, adapter.get("target_modules", "all-linear")).values())
            terms.append(Term("merged policy weights (sampling)", adapted * d.weight, "rollout",
                              "a merged copy of each adapted weight while sampling (ppo.train.rollout.merge_for_sampling)"))
        fwd = int(ro.get("forward_batch_size", 16))
        scoring = fwd * new * arch.vocab_size * (2 * d.act) + 2 * new * arch.vocab_size * 4
        layer = fwd * (prompt + new) * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
        terms.append(Term("old + ref log-probs (no grad)", scoring + layer, "scoring",
                          f"policy and ref logits over {new} response tokens x {fwd} rollouts (ppo.train.rollout.forward_batch_size)"))
        terms += overhead_term(self.device)
        notes.append(f"{rollouts} rollouts per step, generated {gen_batch} at a time; updates of {mini} x {accum}; "
                     f"{prompt} prompt + {new} response tokens")
        knobs = {"quantization": f"{policy.path}.quantization", "batch_size": "train.mini_batch_size",
                 "grad_accum": "train.grad_accum", "gen_batch": "train.rollout.generation_batch_size",
                 "gen_batch_default": gen_batch, "max_new_tokens": "train.rollout.max_new_tokens"}
        if (s.get("value") or {}).get("model") == "adapter":
            knobs["value_head"] = "train.value.model"
        if setup.full:
            knobs["adapter"] = "adapter"
        return StageEstimate(name, "ppo", terms, notes, knobs=knobs)

    def _ppo_reward(self, section: dict[str, Any], arch: Arch, setup: TrainSetup, seq: int,
                    notes: list[str]) -> list[Term]:
        reward = section.get("reward") or {}
        source = str(reward.get("source", ""))
        score_batch = int(reward.get("batch_size", 16))
        if not source.startswith("@") and not Path(source).expanduser().exists():
            notes.append(f"reward: Python function {source} (no model)")
            return []
        if source.startswith("@"):
            stage = self.recipe.get(source[1:].split(".")[0]) or {}
            role = next((r for r in find_roles(stage) if r.key == "model"), None)
            if role is None:
                raise AlignError(f"ppo.reward {source!r}: that stage names no model")
            r_arch, _ = self.resolve(role.name)
            r_adapter = stage.get("adapter") or {"type": "lora", "r": 16, "target_modules": "all-linear"}
        else:
            r_arch, r_adapter = self.resolve(source)
            r_adapter = r_adapter or {"type": "full"}
        d = setup.dtypes
        shared = (reward.get("share_base", True) and not setup.full and r_adapter.get("type") in ("lora", "dora")
                  and r_arch == arch)
        phase_term = Term("reward_model scoring", score_batch * seq * (3 * r_arch.intermediate_size
                                                                       + 4 * r_arch.hidden_size) * d.act, "scoring")
        if shared:
            n = numel(adapter_tensors(r_arch, r_adapter))
            notes.append("reward_model: its LoRA adapter on the shared base")
            return [Term("reward_model adapter", n * 4, note=f"{n:,} params, frozen"), phase_term]
        notes.append("reward_model: a separate model (set reward.share_base, or train it as LoRA on the policy's "
                     "base, to share one copy)")
        return [weights_term(r_arch, d, "none", "reward_model ", head="classifier"), phase_term]

    # ----- generation stages

    def generation(self, name: str, section: dict[str, Any], roles: list[Role]) -> StageEstimate:
        """Generic: every named model generates; all assumed loaded together."""
        batch, batch_path = lookup(section, "batch_size", "generation_batch_size", default=8)
        new, new_path = lookup(section, "max_new_tokens", "response_length", "max_response_length", default=256)
        prompt, _ = lookup(section, "max_prompt_length", "prompt_length", default=256)
        per_prompt, _ = lookup(section, "num_return_sequences", "k", "num_generations", default=1)
        terms, notes = [], []
        for r in roles:
            t, n = self._generator(r, int(batch) * int(per_prompt), int(prompt), int(new), f"generation ({r.key})",
                                   f"{r.key}: " if len(roles) > 1 else "", resident=True)
            terms += t
            notes += n
        notes.append(f"batch {batch} x {per_prompt} sequences; {prompt} prompt + {new} new tokens "
                     "(all models assumed loaded together)")
        knobs = {"quantization": [f"{r.path}.quantization" for r in roles], "gen_batch": batch_path,
                 "max_new_tokens": new_path}
        return StageEstimate(name, "generation", terms + overhead_term(self.device), notes, knobs=knobs)

    def _generator(self, role: Role, batch: int, prompt: int, new: int, phase: str, prefix: str = "",
                   resident: bool = False) -> tuple[list[Term], list[str]]:
        """Weights (+ a loaded adapter) and generation buffers of one model; weights in `phase` unless resident."""
        arch, upstream = self.resolve(role.name)
        d = dtypes_for(self.device, role.precision)
        weights = [weights_term(arch, d, role.quantization, prefix)]
        if upstream:
            up = numel(adapter_tensors(arch, upstream))
            weights.append(Term(f"{prefix}adapter (loaded)", up * 4, note=f"{up:,} params"))
        if not resident:
            weights = [replace(t, phase=phase) for t in weights]
        return weights + generation_terms(arch, d, batch, prompt, new, phase, prefix), [
            f"{role.key}: {arch.name} ({arch.source}); {d.label}"]

    def rank(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """The policy samples k responses per prompt; a local LLM judge, if any, runs after it."""
        policy = next(r for r in find_roles(section) if r.key == "policy")
        batch, k, new = int(section.get("batch_size", 8)), int(section.get("k", 4)), int(section.get("max_new_tokens", 128))
        terms, notes = self._generator(policy, batch * k, PROMPT_GUESS, new, "sampling")
        judge = section.get("judge") or {}
        teacher = judge.get("teacher") if isinstance(judge, dict) else None
        if isinstance(teacher, dict) and teacher.get("type", "local") == "local" and teacher.get("model"):
            role = Role("judge", "judge.teacher.model", teacher["model"])
            t, n = self._generator(role, int(teacher.get("batch_size", 8)), 2 * PROMPT_GUESS + k * new, 256, "judging")
            terms, notes = terms + t, notes + n
        notes.append(f"{batch} prompts x k={k} per generate call; prompts assumed {PROMPT_GUESS} tokens")
        knobs = {"quantization": f"{policy.path}.quantization", "gen_batch": "batch_size",
                 "max_new_tokens": "max_new_tokens"}
        return StageEstimate(name, "generation", terms + overhead_term(self.device), notes, knobs=knobs)

    def base_of(self, name: str) -> tuple[str, str | None]:
        """(the base weights a model runs on, the adapter it adds or None): eval loads each base once for
        every LoRA/DoRA adapter on it. A full or prefix/prompt-tuned model is its own base. (`resolve`
        rejects reference cycles before this recursion could loop.)"""
        _, adapter = self.resolve(name)
        shareable = adapter is None or adapter.get("type") in ("lora", "dora")
        if name.startswith("@"):
            stage = name[1:].partition(".")[0]
            roles = [r for r in find_roles(self.recipe.get(stage) or {}) if r.key in ("model", "policy")]
            if adapter is None:  # a full or merged stage output: weights of its own
                return name, None
            base, _ = self.base_of(roles[0].name) if roles else (name, None)
            return (base, name) if shareable else (name, None)
        if adapter is None:
            return name, None
        path = Path(name).expanduser()
        folder = path / "model" if (path / "model" / "adapter_config.json").exists() else path
        try:
            base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            base = name
        return (base, name) if shareable else (name, None)

    def eval(self, name: str, section: dict[str, Any]) -> StageEstimate:
        """align.stages.eval: the policies take turns; LoRA policies (and the reference) on one base share ONE
        copy of it. Per policy: greedy generation, then (with a reference) KL sampling and the reference's
        scoring forward; the reward model scores after every policy is freed. `model` (precision,
        quantization) applies to all of them; without it the reward model loads as trained: its base in the
        reward stage's quantization, in fp32 (align.reward_model.load_reward_model)."""
        from align.stages.eval import KL_LOGITS_ELEMENTS

        batch, new = int(section.get("batch_size", 8)), int(section.get("max_new_tokens", 128))
        settings = section.get("model") if isinstance(section.get("model"), dict) else None
        precision = (settings or {}).get("precision") or "auto"
        quant = (settings or {}).get("quantization") or "none"
        d = dtypes_for(self.device, precision)
        n_kl, kl_batch = int(section.get("kl_samples", 1)), int(section.get("kl_batch_size", 32))
        reference = section.get("reference") if n_kl > 0 else None
        policies = section.get("policies") or {}
        ident = {label: self.base_of(ref) for label, ref in policies.items()}
        ref_ident = self.base_of(reference) if reference else None
        groups: dict[str, list[str]] = {}
        for label, (base, _) in ident.items():
            groups.setdefault(base, []).append(label)

        def loaded(base: str, members: list[tuple[str, str | None]], prefix: str) -> list[Term]:
            """A base's weights + every adapter loaded on it (peft keeps adapters in fp32)."""
            arch, _ = self.resolve(members[0][1] or base)
            terms = [weights_term(arch, d, quant, prefix)]
            for _, adapter in dict.fromkeys(members):
                if adapter is not None:
                    up = numel(adapter_tensors(arch, self.resolve(adapter)[1]))
                    terms.append(Term(f"{prefix}adapter {adapter} (loaded)", up * 4, note=f"{up:,} params"))
            return terms

        terms: list[Term] = []
        notes = [f"models: {d.label}" + (f", {quant}" if quant != "none" else ", unquantized")
                 + ("" if settings else " (eval.model not set)")]
        for base, labels in groups.items():
            members = [ident[label] for label in labels]
            with_ref = ref_ident is not None and ref_ident[0] == base  # the reference rides on this base too
            weights = loaded(base, members + ([ref_ident] if with_ref else []), "")
            if ref_ident is not None and not with_ref:
                weights += loaded(ref_ident[0], [ref_ident], "reference (KL) ")
            if len(dict.fromkeys(members + ([ref_ident] if with_ref else []))) > 1:
                notes.append(f"{', '.join(labels)}{' and the reference' if with_ref else ''}: one copy of {base}")
            arch, _ = self.resolve(base if not members[0][1] else members[0][1])
            for label in labels:
                phase = f"policy {label}"
                terms += [replace(t, phase=phase) for t in weights]
                terms += generation_terms(arch, d, batch, PROMPT_GUESS, new, phase)
                if ref_ident is None or ident[label] == ref_ident:
                    continue
                phase = f"policy {label} KL"
                terms += [replace(t, phase=phase) for t in weights]
                terms += self._kl_terms(arch, d, n_kl, kl_batch, new, phase, KL_LOGITS_ELEMENTS)
        if reference and n_kl:
            notes.append(f"KL: {n_kl} sample(s) per prompt, up to {kl_batch} sequences per generate call; then the "
                         "reference scores them (a policy that is the reference: no sampling)")
        if section.get("reward_model"):
            terms += self._eval_reward(section["reward_model"], settings, notes)
        llm = section.get("llm_judge")
        if section.get("judge") == "llm" and isinstance(llm, dict) and llm.get("type", "local") == "local":
            t, n = self._generator(Role("judge", "llm_judge.model", llm["model"]), int(llm.get("batch_size", 8)),
                                   4 * PROMPT_GUESS, 256, "judging")
            terms, notes = terms + t, notes + n
        notes.append(f"policies take turns (a phase each); prompts assumed {PROMPT_GUESS} tokens")
        knobs = {"quantization": ["model.quantization"], "gen_batch": "batch_size", "max_new_tokens": "max_new_tokens"}
        return StageEstimate(name, "generation", terms + overhead_term(self.device), notes, knobs=knobs)

    @staticmethod
    def _kl_terms(arch: Arch, d: Dtypes, n: int, kl_batch: int, new: int, phase: str, chunk_elements: int) -> list[Term]:
        """KL buffers: sampling (KV cache of one generate call + the recorded log-softmax row), then the
        reference's forward over the samples in chunks of `chunk_elements` logits. They do not overlap:
        the larger counts."""
        rows = max(1, kl_batch // n) * n
        V = arch.vocab_size
        sampling = generation_terms(arch, d, rows, PROMPT_GUESS, new, phase, "KL sampling ")
        sampling.append(Term("KL sampling: log-prob recorder", rows * V * 4 + rows * new * 4, phase,
                             "one fp32 log-softmax row per sequence"))
        chunk = max(1, min(rows, chunk_elements // (new * V)))
        logits = chunk * (new + 1) * V * d.act + 2 * chunk * new * V * 4
        forward = chunk * (PROMPT_GUESS + new) * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
        scoring = [Term("KL: reference log-probs", logits + forward, phase,
                        f"{chunk} sequences x {new} response positions x vocab per forward (logits + fp32 log-softmax)")]
        return sampling if sum(t.bytes for t in sampling) >= scoring[0].bytes else scoring

    def _eval_reward(self, ref: str, settings: dict[str, Any] | None, notes: list[str]) -> list[Term]:
        """The reward model's weights (+ adapter) and one scoring forward (RewardModel.score: 8 rows)."""
        arch, adapter = self.resolve(ref)
        max_length = 512
        if ref.startswith("@"):
            stage = self.recipe.get(ref[1:].partition(".")[0]) or {}
            max_length = int((stage.get("train") or {}).get("max_length", 512))
            role = next((r for r in find_roles(stage) if r.key == "model"), None)
            trained_quant = role.quantization if role else "none"
        else:
            trained_quant = "none"  # a reward model dir: align_reward.json is not read here
        if settings:
            precision, quant = settings.get("precision") or "auto", settings.get("quantization") or "none"
            how = "eval.model"
        else:  # load_reward_model: float32, its base quantized as the reward stage trained it (adapters only)
            precision, quant = "fp32", trained_quant if adapter else "none"
            how = "as trained (fp32" + (f", {quant} base)" if quant != "none" else ")")
        d = dtypes_for(self.device, precision)
        phase = "reward scoring"
        terms = [replace(weights_term(arch, d, quant, "reward_model ", head="classifier"), phase=phase)]
        if adapter:
            up = numel(adapter_tensors(arch, adapter))
            terms.append(Term("reward_model adapter", up * 4, phase, f"{up:,} params"))
        rows = 8
        act = rows * max_length * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
        terms.append(Term("reward_model scoring forward", act, phase, f"{rows} x {max_length} tokens"))
        notes.append(f"reward_model: {how}")
        return terms

    def self_instruct(self, name: str, section: dict[str, Any]) -> StageEstimate:
        teacher = section.get("teacher") or {}
        if isinstance(teacher, str):
            teacher = {"type": "local", "model": teacher}
        if teacher.get("type", "local") != "local":
            return StageEstimate(name, "none", [], [f"teacher served over HTTP ({teacher.get('model')}): "
                                                    "nothing on this machine's accelerator"])
        sampling = section.get("sampling") or {}
        if section.get("method") == "alpaca":
            new = int((sampling.get("alpaca") or {}).get("max_tokens", 3072))
        else:
            new = max(int((sampling.get("bootstrap") or {}).get("max_tokens", 512)),
                      int((sampling.get("instances") or {}).get("max_tokens", 300)))
        role = Role("teacher", "teacher.model", teacher["model"])
        terms, notes = self._generator(role, int(teacher.get("batch_size", 8)), 2 * PROMPT_GUESS, new,
                                       "generation", resident=True)
        notes.append(f"teacher batch {teacher.get('batch_size', 8)}; in-context prompts assumed "
                     f"{2 * PROMPT_GUESS} tokens + {new} new")
        knobs = {"quantization": [], "gen_batch": "teacher.batch_size"}
        return StageEstimate(name, "generation", terms + overhead_term(self.device), notes, knobs=knobs)


def _adapter_from_peft(cfg: dict[str, Any]) -> dict[str, Any]:
    kind = str(cfg.get("peft_type", "LORA")).lower()
    kind = {"prefix_tuning": "prefix", "prompt_tuning": "prompt"}.get(kind, kind)
    if kind == "lora" and cfg.get("use_dora"):
        kind = "dora"
    targets = cfg.get("target_modules") or "all-linear"
    return {"type": kind, "r": cfg.get("r", 16), "target_modules": targets,
            "num_virtual_tokens": cfg.get("num_virtual_tokens", 16)}


def _trl_tiled_head() -> bool:
    """Does the installed TRL score the LM head in tiles (no full logits)? Checked without importing TRL."""
    try:
        dist = importlib.metadata.distribution("trl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return Path(str(dist.locate_file("trl/kernels/chunked_logprob.py"))).exists()


# --------------------------------------------------------------------------- suggestions


def _retry(planner: Planner, name: str, section: dict, changes: dict[str, Any]) -> tuple[StageEstimate, list[str]]:
    changed = copy.deepcopy(section)
    for path, value in changes.items():
        set_path(changed, path, value)
    overrides = [f"{name}.{p}={_yaml(v)}" for p, v in changes.items()]
    return planner.stage(name, changed), overrides


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def suggest(planner: Planner, name: str, section: dict[str, Any], est: StageEstimate, budget: float) -> list[Suggestion]:
    """Concrete changes that shrink a stage, each re-estimated; if none fits alone, they are stacked in
    order (mildest step of each first) until the stage fits."""
    knobs = est.knobs
    if not knobs:
        return []

    def current(path: str, default: Any = None) -> Any:
        value = get_path(section, path)
        return default if value is None else value

    options: list[tuple[str, dict[str, Any]]] = []
    quant_paths = knobs.get("quantization") or []
    quant_paths = quant_paths if isinstance(quant_paths, list) else [quant_paths]
    if any(current(p, "none") != "4bit" for p in quant_paths):
        change: dict[str, Any] = {p: "4bit" for p in quant_paths}
        label = "4-bit base weights (NF4)"
        if "adapter" in knobs and current("adapter.type", "lora") == "full":
            change.update({"adapter.type": "lora", "adapter.r": 16})
            label = "QLoRA: LoRA r=16 on a 4-bit base instead of full fine-tuning"
        options.append((label, change))
    if "value_head" in knobs:
        options.append(("value model as a head on the policy (no second forward)", {knobs["value_head"]: "head"}))
    if "checkpointing" in knobs and not current(knobs["checkpointing"], False):
        options.append(("activation checkpointing", {knobs["checkpointing"]: True}))
    if "optim" in knobs and "8bit" not in str(current(knobs["optim"], "adamw_torch")):
        options.append(("8-bit optimizer (bitsandbytes)", {knobs["optim"]: "paged_adamw_8bit"}))

    def halving(path: str, start: int, floor: int) -> list[dict[str, Any]]:
        return [{path: start // 2**k} for k in range(1, 12) if start // 2**k >= floor]

    halvings: list[tuple[str, list[dict[str, Any]]]] = []
    if "batch_size" in knobs:
        bs, ga = int(current(knobs["batch_size"], 4)), int(current(knobs["grad_accum"], 1))
        halvings.append(("smaller micro-batch, more accumulation (same effective batch)",
                         [{knobs["batch_size"]: bs // 2**k, knobs["grad_accum"]: ga * 2**k}
                          for k in range(1, 8) if bs % 2**k == 0]))
    if "max_length" in knobs:
        halvings.append(("shorter max length", halving(knobs["max_length"], int(current(knobs["max_length"], 512)), 64)))
    if "gen_batch" in knobs:
        start = int(current(knobs["gen_batch"], knobs.get("gen_batch_default", 8)))
        halvings.append(("smaller generation batch", halving(knobs["gen_batch"], start, 1)))
    if "max_new_tokens" in knobs:
        halvings.append(("fewer new tokens", halving(knobs["max_new_tokens"], int(current(knobs["max_new_tokens"], 256)),
                                                     16)))

    results: list[Suggestion] = []
    for label, change in options:
        new, overrides = _retry(planner, name, section, change)
        if new.total < est.total:
            results.append(Suggestion(label, overrides, new.total, new.total <= budget))
    for label, steps in halvings:
        best = None
        for change in steps:  # the mildest step that fits, else the strongest one tried
            new, overrides = _retry(planner, name, section, change)
            best = Suggestion(label, overrides, new.total, new.total <= budget)
            if best.fits:
                break
        if best and best.total < est.total:  # a knob that does not touch the peak is no suggestion
            results.append(best)
    if any(r.fits for r in results):  # one change is enough: no need to stack them
        return results
    combined: dict[str, Any] = {}
    steps_taken = 0
    for _, change in options + [(lbl, step) for lbl, steps in halvings for step in steps]:
        combined.update(change)
        steps_taken += 1
        new, overrides = _retry(planner, name, section, combined)
        if new.total <= budget:
            break
    if steps_taken > 1:
        results.append(Suggestion("combined (in the order above, until it fits)", overrides, new.total,
                                  new.total <= budget))
    return results


# --------------------------------------------------------------------------- entry points


def plan_recipe(recipe: dict[str, Any], device: str = "cuda", budget: float | None = None,
                reward_k: int | None = None) -> list[StageEstimate]:
    """One estimate per stage present in the recipe, in run order; with a budget, suggestions for misfits.
    `reward_k`: responses per prompt in the reward stage's data, when the planner cannot tell."""
    from align.stages import STAGE_ORDER

    planner = Planner(recipe, device, reward_k)
    stages = [s for s in STAGE_ORDER if isinstance(recipe.get(s), dict)]
    stages += [s for s, v in recipe.items() if isinstance(v, dict) and s not in stages and s != "vars"]
    out = []
    for name in stages:
        est = planner.stage(name, recipe[name])
        if budget is not None and est.total > budget:
            est.suggestions = suggest(planner, name, recipe[name], est, budget)
        out.append(est)
    return out


def parse_size(text: str) -> float:
    """'8GiB' / '8G' / '8' (binary: GiB), '24GB' (decimal, as GPUs are sold), '16000MiB' -> bytes."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(?:([kmgt])(i?)(b?))?", (text or "").strip().lower())
    if not m:
        raise AlignError(f"--gpu-memory {text!r}: expected a size such as 8GiB, 24GB or 16000MiB")
    value, unit, binary, byte = m.groups()
    power = {"k": 1, "m": 2, "g": 3, "t": 4}[unit or "g"]
    base = 1000 if byte and not binary else 1024
    return float(value) * base**power


def format_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / KIB:.0f} KiB"


def render(estimates: list[StageEstimate], budget: float | None, device: str, console: Any = None) -> None:
    """Rich tables: the terms of each stage, its total, and what would make it fit."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
            console = Console(width=150)
    for est in estimates:
        peak = est.peak_phase
        table = Table(title=f"{est.stage} ({est.kind}) - peak {'GPU' if device == 'cuda' else 'CPU RAM'} memory",
                      title_justify="left")
        for col, justify in (("term", "left"), ("phase", "left"), ("memory", "right"), ("note", "left")):
            table.add_column(col, justify=justify)
        for t in est.terms:
            style = "dim" if t.phase not in ("resident", peak) else None
            table.add_row(t.name, t.phase, format_bytes(t.bytes), t.note, style=style)
        verdict = ""
        if budget is not None:
            verdict = f"fits in {format_bytes(budget)}" if est.total <= budget else f"does NOT fit in {format_bytes(budget)}"
        table.add_row("[bold]total (peak)[/bold]", peak or "", f"[bold]{format_bytes(est.total)}[/bold]", verdict)
        console.print(table)
        for note in est.notes:
            console.print(f"  - {note}")
        if est.suggestions:
            sug = Table(title=f"{est.stage}: changes that reduce the peak", title_justify="left")
            for col in ("change", "recipe settings", "new estimate", "fits"):
                sug.add_column(col)
            for s in est.suggestions:
                sug.add_row(s.label, " ".join(s.overrides), format_bytes(s.total), "yes" if s.fits else "no")
            console.print(sug)
    if device == "cuda":
        console.print("Estimates are for one CUDA GPU (bf16 where precision is auto); the CUDA context is not "
                      "counted. Dimmed rows belong to a phase that is not the peak.")
