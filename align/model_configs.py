"""Architecture numbers for memory planning, without downloading or loading any weights.

`arch_for(ref)` turns a model reference into an `Arch` (layers, widths, heads, vocab, tied
embeddings) from, in this order:

- the built-in ``smollm2-135m-instruct`` alias: its published config, hard-coded below (no GGUF
  conversion needed just to plan);
- ``tiny-llama`` and local directories (checkpoints, PEFT adapters, stage outputs): their
  ``config.json`` (an adapter's base is followed through ``base_model_name_or_path``);
- ``.gguf`` files: the GGUF metadata header (no conversion);
- hub ids: the table `HUB_CONFIGS` below, else a ``config.json`` already in the local Hugging
  Face cache; otherwise an `AlignError` asks for a local config directory (we never go online).

Only Llama-style decoders (llama, mistral, qwen2, qwen3 and friends: RMSNorm, rotary, GQA,
SwiGLU MLP) are described; other architectures get a clear error.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import AlignError

# Projections of one Llama block, as named by peft's "all-linear" (every nn.Linear but lm_head).
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Arch:
    """The numbers of a Llama-style decoder that decide its memory."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_embeddings: bool
    head_dim: int = 0  # 0: hidden_size // num_heads
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    source: str = ""  # where the numbers came from, shown in the plan
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.hd

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection in one block."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    def bias_params_per_layer(self) -> int:
        return self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_params(self) -> int:
        """Separate output matrix; 0 when tied to the input embedding."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    def norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    def total_params(self) -> int:
        return (self.num_layers * (self.linear_params_per_layer() + self.bias_params_per_layer())
                + self.embedding_params() + self.lm_head_params() + self.norm_params())


def _entry(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int, tied: bool,
           qkv_bias: bool = False, note: str = "") -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
            "tie_word_embeddings": tied, "qkv_bias": qkv_bias, "note": note}


# Published config.json numbers (hidden, intermediate, layers, heads, kv heads, vocab, tied). Checked by
# recomputing each model's parameter count against its published size (tests/unit/test_plan_configs.py):
# Llama-3.2-1B 1.236B, 3B 3.213B, Llama-3.1-8B 8.030B, Qwen2.5 0.494/1.544/3.086/7.616B, Mistral-7B 7.242B
# (v0.3: 7.248B), SmolLM2 134.5M/361.8M/1.711B. Instruct variants share their base's architecture.
# Not verified beyond that: head_dim is assumed hidden/heads for all of them (true for these configs).
_BASES: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B": _entry(2048, 8192, 16, 32, 8, 128256, True),
    "meta-llama/Llama-3.2-3B": _entry(3072, 8192, 28, 24, 8, 128256, True),
    "meta-llama/Llama-3.1-8B": _entry(4096, 14336, 32, 32, 8, 128256, False),
    "Qwen/Qwen2.5-0.5B": _entry(896, 4864, 24, 14, 2, 151936, True, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B": _entry(1536, 8960, 28, 12, 2, 151936, True, qkv_bias=True),
    "Qwen/Qwen2.5-3B": _entry(2048, 11008, 36, 16, 2, 151936, True, qkv_bias=True),
    "Qwen/Qwen2.5-7B": _entry(3584, 18944, 28, 28, 4, 152064, False, qkv_bias=True),
    "mistralai/Mistral-7B-v0.1": _entry(4096, 14336, 32, 32, 8, 32000, False),
    "mistralai/Mistral-7B-v0.3": _entry(4096, 14336, 32, 32, 8, 32768, False),
    "HuggingFaceTB/SmolLM2-135M": _entry(576, 1536, 30, 9, 3, 49152, True),
    "HuggingFaceTB/SmolLM2-360M": _entry(960, 2560, 32, 15, 5, 49152, True),
    "HuggingFaceTB/SmolLM2-1.7B": _entry(2048, 8192, 24, 32, 32, 49152, True),
}
_INSTRUCT = {
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-3B-Instruct": "Qwen/Qwen2.5-3B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    # v0.2 Instruct has v0.1's vocabulary (32000); v0.3 extended it to 32768.
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "HuggingFaceTB/SmolLM2-360M",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "HuggingFaceTB/SmolLM2-1.7B",
}
HUB_CONFIGS: dict[str, dict[str, Any]] = {**_BASES, **{k: _BASES[v] for k, v in _INSTRUCT.items()}}
# Hub ids also go by their older names (Meta-Llama-3.1-8B).
_ALIASES = {"meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
            "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct"}

_SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "granite", "phi3")


def arch_from_config(cfg: dict[str, Any], name: str, source: str) -> Arch:
    """Read the fields we need from a transformers config.json mapping."""
    model_type = cfg.get("model_type", "llama")
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings",
                                                                      cfg["text_config"].get("tie_word_embeddings"))}
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise AlignError(f"{source}: mixture-of-experts models ({model_type}) are not supported by `align plan`")
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in needed if not isinstance(cfg.get(k), int)]
    if missing:
        raise AlignError(f"{source}: config has no {', '.join(missing)} (model_type {model_type!r}); `align plan` "
                         f"understands Llama-style decoders ({', '.join(_SUPPORTED_TYPES)})")
    notes = []
    if model_type not in _SUPPORTED_TYPES:
        notes.append(f"model_type {model_type!r} estimated as a Llama-style block")
    tied = cfg.get("tie_word_embeddings")
    if tied is None:  # transformers' PretrainedConfig default
        tied = model_type not in ("llama", "mistral", "qwen2")
        notes.append(f"tie_word_embeddings not in config; assumed {tied}")
    return Arch(
        name=name,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        num_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"],
        tie_embeddings=bool(tied),
        head_dim=cfg.get("head_dim") or 0,
        qkv_bias=bool(cfg.get("qkv_bias", model_type == "qwen2" or cfg.get("attention_bias", False))),
        source=source,
        notes=tuple(notes + ([cfg["note"]] if cfg.get("note") else [])),
    )


def hub_arch(hub_id: str) -> Arch:
    """A hub id from the built-in table, else from the local Hugging Face cache (offline only)."""
    key = _ALIASES.get(hub_id, hub_id)
    for known, cfg in HUB_CONFIGS.items():
        if known.lower() == key.lower():
            return arch_from_config({"model_type": "llama", **cfg}, hub_id, "built-in table")
    cached = _hf_cached_config(hub_id)
    if cached is not None:
        return arch_from_config(json.loads(cached.read_text()), hub_id, str(cached))
    raise AlignError(
        f"no architecture known for hub model {hub_id!r}: it is not in align's built-in table and its "
        f"config.json is not in the local Hugging Face cache (align plan never downloads). Pass a local "
        f"directory holding its config.json instead (only config.json is needed). Built-in: "
        f"{', '.join(sorted(HUB_CONFIGS))}"
    )


def _hf_cached_config(hub_id: str) -> Path | None:
    if importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # malformed id and the like: treat as not cached
        return None
    return Path(found) if isinstance(found, str) else None


def gguf_arch(path: Path) -> Arch:
    """Architecture from a GGUF header, without dequantizing anything."""
    try:
        import gguf
    except ImportError as exc:
        raise AlignError("reading .gguf files needs the 'gguf' package: pip install gguf") from exc
    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        part = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(part).decode()
        return part.tolist()[0]

    arch = value("general.architecture") or "llama"
    fields = {"hidden_size": value(f"{arch}.embedding_length"),
              "intermediate_size": value(f"{arch}.feed_forward_length"),
              "num_hidden_layers": value(f"{arch}.block_count"),
              "num_attention_heads": value(f"{arch}.attention.head_count"),
              "num_key_value_heads": value(f"{arch}.attention.head_count_kv"),
              "vocab_size": value(f"{arch}.vocab_size"),
              "model_type": arch}
    if fields["vocab_size"] is None and "tokenizer.ggml.tokens" in reader.fields:
        fields["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    # No separate output matrix in the file means the head reuses the token embedding.
    fields["tie_word_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return arch_from_config(fields, path.name, f"GGUF header of {path}")


def arch_for(ref: str) -> tuple[Arch, dict[str, Any] | None]:
    """(architecture, adapter_config or None) for a model reference; never downloads or converts.

    The adapter config is returned when `ref` is a PEFT adapter directory (its base's architecture is used).
    """
    from align.models import SMOLLM2, TINY_LLAMA, check_gguf_file, find_model_dir, resolve_model_ref

    if ref == SMOLLM2:
        return hub_arch("HuggingFaceTB/SmolLM2-135M-Instruct"), None
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        check_gguf_file(path)
        return gguf_arch(path), None
    if ref == TINY_LLAMA:
        path = Path(resolve_model_ref(ref))
    if path.exists():
        if not path.is_dir():
            raise AlignError(f"model reference {ref!r} is a file; expected a model directory, a .gguf file or a hub id")
        folder = find_model_dir(path)
        adapter_file = folder / "adapter_config.json"
        if adapter_file.exists() and not (folder / "config.json").exists():
            adapter = _read_json(adapter_file)
            base = adapter.get("base_model_name_or_path")
            if not base:
                raise AlignError(f"{adapter_file}: no base_model_name_or_path; cannot tell the base architecture")
            arch, _ = arch_for(base)
            return arch, adapter
        config_file = folder / "config.json"
        return arch_from_config(_read_json(config_file), ref, str(config_file)), None
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise AlignError(f"model directory not found: {ref}")
    return hub_arch(ref), None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AlignError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AlignError(f"{path}: expected a JSON object")
    return data
