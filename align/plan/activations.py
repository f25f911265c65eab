"""Memory of one model being trained: activations saved for backward, the loss head, optimizer terms.

Activations follow what PyTorch saves for backward in a transformers Llama block (checked
tensor-by-tensor with `torch.autograd.graph.saved_tensors_hooks`, see
tests/integration/test_plan_measured_saved.py). `TrainSetup` holds the numbers one estimate
depends on; its defaults are the schema's (`TrainConfig`, `ModelConfig`, `AdapterConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from align.model_configs import Arch
from align.models import AdapterConfig, ModelConfig
from align.plan.memory import (
    KIB,
    TRL_TOKEN_CHUNK,
    TRL_VOCAB_CHUNK,
    Dtypes,
    Term,
    adapter_tensors,
    dtypes_for,
    lora_targets,
    numel,
    optimizer_bytes,
    weights_term,
)
from align.plan.settings import as_adapter
from align.training import TrainConfig

_TRAIN = TrainConfig.model_fields
_MODEL = ModelConfig.model_fields


@dataclass(frozen=True)
class TrainSetup:
    """Everything the estimate of one trained model depends on; suggestions `replace()` fields."""

    arch: Arch
    device: str = "cuda"
    precision: str = _MODEL["precision"].default
    quantization: str = _MODEL["quantization"].default
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # a mapping is validated into one
    batch_size: int = _TRAIN["batch_size"].default
    seq_len: int = _TRAIN["max_length"].default
    grad_accum: int = _TRAIN["grad_accum"].default
    checkpointing: bool = _TRAIN["gradient_checkpointing"].default
    optim: str = _TRAIN["optim"].default
    attn: str = "sdpa"  # transformers' default attention (ModelConfig.attn_implementation None)
    padded: bool = True  # batches padded to the longest row (an attention mask; GQA keys repeated)
    head: str = "lm-fused"  # lm-fused (TRL tiles) | lm-full (full logits + log-softmax) | classifier
    seqs_per_example: int = 1  # reward models score all responses of a prompt together
    trainer: str = "trl"  # trl: LoRA weights cast to bf16 on quantized bases; own: peft's fp32 adapters
    upcast_non_quantized: bool = False  # prepare_model_for_kbit_training: embeddings/norms in fp32
    head_tokens: int = 0  # positions the loss head scores per sequence (0: all); PPO scores responses only

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", as_adapter(self.adapter))

    @property
    def dtypes(self) -> Dtypes:
        return dtypes_for(self.device, self.precision)

    @property
    def full(self) -> bool:
        return self.adapter.type == "full"

    @property
    def tokens(self) -> int:
        extra = self.adapter.num_virtual_tokens if self.adapter.type in ("prefix", "prompt") else 0
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
    targets = lora_targets(a, s.adapter.target_modules) if s.adapter.type in ("lora", "dora") else {}
    targets.pop("lm_head", None)
    e_lora, copies = s.lora_path()
    dropout = bool(targets) and s.adapter.dropout > 0
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
        total += e_lora * s.adapter.r
        if copies or dropout:
            total += e_lora * fan_in + (mask_bytes * fan_in if dropout else 0)
    return total


def autocast_weight_copies(s: TrainSetup) -> float:
    """bf16 copies of fp32 LoRA weights that autocast makes in the forward and autograd keeps for backward."""
    e_lora, _ = s.lora_path()
    if s.full or s.adapter.type not in ("lora", "dora") or e_lora == s.adapter_param_bytes():
        return 0.0
    return numel(adapter_tensors(s.arch, s.adapter)) * e_lora


def activation_terms(s: TrainSetup) -> list[Term]:
    a, e, L = s.arch, s.dtypes.act, s.arch.num_layers
    top = s.adapter.top_layers if not s.full and s.adapter.type in ("lora", "dora") else None
    if top:  # frozen blocks below the lowest adapter keep nothing for backward
        L = min(L, top)
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
    kind = s.adapter.type
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
