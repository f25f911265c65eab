"""Supervised fine-tuning on instruction data, with the loss on responses only.

Built on TRL's SFTTrainer: every example is a conversational prompt/completion pair, so TRL
applies the model's chat template and masks the prompt tokens out of the loss (for any chat
template, with or without `{% generation %}` markers). LoRA/DoRA/prefix/prompt tuning through
peft, QLoRA through a 4-bit base, or full fine-tuning.

Outputs: ``model/`` (a PEFT adapter or a full checkpoint, plus tokenizer), optionally
``merged/`` (adapter folded into the base; loads in plain transformers), ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.data import DataConfig, load_examples, split_examples
from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig, adapter_problem
from align.stages import StageContext, StageResult
from align.training import TrainConfig

log = logging.getLogger("align.sft")


class Config(BaseModel):
    """The `sft:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(description="Base model to fine-tune (string shorthand: just the reference).")
    data: DataConfig = Field(description="Instruction data (string shorthand: just the path or @stage).")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="LoRA by default; type: full for all weights.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    packing: bool = Field(False, description="Pack several short examples into one max_length sequence.")
    merge: bool = Field(False, description="Also write merged/: the adapter folded into a full-precision base.")

    @model_validator(mode="after")
    def _adapter_fits_model(self) -> Config:
        if problem := adapter_problem(self.model, self.adapter):
            raise ValueError(problem)
        return self


def build_trainer(cfg: Config, ctx: StageContext):
    """Load data, tokenizer and model and wire them into TRL's SFTTrainer (not yet trained)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from align.models import (
        check_adapter_fits,
        end_of_turn_token,
        guard_4bit_cpu_gradients,
        load_causal_lm,
        load_tokenizer,
        merged_base,
        peft_config,
        pick_precision,
    )
    from align.trackers import run_name
    from align.training import held_out_eval_args, trainer_args

    model_cfg = cfg.model
    data_cfg = cfg.data
    check_adapter_fits("sft", model_cfg, cfg.adapter)
    if cfg.packing and cfg.adapter.type in ("prefix", "prompt"):
        raise AlignError("sft: packing is not supported with prefix/prompt tuning (virtual tokens break packed positions)")

    from transformers import set_seed

    set_seed(ctx.seed)  # before the adapter is created: TRL initialises LoRA weights before Trainer seeds
    examples = load_examples(data_cfg)
    train_examples, eval_examples = split_examples(examples, data_cfg.eval_fraction, ctx.seed)
    precision = pick_precision(model_cfg.precision)
    tokenizer = load_tokenizer(model_cfg.name)
    if cfg.adapter.type != "full":
        # From an adapter checkpoint: a fresh adapter on a base with that adapter folded in, saved once
        # (stage_dir/base), so the new adapter names the weights it was trained on.
        model_cfg = model_cfg.model_copy(update={"name": merged_base(model_cfg, ctx.stage_dir, "sft")})
    model = load_causal_lm(model_cfg, for_training=True)

    turn_end = end_of_turn_token(tokenizer)
    extra = {"eos_token": turn_end} if turn_end else {}  # TRL then makes it the tokenizer's EOS (saved with the model)
    args = trainer_args(
        SFTConfig, cfg.train, ctx.stage_dir / "checkpoints", precision, ctx.seed, **extra,
        run_name=run_name(ctx.run_dir, ctx.name),
        max_length=cfg.train.max_length, packing=cfg.packing, completion_only_loss=True,
        **held_out_eval_args(cfg.train, bool(eval_examples)),
        dataset_num_proc=None,
        include_num_input_tokens_seen="non_padding",  # kept in each checkpoint, so it counts across a resume
    )
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        peft_config=peft_config(cfg.adapter, model=model),
    )
    guard_4bit_cpu_gradients(trainer.model)
    dropped = 0
    if not cfg.packing:  # packing never drops: it cuts the token stream into max_length chunks
        dropped = check_truncation_drops(len(trainer.train_dataset), train_examples, tokenizer, cfg.train.max_length,
                                         "training")
        if eval_examples:
            check_truncation_drops(len(trainer.eval_dataset), eval_examples, tokenizer, cfg.train.max_length, "held-out")
    info = {"model_cfg": model_cfg, "precision": precision, "train_examples": len(train_examples) - dropped,
            "dropped_too_long": dropped,
            "eval_examples": len(eval_examples), "tokenizer": tokenizer}
    return trainer, info


def prompt_lengths(tokenizer: Any, examples: list[dict]) -> list[int]:
    """Tokens of each example's prompt with the chat template (what must fit before any response token)."""
    texts = [tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True) for ex in examples]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def check_truncation_drops(kept: int, examples: list[dict], tokenizer: Any, max_length: int, which: str) -> int:
    """Say how many examples TRL dropped because max_length left none of their response; fail if it was all.

    SFTTrainer cuts each example to max_length and silently drops those whose response is cut away
    entirely (the prompt alone fills max_length); when that is every example, the Trainer fails later
    with "num_samples=0". Returns the number dropped.
    """
    dropped = len(examples) - kept
    if dropped <= 0:
        return 0
    lengths = prompt_lengths(tokenizer, examples)
    message = (f"sft: {dropped} of {len(examples)} {which} examples dropped because sft.train.max_length={max_length} "
               f"leaves no response token to learn from (their prompt alone fills it; prompts here are "
               f"{min(lengths)} to {max(lengths)} tokens with the chat template); raise sft.train.max_length "
               f"(to at least {max(lengths) + 1} to keep every example)")
    if kept == 0:
        raise AlignError(message)
    log.warning(message)
    return dropped


def run(cfg: Config, ctx: StageContext) -> StageResult:
    from align.training import loss_history, mean_train_loss, train

    trainer, info = build_trainer(cfg, ctx)
    model_cfg, precision, tokenizer = info["model_cfg"], info["precision"], info["tokenizer"]
    started = time.perf_counter()
    output, resume, resumed_step = train(trainer, "sft")  # stops at the first NaN/inf; resumes from the last checkpoint
    seconds = time.perf_counter() - started

    out_dir = ctx.stage_dir / "model"
    trainer.save_model(str(out_dir))  # writes on the main process only
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))
    history = trainer.state.log_history
    losses = loss_history(history, "loss")
    # The whole run's tokens (restored with a checkpoint); TRL's logged num_tokens restarts at 0 on a resume.
    tokens = trainer.state.num_input_tokens_seen or max((e.get("num_tokens", 0) for e in history), default=0)
    session_tokens = tokens - getattr(trainer, "_initial_num_input_tokens_seen", 0)  # this train() call's
    metrics: dict[str, Any] = {
        "train_loss": mean_train_loss(history, output.training_loss, resumed_step, trainer.state.global_step),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "steps": trainer.state.global_step,
        "examples": info["train_examples"],
        "dropped_too_long": info["dropped_too_long"],
        "eval_examples": info["eval_examples"],
        "train_seconds": round(seconds, 2),
        "tokens": int(tokens),
        "tokens_per_second": round(session_tokens / seconds, 1) if session_tokens > 0 and seconds > 0 else None,
        "resumed_from": resume,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter": cfg.adapter.type,
        "quantization": model_cfg.quantization,
        "precision": precision.dtype_name + ("+bf16-autocast" if precision.bf16 and precision.use_cpu else ""),
    }
    if info["eval_examples"]:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    outputs = {"model": str(out_dir)}
    if not trainer.is_world_process_zero():
        return StageResult(outputs=outputs, metrics=metrics)
    (ctx.stage_dir / "loss_history.json").write_text(json.dumps(losses))
    if cfg.merge:
        outputs["merged"] = str(merge_adapter(out_dir, ctx.stage_dir / "merged", cfg.adapter.type))
    del trainer
    return StageResult(outputs=outputs, metrics=metrics)


def merge_adapter(adapter_dir, out_dir, adapter_type: str):
    """Fold a LoRA/DoRA adapter into a full-precision copy of its base (never into 4-bit weights)."""
    import torch
    from peft import AutoPeftModelForCausalLM

    from align.models import load_tokenizer

    if adapter_type == "full":
        return adapter_dir
    if adapter_type not in ("lora", "dora"):
        raise AlignError(f"sft: merge is only possible for lora/dora adapters, not {adapter_type}")
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir))
    load_tokenizer(str(adapter_dir)).save_pretrained(str(out_dir))
    return out_dir
