"""`align export`: a finished stage's model as a folder others can use (`align push` uploads this folder).

export copies the stage's ``model/`` folder (adapter or full checkpoint, tokenizer, model card), or with
``merge`` writes the adapter folded into its base: a plain transformers model (causal LM, or a
sequence-classification model for reward models) in full precision. A base that was trained quantized
(QLoRA) is loaded quantized as in training and dequantized before the merge, so the merged weights are
the ones the adapter was trained against (NF4 values in float), not the original unquantized weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.sharing.model_card import ALIAS_HUB_IDS, describe_model, find_key, is_model_dir, write_model_card

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
DTYPES = ("float32", "bfloat16", "float16")


def stage_model(stage: str | Path) -> tuple[Path, Path]:
    """(stage dir, model dir) of a finished stage given as RUN/STAGE (or its model/ folder)."""
    path = Path(stage).expanduser()
    if not path.is_dir():
        raise AlignError(f"{path}: no such stage folder; expected RUN/STAGE, e.g. runs/ppo-tiny/ppo")
    stage_dir = path if (path / "config.yaml").exists() else path.parent
    if not (stage_dir / "config.yaml").exists():
        raise AlignError(f"{path}: not a stage folder of an align run (no config.yaml); expected RUN/STAGE, "
                         "e.g. runs/ppo-tiny/ppo")
    name = stage_dir.name
    if not (stage_dir / "COMPLETE").exists() or not (stage_dir / "result.json").exists():
        why = "it is running or was interrupted" if (stage_dir / "IN_PROGRESS").exists() else "no COMPLETE marker"
        raise AlignError(f"{stage_dir}: the {name} stage did not finish ({why}); finish it with `align run` first")
    outputs = json.loads((stage_dir / "result.json").read_text()).get("outputs", {})
    model = outputs.get("model")
    candidates = [stage_dir / Path(model).name, Path(model)] if model else []
    found = next((c for c in candidates if is_model_dir(c)), None)
    if found is None:
        listed = ", ".join(outputs) or "none"
        raise AlignError(f"{stage_dir}: the {name} stage wrote no model (its outputs: {listed}); export a stage "
                         "that trains one: sft, reward, dpo or ppo")
    return stage_dir, found


def hub_base_of(info: Any) -> str | None:
    """The Hub id of the base an adapter sits on, when it sits directly on a Hub model (else None)."""
    base, hub = info.load_base, info.hub_base
    if not base or not hub:
        return None
    if base == hub or f"models--{hub.replace('/', '--')}" in base:
        return hub  # the id itself, or its snapshot in the Hugging Face cache
    if info.origin in ALIAS_HUB_IDS and Path(base).name.startswith(info.origin):
        return hub  # a built-in alias converted into align's cache
    return None


def export_model(stage: str | Path, out: str | Path, merge: bool = False, dtype: str = "float32",
                 location: str | None = None) -> Path:
    """Write the stage's model to `out` (merged into its base with `merge`), with tokenizer and model card.

    location: where users will load it from (a Hub repo id for push; default the folder).
    """
    stage_dir, model_dir = stage_model(stage)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise AlignError(f"{out} exists and is not empty; give a new folder to --out")
    if dtype not in DTYPES:
        raise AlignError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    info = describe_model(model_dir, stage_dir)
    note, base, merged_from = "", None, None
    if merge and info.adapter:
        merged_from = model_dir
        merge_adapter(model_dir, out, info, dtype)
        note = f"The `{stage_dir.name}` adapter merged into its base ({dtype})."
    else:
        shutil.copytree(model_dir, out, dirs_exist_ok=True)
        if info.adapter and location:  # going to the Hub: name the base by its Hub id
            base = hub_base_of(info)
            if base is None:
                raise AlignError(f"{stage_dir}: this adapter's base ({info.load_base}) is not a Hugging Face Hub "
                                 "model, so nobody could load the adapter from the Hub; push with --merge (a full "
                                 "model with the adapter folded in)")
            config_path = out / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config_path.write_text(json.dumps({**config, "base_model_name_or_path": base}, indent=2))
        if merge:
            note = "A full checkpoint (all weights trained): nothing to merge."
    quantized = (info.reward_meta.get("quantization") or find_key(info.config, "quantization") or "none") != "none"
    write_model_card(out, stage_dir, location=location or str(out.resolve()), base=base, note=note,
                     merged_from=merged_from, dequantized=quantized)
    return out


def merge_adapter(model_dir: Path, out: Path, info: Any, dtype: str) -> None:
    """Fold a LoRA/DoRA adapter into its base (dequantized first if it trained on a quantized base) and save
    it with the adapter folder's tokenizer files (and a reward model's align_reward.json / normalization)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from align.models import quantization_config, resolve_model_ref

    if info.adapter.get("peft_type") != "LORA":
        raise AlignError(f"{model_dir}: a {info.adapter.get('peft_type')} adapter cannot be merged into weights "
                         "(only LoRA/DoRA can); export without --merge")
    base = resolve_model_ref(info.load_base)
    torch_dtype = getattr(torch, dtype)
    quant = info.reward_meta.get("quantization") or find_key(info.config, "quantization") or "none"
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant != "none":
        kwargs["quantization_config"] = quantization_config(quant, torch_dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    auto = AutoModelForSequenceClassification if info.reward else AutoModelForCausalLM
    if info.reward:
        kwargs["num_labels"] = 1
    try:
        model = auto.from_pretrained(base, **kwargs)
    except OSError as exc:
        raise AlignError(f"cannot load the base {base} of {model_dir}: {exc}") from exc
    if quant != "none":
        model = model.dequantize(dtype=torch_dtype)  # the weights the adapter trained against, as floats
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if info.reward:
        model.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    merged.to("cpu").save_pretrained(str(out))
    for path in model_dir.iterdir():  # tokenizer files as saved (save_pretrained drops truncation_side)
        if path.is_file() and path.name not in ADAPTER_FILES and path.name != "README.md" \
                and not (out / path.name).exists():
            shutil.copy2(path, out / path.name)
    if info.reward_meta:
        meta = {k: v for k, v in info.reward_meta.items() if k != "base"}
        (out / "align_reward.json").write_text(json.dumps({**meta, "adapter": False, "quantization": "none"},
                                                          indent=2))
