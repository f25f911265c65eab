"""Direct preference optimisation from rankings: DPO (and IPO, robust, hinge, … — TRL's losses), KTO,
and the reference-free ORPO / CPO / SimPO. The offline alternative to `reward` + `ppo`. `method` picks
one, with the settings of that method only (``method: simpo``, ``method: {type: kto, desirable_top: 2}``).

Data: rankings (`@rank`, K responses best → worst, ties allowed) become (chosen, rejected) pairs by
`pairs` (all K·(K−1)/2, best_vs_worst or best_vs_each; tied responses never form a pair); plain pair
files, Anthropic HH transcripts and `datasets` ids are read as rankings with K = 2. KTO takes the
top tie group(s) as desirable and the bottom one(s) as undesirable. Held-out prompts (eval_fraction)
measure the implicit-reward accuracy.

One base: the policy is the SFT LoRA adapter trained further (start: continue) and the reference is
a frozen copy of that adapter on the SAME base weights — TRL adds it as the adapter "ref" when it is
given a PeftModel without a ref_model — or, for a fresh adapter (start: new, or a plain model), the
base with adapters disabled. Only full fine-tuning (adapter.type: full) loads a second copy of the
weights, unless method.precompute_ref_log_probs computes the reference log-probs once before training.

Built on TRL's DPOTrainer / KTOTrainer / trl.experimental ORPOTrainer, CPOTrainer: their losses,
loop, checkpoints and resume; we map settings and rankings to them.
Outputs: ``model/`` (the policy: PEFT adapter or full checkpoint, plus tokenizer), ``metrics.json``,
``loss_history.json``, ``history.json`` (per-log-step reward accuracy/margin/log-probs).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig
from align.preferences.rankings import MAX_BAD_RECORDS_HELP
from align.sections import Shorthand
from align.stages import StageContext, StageResult
from align.training import TrainConfig

log = logging.getLogger("align.dpo")

# TRL 1.16 DPOConfig.loss_type choices (trl/trainer/dpo_config.py); listed here so recipe validation
# needs no TRL import. "sigmoid" is DPO, "robust" is cDPO-style label noise (label_smoothing).
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
HISTORY_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                "logps/chosen", "logps/rejected", "kl", "nll_loss", "log_odds_ratio", "learning_rate")


class DPOTrainConfig(TrainConfig):
    """TrainConfig with a preference-optimisation learning rate (SFT's 2e-4 is far too high for DPO)."""

    lr: float = Field(5e-5, gt=0, description="Peak learning rate (DPO with LoRA: ~1e-5..1e-4; full: ~5e-7..5e-6).")


class _Method(Shorthand):
    """A preference-optimisation method and its own settings: ``method: simpo`` (its defaults) or
    ``method: {type: simpo, gamma: 0.5}``."""

    model_config = ConfigDict(extra="forbid")
    shorthand_key: ClassVar[str] = "type"  # a plain string names the method

    type: str

    def trl_args(self) -> dict[str, Any]:
        """The method's own settings of its TRL trainer config (the shared ones come from align.training)."""
        raise NotImplementedError


class _ReferenceMethod(_Method):
    """A method that scores the policy against a reference model (dpo, kto)."""

    precompute_ref_log_probs: bool = Field(False, description="Score every example with the reference once before "
                                           "training (no reference forward per step; no reference copy for full).")


class DPOMethod(_ReferenceMethod):
    """DPO and the other losses of TRL's DPOTrainer."""

    type: Literal["dpo"] = "dpo"
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], description="TRL DPO loss(es): "
                                 f"{', '.join(DPO_LOSSES)}; several are summed with loss_weights.")
    loss_weights: list[float] | None = Field(None, description="Weights of several loss_type entries (e.g. MPO).")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (IPO: τ).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="robust / exo_pair: assumed label noise.")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_loss(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> DPOMethod:
        bad = [x for x in self.loss_type if x not in DPO_LOSSES]
        if bad:
            raise ValueError(f"loss_type {bad[0]!r} is not a TRL DPO loss; expected one of {', '.join(DPO_LOSSES)}")
        if not self.loss_type:
            raise ValueError("loss_type: name at least one loss")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss_type")
        return self

    def trl_args(self) -> dict[str, Any]:
        return dict(loss_type=list(self.loss_type), loss_weights=self.loss_weights, beta=self.beta,
                    label_smoothing=self.label_smoothing, precompute_ref_log_probs=self.precompute_ref_log_probs)


class KTOMethod(_ReferenceMethod):
    """KTO (TRL's KTOTrainer): unpaired desirable / undesirable examples taken from the rankings."""

    type: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="TRL KTO loss.")
    desirable_top: int = Field(1, gt=0, description="The best N tie groups of a ranking are desirable.")
    undesirable_bottom: int = Field(1, gt=0, description="The worst N tie groups are undesirable (middle unused).")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of desirable examples' loss (TRL KTOConfig).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable examples' loss.")

    def trl_args(self) -> dict[str, Any]:
        return dict(loss_type=self.loss_type, beta=self.beta, desirable_weight=self.desirable_weight,
                    undesirable_weight=self.undesirable_weight, precompute_ref_log_probs=self.precompute_ref_log_probs)


class ORPOMethod(_Method):
    """ORPO (trl.experimental ORPOTrainer): an odds-ratio term on top of the SFT loss; no reference."""

    type: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="λ: weight of the odds-ratio term.")

    def trl_args(self) -> dict[str, Any]:
        return dict(beta=self.beta)


class CPOMethod(_Method):
    """CPO (trl.experimental CPOTrainer): a sigmoid preference loss plus an NLL term; no reference."""

    type: Literal["cpo"] = "cpo"
    beta: float = Field(0.1, gt=0, description="Scale of the preference term.")
    alpha: float = Field(1.0, ge=0, description="Weight of the NLL (behaviour cloning) term.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed label noise.")

    def trl_args(self) -> dict[str, Any]:
        return dict(loss_type="sigmoid", beta=self.beta, cpo_alpha=self.alpha, label_smoothing=self.label_smoothing)


class SimPOMethod(_Method):
    """SimPO: CPOTrainer's length-normalised loss with a target margin, no NLL term; no reference."""

    type: Literal["simpo"] = "simpo"
    beta: float = Field(0.1, gt=0, description="Scale of the length-normalised reward.")
    gamma: float = Field(0.5, ge=0, description="Target reward margin γ.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed label noise.")

    def trl_args(self) -> dict[str, Any]:
        return dict(loss_type="simpo", beta=self.beta, simpo_gamma=self.gamma, cpo_alpha=0.0,
                    label_smoothing=self.label_smoothing)


METHODS = ("dpo", "kto", "orpo", "cpo", "simpo")


def _method_name(value: Any) -> str | None:
    """Which method a `method:` value names: the string itself, or its `type` (dpo when left out)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("type", "dpo")
    return getattr(value, "type", None)


# One settings block per method, picked by name: `method: kto` or `method: {type: kto, desirable_top: 2}`.
MethodConfig = Annotated[
    Annotated[DPOMethod, Tag("dpo")] | Annotated[KTOMethod, Tag("kto")] | Annotated[ORPOMethod, Tag("orpo")]
    | Annotated[CPOMethod, Tag("cpo")] | Annotated[SimPOMethod, Tag("simpo")],
    Discriminator(_method_name, custom_error_type="method", custom_error_message=(
        f"expected one of {', '.join(METHODS)}, as a name (method: simpo) or with its settings "
        "(method: {type: simpo, gamma: 0.5})")),
]


class Config(BaseModel):
    """The `dpo:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(description="Starting policy: @sft (a LoRA adapter or full model), a model dir or alias.")
    data: str = Field(description="Rankings / pairs / HH file, a datasets id, or @rank.")
    eval_data: str | None = Field(None, description="Extra held-out rankings or pairs to report accuracy on.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of PROMPTS held out for accuracy.")
    max_records: int | None = Field(None, gt=0, description="Use only the first N records of data.")
    max_bad_records: float = Field(0.01, ge=0, description=MAX_BAD_RECORDS_HELP)
    pairs: Literal["all", "best_vs_worst", "best_vs_each"] = Field(
        "all", description="Which pairs a K-way ranking gives: all K(K-1)/2, best vs worst, or best vs each other "
        "(kto takes labelled examples instead: method.desirable_top, method.undesirable_bottom).")
    method: MethodConfig = Field(
        default_factory=DPOMethod, description="dpo (TRL DPOTrainer, loss_type picks the loss), kto (KTOTrainer), "
        "or the reference-free orpo / cpo / simpo (trl.experimental): a name, or {type: NAME, ...its settings}.")
    start: Literal["continue", "new"] = Field(
        "continue", description="When model is an adapter: continue = train it further, reference = a frozen "
        "copy on the same base; new = fold it into the base (written once to base/) and train a fresh adapter, "
        "reference = that base with adapters disabled.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Adapter to train when the policy is "
                                   "not already one (lora/dora; full trains every weight).")
    train: DPOTrainConfig = Field(default_factory=DPOTrainConfig, description="batch_size counts PAIRS "
                                  "(KTO: examples, at least 2).")

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.adapter.type in ("prefix", "prompt"):
            raise ValueError("adapter.type: the dpo stage trains lora, dora or full")
        if self.eval_data and self.reference_free:
            raise ValueError(f"eval_data: supported for methods dpo and kto (TRL's {self.method.type} trainer cannot "
                             "prepare a dataset passed to evaluate()); use eval_fraction")
        if isinstance(self.method, KTOMethod) and self.train.batch_size < 2 and self.method.loss_type == "kto":
            raise ValueError("train.batch_size: KTO needs at least 2 examples per micro-batch (its KL estimate "
                             "pairs each prompt with another example's response)")
        return self

    @property
    def reference_free(self) -> bool:
        return not isinstance(self.method, _ReferenceMethod)

    @property
    def precompute_ref_log_probs(self) -> bool:
        return isinstance(self.method, _ReferenceMethod) and self.method.precompute_ref_log_probs


# --------------------------------------------------------------------------- data


def method_rows(cfg: Config, records: list) -> tuple[list[dict], list[str]]:
    """Rows in TRL's format for the method: (chosen, rejected) pairs, or KTO's labelled completions; plus the
    ids of records that give none."""
    from align.preferences.rankings import kto_examples, preference_pairs

    if isinstance(cfg.method, KTOMethod):
        return kto_examples(records, cfg.method.desirable_top, cfg.method.undesirable_bottom)
    return preference_pairs(records, cfg.pairs)


def load_rows(cfg: Config, ctx: StageContext) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Train / held-out rows in TRL's format for the method (pairs, or KTO's labelled completions)."""
    from align.preferences.rankings import drop_duplicate_rows, read_stage_rankings, split_records_by_prompt

    records, read_info = read_stage_rankings(cfg.data, "dpo", cfg.max_records, cfg.max_bad_records)
    train_records, held_records = split_records_by_prompt(records, cfg.eval_fraction, ctx.seed)
    kto = isinstance(cfg.method, KTOMethod)
    train_rows, empty = method_rows(cfg, train_records)
    held_rows, held_empty = method_rows(cfg, held_records) if held_records else ([], [])
    (train_rows, train_dups), (held_rows, held_dups) = drop_duplicate_rows(train_rows), drop_duplicate_rows(held_rows)
    if train_dups + held_dups:
        log.info("dpo: dropped %d duplicate %s (a record repeated: it would weigh its pair twice)",
                 train_dups + held_dups, "examples" if kto else "pairs")
    skipped = empty + held_empty
    if skipped:
        log.warning("dpo: %d record(s) give no %s (every response tied, or identical texts), e.g. %s", len(skipped),
                    "example" if kto else "pair", ", ".join(skipped[:5]))
    if not train_rows:
        raise AlignError(f"dpo: {cfg.data} gives no training {'examples' if kto else 'pairs'}: "
                         f"every ranking of the {len(train_records)} training records is one tie group "
                         f"(or its responses are identical texts), e.g. {', '.join(empty[:3])}")
    if kto and len({r["label"] for r in train_rows}) < 2:
        raise AlignError(f"dpo: KTO needs desirable and undesirable examples; {cfg.data} gives only one kind")
    info = {**read_info, "train_prompts": len({json.dumps(r.prompt) for r in train_records}),
            "heldout_prompts": len({json.dumps(r.prompt) for r in held_records}),
            "skipped_no_pair": len(skipped), "duplicate_pairs": train_dups + held_dups}
    return train_rows, held_rows, info


# --------------------------------------------------------------------------- model


def load_policy(cfg: Config, ctx: StageContext):
    """(model, peft_config or None, reference description, base dir) — one copy of the base weights."""
    from align.models import (
        guard_4bit_cpu_gradients,
        load_causal_lm,
        merged_base,
        peft_config,
        resolve_model_ref,
    )

    model_cfg = cfg.model
    resolved = Path(resolve_model_ref(model_cfg.name))
    is_adapter = (resolved / "adapter_config.json").exists()
    if cfg.adapter.type == "full" and model_cfg.quantization != "none":
        raise AlignError(f"dpo: full fine-tuning of a {model_cfg.quantization} model is not supported; "
                         "use adapter.type: lora (QLoRA) or quantization: none")
    if is_adapter and cfg.start == "continue" and cfg.adapter.type != "full":
        kind = json.loads((resolved / "adapter_config.json").read_text()).get("peft_type")
        if kind != "LORA":
            raise AlignError(f"dpo: the policy adapter {resolved} is {kind}; start: continue needs a LoRA/DoRA "
                             "adapter (use start: new to fold it into the base and train a fresh one)")
        model = load_causal_lm(model_cfg, for_training=True)
        base = model.peft_config["default"].base_model_name_or_path
        reference = ("none (reference-free)" if cfg.reference_free else
                     f"the starting adapter {resolved}, frozen, on the same base weights")
        lora = None
    else:
        if is_adapter:  # start: new (or full): one merged base, written once, then loaded like any model
            model_cfg = model_cfg.model_copy(update={"name": merged_base(model_cfg, ctx.stage_dir, "dpo")})
        base_path = Path(resolve_model_ref(model_cfg.name))
        base = str(base_path.resolve()) if base_path.exists() else model_cfg.name
        model = load_causal_lm(model_cfg, for_training=True)
        lora = peft_config(cfg.adapter, model=model)
        if cfg.reference_free:
            reference = "none (reference-free)"
        elif lora is not None:
            reference = f"the base {base} with adapters disabled"
        elif cfg.precompute_ref_log_probs:
            reference = "the starting model, scored once before training (precomputed)"
        else:
            reference = "a second full copy of the starting model (full fine-tuning)"
    guard_4bit_cpu_gradients(model)
    return model, lora, reference, base, model_cfg


def trainer_classes(method: str):
    """(Config class, Trainer class) of TRL for the method."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def build_trainer(cfg: Config, ctx: StageContext):
    """Rows, model and TRL trainer for the method (not yet trained), plus facts for metrics."""
    from datasets import Dataset
    from transformers import set_seed

    from align.models import guard_4bit_cpu_gradients, load_tokenizer, pick_precision
    from align.trackers import run_name
    from align.training import held_out_eval_args, trainer_args

    train_rows, held_rows, info = load_rows(cfg, ctx)
    set_seed(ctx.seed)  # before a fresh adapter is initialised
    model, lora, reference, base, model_cfg = load_policy(cfg, ctx)
    tokenizer = load_tokenizer(model_cfg.name)
    precision = pick_precision(model_cfg.precision)
    args_cls, trainer_cls = trainer_classes(cfg.method.type)
    args = trainer_args(
        args_cls, cfg.train, ctx.stage_dir / "checkpoints", precision, ctx.seed, **cfg.method.trl_args(),
        max_length=cfg.train.max_length,
        **held_out_eval_args(cfg.train, bool(held_rows)),
        dataset_num_proc=None, run_name=run_name(ctx.run_dir, ctx.name),
    )
    trainer = trainer_cls(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(held_rows) if held_rows else None,
        peft_config=lora,
    )
    guard_4bit_cpu_gradients(trainer.model)  # the reference's no-grad forwards must not repack 4-bit weights
    policy = "continued adapter" if hasattr(model, "peft_config") and lora is None else cfg.adapter.type
    info.update(train_rows=len(train_rows), heldout_rows=len(held_rows), reference=reference, base=base, policy=policy,
                model_cfg=model_cfg, precision=precision, tokenizer=tokenizer)
    return trainer, info


# --------------------------------------------------------------------------- run


def history_rows(log_history: list[dict]) -> list[dict]:
    """Per-log-step training values (loss, reward accuracy/margin, chosen/rejected log-probs, KL)."""
    rows = []
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            rows.append({"step": int(entry["step"]), **{k: float(entry[k]) for k in HISTORY_KEYS if k in entry}})
    return rows


def _first_last(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in rows if key in r]
    return (values[0], values[-1]) if values else (None, None)


def save_policy(trainer, tokenizer, out_dir: Path) -> None:
    """The policy only: TRL's frozen "ref" adapter copy is training machinery, not an output."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config"):
        if trainer.is_world_process_zero():
            model.save_pretrained(str(out_dir), selected_adapters=["default"])
    else:
        trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))


def run(cfg: Config, ctx: StageContext) -> StageResult:
    from align.training import loss_history, mean_train_loss, train

    trainer, info = build_trainer(cfg, ctx)
    tokenizer, model_cfg = info["tokenizer"], info["model_cfg"]
    log.info("dpo: method %s; reference = %s", cfg.method.type, info["reference"])
    started = time.perf_counter()
    output, resume, resumed_step = train(trainer, "dpo")  # stops at the first NaN/inf; resumes from the last checkpoint
    seconds = time.perf_counter() - started

    out_dir = ctx.stage_dir / "model"
    save_policy(trainer, tokenizer, out_dir)
    history = history_rows(trainer.state.log_history)
    first_acc, last_acc = _first_last(history, "rewards/accuracies")
    _, last_margin = _first_last(history, "rewards/margins")
    losses = loss_history(trainer.state.log_history, "loss")
    metrics: dict[str, Any] = {
        "method": cfg.method.type,
        "loss_type": ",".join(cfg.method.loss_type) if isinstance(cfg.method, DPOMethod) else cfg.method.type,
        "reference": info["reference"],
        "train_loss": mean_train_loss(trainer.state.log_history, output.training_loss, resumed_step,
                                      trainer.state.global_step),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "reward_accuracy_first": first_acc,
        "reward_accuracy_last": last_acc,
        "reward_margin_last": last_margin,
        "steps": trainer.state.global_step,
        **{k: info[k] for k in ("records", "hh_split_early", "bad_records", "bad_record_examples")},
        "train_rows": info["train_rows"],
        "heldout_rows": info["heldout_rows"],
        "skipped_no_pair": info["skipped_no_pair"],
        "duplicate_pairs": info["duplicate_pairs"],
        "train_seconds": round(seconds, 2),
        "resumed_from": resume,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "policy": info["policy"],
        "quantization": model_cfg.quantization,
    }
    if info["heldout_rows"]:
        metrics.update(heldout_metrics(final_eval(trainer), cfg))
    if cfg.eval_data:
        extra = extra_eval(cfg, ctx, trainer)
        metrics.update({f"eval_data_{k}": v for k, v in heldout_metrics(extra, cfg).items()})
    if trainer.is_world_process_zero():
        (ctx.stage_dir / "loss_history.json").write_text(json.dumps(losses))
        (ctx.stage_dir / "history.json").write_text(json.dumps(history))
    del trainer
    return StageResult(outputs={"model": str(out_dir)}, metrics=metrics)


def final_eval(trainer) -> dict[str, float]:
    """Held-out metrics at the last step: the evaluation the trainer logged there (eval_steps = save_steps often
    lands on the last step), else one now. Evaluating twice doubles the held-out cost for the same numbers."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals and evals[-1].get("step") == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def heldout_metrics(result: dict[str, float], cfg: Config) -> dict[str, Any]:
    """Implicit-reward accuracy/margin, chosen/rejected log-probs and the log-ratio to the reference."""
    out: dict[str, Any] = {}
    names = {"eval_rewards/accuracies": "heldout_reward_accuracy", "eval_rewards/margins": "heldout_reward_margin",
             "eval_logps/chosen": "heldout_logp_chosen", "eval_logps/rejected": "heldout_logp_rejected",
             "eval_kl": "heldout_kl", "eval_loss": "heldout_loss"}
    for key, name in names.items():
        if key in result:
            out[name] = result[key]
    if "eval_rewards/chosen" in result and not cfg.reference_free:
        # β·log π/π_ref on the chosen responses → mean log-ratio (how far the policy moved on data it saw
        # nothing of; eval's sampled KL against @sft is the KL proper)
        out["heldout_logratio_chosen"] = result["eval_rewards/chosen"] / cfg.method.beta
    return out


def extra_eval(cfg: Config, ctx: StageContext, trainer) -> dict[str, float]:
    from datasets import Dataset

    from align.preferences.rankings import read_stage_rankings

    records, _ = read_stage_rankings(cfg.eval_data, "dpo", None, cfg.max_bad_records)
    rows, _ = method_rows(cfg, records)
    if not rows:
        raise AlignError(f"dpo.eval_data: {cfg.eval_data} gives no pairs")
    return trainer.evaluate(Dataset.from_list(rows))
