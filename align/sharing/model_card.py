"""Model cards: a Hugging Face Hub `README.md` in every model folder a stage writes.

A card says what the folder holds (stage, method, adapter), what it was trained on, the recipe and the
stage's config hash, the stage's key metrics, and how to load it with plain transformers + peft (a code
block that runs as written). Everything is read from the run directory (the stage's ``config.yaml``,
``metrics.json``, ``COMPLETE``, the folder's ``adapter_config.json`` / ``align_reward.json``), so a card
can be (re)written for any finished stage, e.g. by `align export` and `align push`.

The YAML front matter follows the Hub's model-card metadata: ``base_model`` and ``datasets`` hold only
Hub ids (local paths are named in the body), ``license`` only when the base's own card states one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.sections import walk

log = logging.getLogger("align")

CARD_FILE = "README.md"
# Built-in aliases that are copies of a Hub model (see align.models).
ALIAS_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Stage → the config keys that name its model and its data.
MODEL_KEYS = ("model", "policy")
DATA_KEYS = {"sft": ("data",), "reward": ("data",), "dpo": ("data",), "ppo": ("prompts",)}
KEY_METRICS = {
    "sft": ("train_loss", "eval_loss", "last_loss", "steps", "examples", "tokens"),
    "reward": ("accuracy", "heldout_accuracy", "heldout_accuracy_ci", "heldout_pairs", "mean_margin",
               "eval_data_accuracy", "steps", "normalization_mean"),
    "dpo": ("train_loss", "reward_accuracy_last", "reward_margin_last", "heldout_reward_accuracy",
            "heldout_reward_margin", "steps"),
    "ppo": ("first_score", "last_score", "final_kl", "first_gold", "last_gold", "steps"),
}
DPO_METHODS = {"dpo": "DPO (Direct Preference Optimization)", "kto": "KTO", "orpo": "ORPO", "cpo": "CPO",
               "simpo": "SimPO"}


@dataclass
class ModelInfo:
    """What a card needs to know about one saved model folder."""

    folder: Path
    run_dir: Path
    stage: str
    reward: bool  # a sequence-classification reward model (else a causal LM)
    adapter: dict[str, Any] | None  # adapter_config.json, None for a full checkpoint
    load_base: str | None  # what the adapter loads on (adapter_config.json / align_reward.json)
    origin: str  # the model reference the recipe started from (alias, hub id or path)
    hub_base: str | None  # origin as a Hub id, if it is one
    license: str | None
    recipe: str | None
    config_hash: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    data: list[str] = field(default_factory=list)  # data references, @stage ones described
    merged_adapter: dict[str, Any] | None = None  # a merged model: the adapter folded into these weights
    dequantized: bool = False  # merged into the dequantized weights of the quantized base it trained on
    reward_meta: dict[str, Any] = field(default_factory=dict)
    norm_mean: float = 0.0


# --------------------------------------------------------------------------- reading the run


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ppo_estimator(cfg: Any) -> str:
    """gae | rloo | grpo from a ppo stage's config (`train.advantage.estimator`)."""
    return setting(cfg, "train.advantage.estimator") or "gae"


def setting(cfg: Any, dotted: str) -> Any:
    """The value at a dotted key of a stage's config, or None."""
    try:
        return walk(cfg, dotted.split("."))
    except KeyError:
        return None


def find_key(cfg: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested config (settings may sit in sub-sections)."""
    if isinstance(cfg, dict):
        if key in cfg:
            return cfg[key]
        for value in cfg.values():
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def _ref(value: Any) -> str | None:
    """A model/data reference from its config value: a string, or a section's name / path / source."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("name", "path", "source"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def is_hub_id(ref: str) -> bool:
    """`org/name` that is not a local path."""
    return (ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).expanduser().exists()
            and ":" not in ref and not ref.endswith((".json", ".jsonl", ".csv", ".parquet", ".gguf")))


def model_origin(run_dir: Path, cfg: dict[str, Any], depth: int = 0) -> str:
    """The model reference a stage's chain began with: `@sft` is followed to the sft stage's own model."""
    ref = next((r for r in (_ref(cfg.get(k)) for k in MODEL_KEYS) if r), None) or "unknown"
    if ref.startswith("@") and depth < 8:
        stage = ref[1:].partition(".")[0]
        return model_origin(run_dir, _read_yaml(run_dir / stage / "config.yaml"), depth + 1)
    return ref


def _describe_data(run_dir: Path, ref: str) -> str:
    """A data reference in words: @rank / @self_instruct name what produced them in this run."""
    if not ref.startswith("@"):
        return ref
    stage = ref[1:].partition(".")[0]
    cfg = _read_yaml(run_dir / stage / "config.yaml")
    if stage == "rank":
        judge = cfg.get("judge") or {}
        how = judge.get("function") or judge.get("teacher") or judge.get("type") if isinstance(judge, dict) else judge
        prompts = _ref(cfg.get("prompts")) or "?"
        return f"rankings of K={cfg.get('k', '?')} sampled responses per prompt of {prompts}, judge {how} (rank stage)"
    if stage == "self_instruct":
        teacher = cfg.get("teacher") or {}
        model = teacher.get("model") if isinstance(teacher, dict) else teacher
        return f"Self-Instruct data generated in this run (teacher {model or '?'})"
    return f"the output of this run's {stage} stage"


def base_license(load_base: str | None, hub_base: str | None) -> str | None:
    """The license the base's own model card declares (a local README.md, or one in the Hub cache)."""
    candidates = []
    if load_base and Path(load_base).is_dir():
        candidates.append(Path(load_base) / CARD_FILE)
    if hub_base:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hub_base, CARD_FILE)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # an id the cache cannot hold: no license known
            pass
    for path in candidates:
        meta = front_matter(path.read_text()) if path.exists() else {}
        if isinstance(meta.get("license"), str):
            return meta["license"]
    return None


def front_matter(text: str) -> dict[str, Any]:
    """The YAML block between the leading `---` lines of a card ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    block = text[3:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def describe_model(folder: str | Path, stage_dir: str | Path, merged_from: str | Path | None = None,
                   dequantized: bool = False) -> ModelInfo:
    """Gather what a card says about `folder` (a model written by the stage in `stage_dir`).

    merged_from: the adapter folder `folder` was merged from; dequantized: merged into the quantized base's
    dequantized weights (align export --merge) rather than the original float ones (sft's merged/).
    """
    folder, stage_dir = Path(folder), Path(stage_dir)
    run_dir = stage_dir.parent
    cfg = _read_yaml(stage_dir / "config.yaml")
    adapter = _read_json(folder / "adapter_config.json") or None
    reward_meta = _read_json(folder / "align_reward.json")
    reward = bool(reward_meta) or stage_dir.name == "reward"
    load_base = None
    if adapter:
        load_base = reward_meta.get("base") or adapter.get("base_model_name_or_path")
    origin = model_origin(run_dir, cfg)
    hub_base = ALIAS_HUB_IDS.get(origin) or (origin if is_hub_id(origin) else None)
    data = []
    for key in DATA_KEYS.get(stage_dir.name, ("data",)):
        ref = _ref(cfg.get(key))
        if ref:
            data.append(ref)
    return ModelInfo(
        folder=folder, run_dir=run_dir, stage=stage_dir.name, reward=reward, adapter=adapter, load_base=load_base, origin=origin,
        hub_base=hub_base, license=base_license(load_base, hub_base),
        recipe=_read_yaml(run_dir / "recipe.yaml").get("name"),
        config_hash=config_hash(stage_dir),
        config=cfg, metrics=_read_json(stage_dir / "metrics.json"), data=data, reward_meta=reward_meta,
        norm_mean=float(_read_json(folder / "reward_normalization.json").get("mean", 0.0)),
        merged_adapter=(_read_json(Path(merged_from) / "adapter_config.json") or None) if merged_from else None,
        dequantized=dequantized,
    )


# --------------------------------------------------------------------------- rendering


def adapter_words(adapter: dict[str, Any] | None) -> str:
    if not adapter:
        return "all weights (a full checkpoint, no adapter)"
    kind = adapter.get("peft_type", "?")
    if kind == "LORA":
        name = "DoRA" if adapter.get("use_dora") else "LoRA"
        targets = adapter.get("target_modules")
        if isinstance(targets, list):  # peft may store full module paths: name each kind of layer once
            targets = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in targets}))
        if adapter.get("layers_to_transform"):
            targets += f" of layers {adapter['layers_to_transform']}"
        return f"a {name} adapter (r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}, on {targets})"
    if kind in ("PREFIX_TUNING", "PROMPT_TUNING"):
        name = "prefix tuning" if kind == "PREFIX_TUNING" else "prompt tuning"
        return f"a {name} adapter ({adapter.get('num_virtual_tokens')} virtual tokens)"
    return f"a {kind} adapter"


def trained_words(info: ModelInfo) -> str:
    if info.merged_adapter is None:
        return adapter_words(info.adapter)
    quant = find_key(info.config, "quantization")
    how = ""
    if quant and quant != "none":
        how = (f", dequantized from {quant} first" if info.dequantized else
               f" (the original float weights, not the {quant} ones it trained against; `align export --merge` "
               "merges into those, dequantized)")
    return f"{adapter_words(info.merged_adapter)}, merged into the base weights{how}"


def method_words(info: ModelInfo) -> str:
    """The training method in one sentence, from the stage's config."""
    cfg = info.config
    if info.stage == "sft":
        return "supervised fine-tuning (SFT) on instruction data, loss on response tokens only (TRL SFTTrainer)"
    if info.reward:
        loss = cfg.get("loss", "pairwise")
        how = ("the listwise Plackett-Luce loss" if loss == "plackett_luce"
               else "the pairwise ranking loss -log sigmoid(r_better - r_worse) (InstructGPT)")
        return f"a reward model: a scalar score head (num_labels=1) trained on rankings with {how}"
    if info.stage == "dpo":
        method = setting(cfg, "method.type") or "dpo"
        words = DPO_METHODS.get(method, method)
        if method == "dpo":
            words += f", loss {'+'.join(setting(cfg, 'method.loss_type') or ['sigmoid'])}"
        return f"preference optimisation with {words}, beta={setting(cfg, 'method.beta')} (TRL)"
    if info.stage == "ppo":
        advantage = ppo_estimator(cfg)
        if advantage == "rloo":
            algo = f"RLOO (REINFORCE leave-one-out, {setting(cfg, 'train.rollout.group_size')} samples per prompt)"
        elif advantage == "grpo":
            algo = ("Dr. GRPO" if setting(cfg, "train.advantage.dr_grpo") else "GRPO") + \
                f" ({setting(cfg, 'train.rollout.group_size')} samples per prompt)"
        else:
            algo = "PPO with GAE and a value head"
        reward = _ref(cfg.get("reward")) or "?"
        reward = f"this run's `{reward[1:]}` stage" if reward.startswith("@") else f"`{reward}`"
        return (f"RLHF with {algo}, reward {reward}, KL penalty to the starting policy "
                f"(beta={setting(cfg, 'train.kl.init_coef')})")
    return f"the {info.stage} stage"


def tags(info: ModelInfo) -> list[str]:
    out = ["align", info.stage]
    adapter = info.adapter or info.merged_adapter
    if adapter:
        out.append("dora" if adapter.get("use_dora") else str(adapter.get("peft_type", "")).lower())
    if info.stage in ("reward", "ppo", "dpo"):
        out.append("rlhf")
    if info.reward:
        out.append("reward-model")
    if info.stage == "dpo":
        out.append(setting(info.config, "method.type") or "dpo")
    if info.stage == "ppo":
        out.append({"gae": "ppo", "rloo": "rloo", "grpo": "grpo"}.get(ppo_estimator(info.config)))
    if find_key(info.config, "quantization") == "4bit":
        out.append("qlora")
    return list(dict.fromkeys(t for t in out if t))


def metadata(info: ModelInfo) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if info.hub_base:
        meta["base_model"] = info.hub_base
    meta["library_name"] = "peft" if info.adapter else "transformers"
    if info.license:
        meta["license"] = info.license
    datasets = [d for d in info.data if is_hub_id(d)]
    if datasets:
        meta["datasets"] = datasets
    meta["tags"] = tags(info)
    meta["pipeline_tag"] = "text-classification" if info.reward else "text-generation"
    return meta


def _literal(value: Any) -> str:
    return json.dumps(value)


def loading_snippet(info: ModelInfo, location: str, base: str | None = None) -> str:
    """Python that loads this folder with plain transformers (+ peft) and uses it once."""
    base = base or info.load_base
    lines = ["import torch"]
    if info.adapter:
        lines.append("from peft import PeftModel")
    auto = "AutoModelForSequenceClassification" if info.reward else "AutoModelForCausalLM"
    lines.append(f"from transformers import {auto}, AutoTokenizer")
    lines += ["", f"model_id = {_literal(location)}"]
    if info.adapter:
        lines.append(f"base_id = {_literal(base)}  # the base model the adapter was trained on")
    lines.append("tokenizer = AutoTokenizer.from_pretrained(model_id)")
    if info.reward:
        load_from = "base_id" if info.adapter else "model_id"
        lines.append(f"model = AutoModelForSequenceClassification.from_pretrained({load_from}, num_labels=1, "
                     "dtype=torch.float32)")
        lines.append("model.config.pad_token_id = tokenizer.pad_token_id")
        if info.adapter:
            lines.append("model = PeftModel.from_pretrained(model, model_id)  # the adapter and the trained score head")
        max_length = int(info.reward_meta.get("max_length", 512))
        lines += ["model.eval()", "", "prompt, response = \"Name a colour.\", \"Blue.\""]
        if info.reward_meta.get("format") == "pair":
            lines.append(f"inputs = tokenizer(prompt, response, truncation=\"longest_first\", max_length={max_length}, "
                         "return_tensors=\"pt\")")
        else:
            lines += ["messages = [{\"role\": \"user\", \"content\": prompt}, {\"role\": \"assistant\", "
                      "\"content\": response}]",
                      "text = tokenizer.apply_chat_template(messages, tokenize=False)",
                      f"inputs = tokenizer(text, add_special_tokens=False, truncation=True, max_length={max_length}, "
                      "return_tensors=\"pt\")"]
        lines += ["with torch.no_grad():", "    raw = model(**inputs).logits[0, 0].item()",
                  f"reward = raw - ({info.norm_mean!r})  # centred: the SFT samples score 0 on average",
                  "print(reward)"]
        return "\n".join(lines)
    if info.adapter:
        lines += ["model = AutoModelForCausalLM.from_pretrained(base_id, dtype=torch.float32)",
                  "model = PeftModel.from_pretrained(model, model_id)"]
    else:
        lines.append("model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)")
    lines += ["model.eval()", "",
              "messages = [{\"role\": \"user\", \"content\": \"Give me three tips for a good night's sleep.\"}]",
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)",
              "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"]
    return "\n".join(lines)


def render_card(info: ModelInfo, location: str | None = None, base: str | None = None, note: str = "") -> str:
    """The card's text. location: where users load it from (a Hub repo id or a folder; default the folder).
    base: the base a pushed adapter should name (default the one it was trained on)."""
    location = location or str(info.folder.resolve())
    kind = "reward model" if info.reward else "causal language model"
    what = f"A {kind} from the `{info.stage}` stage of an `align` run"
    if info.recipe:
        what += f" (recipe `{info.recipe}`)"
    lines = ["---", yaml.safe_dump(metadata(info), sort_keys=False).strip(), "---", "",
             f"# {info.recipe or 'align'} / {info.stage}", "", what + ".", "",
             f"- **Method:** {method_words(info)}.",
             f"- **Trained parameters:** {trained_words(info)}.",
             f"- **Started from:** `{info.origin}`" + (f" (Hub id `{info.hub_base}`)" if info.hub_base and
                                                       info.hub_base != info.origin else "") + "."]
    start = next((r for r in (_ref(info.config.get(k)) for k in MODEL_KEYS) if r), "")
    if start.startswith("@"):
        lines.append(f"- **Starting model:** this run's `{start[1:]}` stage output.")
    if info.adapter and (base or info.load_base):
        where = base or info.load_base
        inside = not base and Path(where).resolve().is_relative_to(info.run_dir.resolve())
        lines.append(f"- **Adapter base:** `{where}`" + (" (written by this run: an earlier adapter merged into its "
                     "base; share `align export --merge` output, which carries it)" if inside else "") + ".")
    quant = find_key(info.config, "quantization")
    if info.adapter and quant and quant != "none":
        lines.append(f"- **Quantization during training:** {quant} base weights (QLoRA); load the base in 4-bit "
                     "(bitsandbytes) to reproduce training exactly, or use `align export --merge`.")
    for ref in info.data:
        lines.append(f"- **Data:** {_describe_data(info.run_dir, ref)}.")
    if info.recipe or info.config_hash:
        lines.append(f"- **Recipe:** `{info.recipe}`; stage config hash `{info.config_hash}` (the run's "
                     f"`{info.stage}/COMPLETE`; the full settings are in `{info.stage}/config.yaml`).")
    shown = [(k, info.metrics[k]) for k in KEY_METRICS.get(info.stage, ()) if info.metrics.get(k) is not None]
    if shown:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown]
    lines += ["", "## How to use", ""]
    if note:
        lines += [note, ""]
    lines += ["```python", loading_snippet(info, location, base), "```", ""]
    if info.reward:
        lines.append("Higher is better. Scores are read at the last token of the conversation, as in training.")
        lines.append("")
    if info.adapter:
        lines.append("`align export RUN/" + info.stage + " --merge --out DIR` writes this adapter merged into its "
                     "base: a plain transformers model.")
        lines.append("")
    return "\n".join(lines)


def config_hash(stage_dir: Path) -> str | None:
    """The stage's hash from COMPLETE (config + inputs), else a hash of its config.yaml."""
    complete, config = stage_dir / "COMPLETE", stage_dir / "config.yaml"
    if complete.exists():
        return complete.read_text().strip()
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.exists() else None


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists())


def write_model_card(folder: str | Path, stage_dir: str | Path, location: str | None = None,
                     base: str | None = None, note: str = "", merged_from: str | Path | None = None,
                     dequantized: bool = False) -> Path:
    """Write README.md into a model folder; returns its path."""
    info = describe_model(folder, stage_dir, merged_from, dequantized)
    path = Path(folder) / CARD_FILE
    path.write_text(render_card(info, location, base, note))
    return path


def write_stage_cards(stage_dir: str | Path, outputs: dict[str, str]) -> list[Path]:
    """A card in every model folder among a finished stage's outputs (called once by the runner).

    A card is documentation: failing to write one is logged, never fails the stage.
    """
    written = []
    model = outputs.get("model")
    adapter = model if model and (Path(model) / "adapter_config.json").exists() else None
    for path in dict.fromkeys(outputs.values()):
        if is_model_dir(Path(path)):
            merged_from = adapter if adapter and path != model and (Path(path) / "config.json").exists() else None
            try:
                written.append(write_model_card(path, stage_dir, merged_from=merged_from))
            except Exception as exc:  # noqa: BLE001 - never lose a finished stage over its documentation
                log.warning("model card for %s not written: %s: %s", path, type(exc).__name__, exc)
    return written
