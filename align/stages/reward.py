"""Reward model training from rankings (InstructGPT step 2): a scalar head learns which response is better.

Data: rankings (K responses per prompt, best → worst, ties allowed), plain pairs or Anthropic HH
pairs (K = 2); records sharing a prompt are merged into one prompt group. Held-out prompts
(eval_fraction) measure pairwise accuracy.

Why not TRL's RewardTrainer: it takes (chosen, rejected) pairs, so a K-response ranking becomes
K·(K−1)/2 independent pairs, each response is forwarded K−1 times per epoch, and prompts with many
responses dominate the loss. InstructGPT puts a prompt's K responses in ONE batch element (each
response forwarded once) and weighs prompts equally. So: a `transformers.Trainer` (its loop,
checkpoints, resume, schedules untouched) with our collator and `compute_loss`.

Speed on long transcripts: every row is truncated once when encoded (before batching), batches pad to
their own longest row and hold prompts of similar length (`group_by_length`), and dropout is off
(`disable_dropout`, as in TRL): with dropout on, attention on CPU materialises its [L, L] probabilities
(MiniLM, full fine-tuning: 1.2x the peak RSS at 16 rows x 128 tokens, ~1.7x at 32 x 256; see
``benchmarks/bench_reward.py --long``). TRL's RewardTrainer looks faster on long data mainly because it
drops every pair longer than max_length; on the same pairs the two run at the same speed.

After training, training-set accuracy and the normalisation statistics are computed on seeded samples
(accuracy_pairs, normalize_samples): scoring every training response cost more than the evaluation it
reports (~7 min of a 23 min HH run). Held-out accuracy always uses every held-out pair.

Outputs (``model/``): PEFT adapter (LoRA/DoRA on a SEQ_CLS model, score head saved with it) or a full
checkpoint, tokenizer, ``align_reward.json``, ``reward_normalization.json``; ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig, adapter_problem
from align.preferences.rankings import MAX_BAD_RECORDS_HELP
from align.stages import StageContext, StageResult
from align.training import TrainConfig

log = logging.getLogger("align.reward")


class Config(BaseModel):
    """The `reward:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(description="Base: causal LM (e.g. @sft, tiny-llama) or an encoder dir (BERT-style).")
    data: str = Field(description="Rankings / pairs / HH file, or @rank.", json_schema_extra={"input": "rankings"})
    eval_data: str | None = Field(None, description="Extra held-out rankings or pairs to report accuracy on.",
                                  json_schema_extra={"input": "rankings"})
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of PROMPTS held out for accuracy.")
    max_records: int | None = Field(None, gt=0, description="Use only the first N records of data.")
    max_bad_records: float = Field(0.01, ge=0, description=MAX_BAD_RECORDS_HELP)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="lora/dora (score head trained too) "
                                   "or full; quantization: 4bit on the model gives QLoRA.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="batch_size counts PROMPTS (each with all "
                               "its responses).")
    margin: float = Field(0.0, ge=0, description="Loss −log σ(r_better − r_worse − margin); 0 = InstructGPT.")
    loss: Literal["pairwise", "plackett_luce"] = Field(
        "pairwise", description="pairwise: InstructGPT's mean −log σ(r_b − r_w) over a prompt's pairs; "
        "plackett_luce: the listwise likelihood of each ranking (a tied response competes only with those "
        "ranked below it; see align.preferences.reward_model.plackett_luce_loss).")
    format: Literal["auto", "chat", "pair"] = Field(
        "auto", description="chat: chat template (causal LMs); pair: 'prompt [SEP] response' (encoders).")
    normalize_data: str | None = Field(None, description="Responses whose mean reward is set to 0 (prompt/completion "
                                       "data, e.g. SFT samples); default: every response in the training rankings.",
                                       json_schema_extra={"input": "data"})
    score_batch_size: int = Field(16, gt=0, description="Rows per forward pass when scoring for eval/normalization.")
    accuracy_pairs: int | None = Field(
        512, gt=0, description="After training, training-set accuracy is measured on a random sample of training "
        "prompts holding at least this many pairs (±0.04 at 95%; scoring every pair of a large set took longer than "
        "an evaluation needs); None = every pair. Held-out accuracy always uses every held-out pair.")
    normalize_samples: int | None = Field(
        1024, gt=0, description="Responses scored for the normalisation mean/std: a random sample of normalize_data "
        "or of the training responses (1,024 puts the mean within ~0.06 std at 95%); None = all of them.")
    disable_dropout: bool = Field(True, description="Train with dropout off (as TRL's RewardTrainer): steady "
                                  "rewards, and on CPU attention runs fused instead of materialising [L, L] "
                                  "probabilities (less memory on long inputs).")
    group_by_length: bool = Field(True, description="Batch prompts of similar token length together (random "
                                  "mega-batches of 50 batches, sorted inside), so batches pad less.")
    cache_frozen_layers_gib: float = Field(
        2.0, ge=0, description="With an adapter on the top layers only (adapter.top_layers) and more than one "
        "epoch: compute the frozen bottom layers once, in the first epoch, and replay their output (kept in "
        "host memory, up to this many GiB) in the later ones; same result, fewer FLOPs. 0 = off.")

    @model_validator(mode="after")
    def _adapter_fits_model(self) -> Config:
        if problem := adapter_problem(self.model, self.adapter):
            raise ValueError(problem)
        return self


def make_trainer_class():
    """Trainer with our loss; built lazily so recipe validation does not import transformers."""
    from transformers import Trainer

    from align.preferences.reward_model import plackett_luce_loss, ranking_loss

    class RankingRewardTrainer(Trainer):
        """Only compute_loss (and logging its stats) changes; the training loop is transformers'."""

        loss_is_scaled_for_ga = False  # our loss is a mean: the Trainer divides it by grad_accum
        margin = 0.0
        loss_kind = "pairwise"
        group_by_length = False
        trunk_cache = None  # align.frozen_trunk.TrunkCache, or None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rm_stats: dict[str, Any] = {"accuracy": [], "margin": [], "rows": 0}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            better, worse, pair_prompt = inputs.pop("better"), inputs.pop("worse"), inputs.pop("pair_prompt")
            row_ids = inputs.pop("row_ids", None)
            if self.trunk_cache is not None and row_ids is not None and model.training:
                outputs = self.trunk_cache.forward(model, inputs, row_ids)  # frozen layers replayed after epoch 1
            else:
                outputs = model(**inputs)  # ONE forward over every response of the batch's prompts
            rewards = outputs.logits[:, 0].float()  # [N] one per response row
            if self.loss_kind == "plackett_luce":
                loss = plackett_luce_loss(rewards, better, worse, pair_prompt)
            else:
                loss = ranking_loss(rewards, better, worse, pair_prompt, self.margin)
            diff = (rewards[better] - rewards[worse]).detach()
            self.rm_stats["accuracy"].append((diff > 0).float().mean().item())
            self.rm_stats["margin"].append(diff.mean().item())
            self.rm_stats["rows"] += int(rewards.shape[0])
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            """transformers' LengthGroupedSampler over each prompt's padded size (rows x longest row); its
            own length lookup needs an `input_ids` key our prompt groups do not have."""
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=dataset.lengths)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            stats = self.rm_stats
            if stats["accuracy"] and "loss" in logs:
                logs["accuracy"] = sum(stats["accuracy"]) / len(stats["accuracy"])
                logs["margin"] = sum(stats["margin"]) / len(stats["margin"])
                stats["accuracy"].clear()
                stats["margin"].clear()
            super().log(logs, start_time)

    return RankingRewardTrainer


class GroupDataset:
    """Encoded prompt groups (a list is all the Trainer needs: __len__ and __getitem__)."""

    def __init__(self, items: list[dict]):
        self.items = items
        # padded size of each prompt group in a batch: its rows x its longest row
        self.lengths = [len(x["responses"]) * max(len(r["input_ids"]) for r in x["responses"]) for x in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def build_trainer(model, tokenizer, groups: list, train: TrainConfig, output_dir: Path, precision, seed: int, *,
                  text_format: str = "chat", margin: float = 0.0, loss: str = "pairwise",
                  disable_dropout: bool = True, group_by_length: bool = True, cache_frozen_layers_gib: float = 0.0,
                  run_name: str | None = None):
    """A Trainer over prompt groups: one batch element per prompt, all its responses in one forward.

    Every row is truncated to max_length when encoded (once, before training), batches are padded to
    their own longest row, and (group_by_length) hold prompts of similar length. cache_frozen_layers_gib > 0:
    the frozen bottom layers' output is recorded in the first epoch and replayed in the others
    (align.frozen_trunk), when it fits in that much memory.
    """
    import torch
    from transformers import TrainingArguments

    from align.preferences.reward_model import collate_groups, encode_group
    from align.training import trainer_args

    items = [encode_group(tokenizer, g, text_format, train.max_length) for g in groups]
    next_id = 0
    for item in items:  # a stable id per response row: the trunk cache's key
        item["row_ids"] = list(range(next_id, next_id + len(item["responses"])))
        next_id += len(item["responses"])
    args = trainer_args(TrainingArguments, train, output_dir, precision, seed, run_name=run_name)
    if disable_dropout:  # not TRL's disable_dropout_in_model: it also zeroes an adapter's own lora dropout setting
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Dropout) and "lora_dropout" not in name:
                module.p = 0.0
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=GroupDataset(items),
        data_collator=lambda features: collate_groups(features, tokenizer.pad_token_id),
    )
    trainer.margin, trainer.loss_kind = margin, loss
    trainer.group_by_length = group_by_length
    if text_format == "chat" and cache_frozen_layers_gib > 0:  # rows are right-padded (pad_rows)
        from align.frozen_trunk import trunk_cache_for

        tokens = sum(len(r["input_ids"]) for item in items for r in item["responses"])
        epochs = train.epochs if train.max_steps <= 0 else train.max_steps * train.batch_size * train.grad_accum / len(items)
        trainer.trunk_cache = trunk_cache_for(model, tokens, cache_frozen_layers_gib, epochs)
    return trainer


def scoring_sample(groups: list, min_pairs: int | None, min_responses: int | None, seed: int) -> list[int]:
    """Prompt groups to score after training: the shortest prefix of a seeded random order holding at least
    `min_pairs` pairs and `min_responses` responses (None: every group, in order). The same seed gives the
    same order, so a sample with smaller minimums is a prefix of this one (scored once, used twice)."""
    import random

    order = list(range(len(groups)))
    if min_pairs is None or min_responses is None:
        return order
    random.Random(seed).shuffle(order)
    taken, pairs, responses = [], 0, 0
    for i in order:
        if pairs >= min_pairs and responses >= min_responses:
            break
        taken.append(i)
        pairs, responses = pairs + len(groups[i].pairs), responses + len(groups[i].responses)
    return taken


def score_training_groups(trainer, groups_per_batch: int, pad_token_id: int,
                          indices: list[int] | None = None) -> list[list[float]] | None:
    """Raw rewards of every training prompt group, replaying the frozen bottom layers the trunk cache holds.

    After training, the cache has the bottom layers' output of every training row, so scoring them again
    needs only the top layers (SmolLM2 in the quickstart: 8 of 30). The rows and their padding are the
    same as RewardModel.score_groups (right padding, positions 0..n-1), so the scores match to float
    rounding. `indices`: only those groups (default all). None when there is no complete cache: the caller
    scores the usual way.
    """
    import torch

    from align.preferences.reward_model import collate_groups

    cache, items = trainer.trunk_cache, trainer.train_dataset.items
    if indices is not None:
        items = [items[i] for i in indices]
    if cache is None or not all(i in cache.rows for item in items for i in item["row_ids"]):
        return None
    model = trainer.model
    device = next(model.parameters()).device
    counters = cache.hits, cache.misses  # the metrics count training batches only
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    with torch.no_grad():
        for start in range(0, len(items), groups_per_batch):
            chunk = items[start : start + groups_per_batch]
            batch = collate_groups(chunk, pad_token_id)
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            rewards = cache.forward(model, inputs, batch["row_ids"]).logits[:, 0].float().tolist()
            for item in chunk:
                out.append(rewards[: len(item["responses"])])
                rewards = rewards[len(item["responses"]) :]
    model.train(was_training)
    cache.hits, cache.misses = counters
    return out


def run(cfg: Config, ctx: StageContext) -> StageResult:
    from peft import get_peft_model, prepare_model_for_kbit_training

    from align.data import load_examples
    from align.models import (
        check_adapter_fits,
        guard_4bit_cpu_gradients,
        load_sequence_classifier,
        load_tokenizer,
        merged_base,
        peft_config,
        pick_precision,
    )
    from align.preferences.rankings import group_by_prompt, read_stage_rankings, split_by_prompt
    from align.preferences.reward_model import (
        META_FILE,
        NORM_FILE,
        RewardModel,
        detect_format,
        normalization_stats,
        pair_metrics,
    )
    from align.trackers import run_name as tracker_run_name
    from align.training import loss_history, mean_train_loss, train

    if cfg.loss == "plackett_luce" and cfg.margin:
        raise AlignError("reward: margin applies to loss: pairwise only; drop it or use loss: pairwise")
    if cfg.adapter.type in ("prefix", "prompt"):
        raise AlignError(f"reward: adapter type {cfg.adapter.type} is not supported for reward models; "
                         "use lora, dora or full")
    check_adapter_fits("reward", cfg.model, cfg.adapter)

    # ---- data: prompt groups, split by prompt
    records, read_info = read_stage_rankings(cfg.data, "reward", cfg.max_records, cfg.max_bad_records)
    groups = group_by_prompt(records)
    duplicate_pairs = sum(g.duplicate_pairs for g in groups)
    if duplicate_pairs:
        log.info("reward: dropped %d duplicate pairs (same prompt, better and worse response as an earlier record)",
                 duplicate_pairs)
    ranked = [g for g in groups if g.pairs]  # a prompt whose responses all tie teaches nothing
    if not ranked:
        raise AlignError(f"reward: {cfg.data} has no usable pairs (every ranking is a single tie group)")
    usable, heldout = split_by_prompt(ranked, cfg.eval_fraction, ctx.seed)

    # ---- model: base (adapters merged first), tokenizer, scalar head, adapter
    model_cfg = cfg.model
    base = merged_base(model_cfg, ctx.stage_dir, "reward")
    model_cfg = model_cfg.model_copy(update={"name": base})
    text_format = detect_format(base) if cfg.format == "auto" else cfg.format
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "right"
    if text_format == "chat":
        tokenizer.truncation_side = "left"  # over-long conversations keep their end, where the score is read
    precision = pick_precision(model_cfg.precision)
    from transformers import set_seed

    set_seed(ctx.seed)  # the score head and adapter start the same whatever ran before (--only reward, --from)
    model = load_sequence_classifier(model_cfg, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # training forwards need no KV cache
    if cfg.adapter.type != "full":
        if model_cfg.quantization != "none":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
        lora = peft_config(cfg.adapter, task_type="SEQ_CLS", model=model)
        head = [n for n in ("score", "classifier") if hasattr(model, n)]
        lora.modules_to_save = head  # the freshly initialised scalar head is trained and saved with the adapter
        model = get_peft_model(model, lora)
    guard_4bit_cpu_gradients(model)

    checkpoints = ctx.stage_dir / "checkpoints"
    trainer = build_trainer(model, tokenizer, usable, cfg.train, checkpoints, precision, ctx.seed,
                            text_format=text_format, margin=cfg.margin, loss=cfg.loss,
                            disable_dropout=cfg.disable_dropout, group_by_length=cfg.group_by_length,
                            cache_frozen_layers_gib=cfg.cache_frozen_layers_gib,
                            run_name=tracker_run_name(ctx.run_dir, ctx.name))
    guard_4bit_cpu_gradients(trainer.model)
    started = time.perf_counter()
    output, resume, resumed_step = train(trainer, "reward")  # stops at the first NaN/inf; resumes from the last checkpoint
    seconds = time.perf_counter() - started
    rows = trainer.rm_stats["rows"]

    # ---- evaluate: pairwise accuracy on a sample of training prompts (accuracy_pairs) and on every held-out one
    scoring_started = time.perf_counter()
    rm = RewardModel(trainer.model, tokenizer, text_format, cfg.train.max_length)
    per_batch = max(1, cfg.score_batch_size // max(len(g.responses) for g in usable))
    norm_need = 0 if cfg.normalize_data else cfg.normalize_samples  # training responses stand in for SFT samples
    sample = scoring_sample(usable, cfg.accuracy_pairs, norm_need, ctx.seed)
    scored = (score_training_groups(trainer, per_batch, tokenizer.pad_token_id, sample)
              or rm.score_groups([usable[i] for i in sample], cfg.score_batch_size))
    rewards_of = dict(zip(sample, scored))
    accuracy_groups = scoring_sample(usable, cfg.accuracy_pairs, 0, ctx.seed)  # a prefix of the same order
    train_stats = pair_metrics([rewards_of[i] for i in accuracy_groups], [usable[i] for i in accuracy_groups])
    train_seconds_scoring = time.perf_counter() - scoring_started

    # ---- normalize: mean reward of the SFT samples → 0 (InstructGPT, before RL), on normalize_samples of them
    if cfg.normalize_data:
        import random

        examples = load_examples(cfg.normalize_data)
        if cfg.normalize_samples is not None and len(examples) > cfg.normalize_samples:
            examples = random.Random(ctx.seed).sample(examples, cfg.normalize_samples)
        norm_raw = rm.score_raw([e["prompt"] for e in examples], [e["completion"][0]["content"] for e in examples],
                                cfg.score_batch_size)
    else:
        norm_raw = [r for i in sample for r in rewards_of[i]]
    norm = normalization_stats(norm_raw)
    norm_seconds = time.perf_counter() - scoring_started - train_seconds_scoring
    held_started = time.perf_counter()
    held_stats = pair_metrics(rm.score_groups(heldout, cfg.score_batch_size), heldout) if heldout else {}
    held_seconds = time.perf_counter() - held_started
    log.info("reward: scored %d of %d training pairs for accuracy and %d responses for normalisation in %.1f s; "
             "%d held-out pairs in %.1f s", train_stats["pairs"], sum(len(g.pairs) for g in usable), norm["n"],
             train_seconds_scoring + norm_seconds, held_stats.get("pairs", 0), held_seconds)

    # ---- save: adapter or full checkpoint + tokenizer + our two small json files
    out_dir = ctx.stage_dir / "model"
    is_adapter = cfg.adapter.type != "full"
    trainer.model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if text_format == "chat":  # transformers does not save truncation_side; loaders read it from here
        tok_cfg = out_dir / "tokenizer_config.json"
        tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "truncation_side": "left"}, indent=2))
    (out_dir / NORM_FILE).write_text(json.dumps(norm, indent=2))
    meta = {"base": base, "adapter": is_adapter, "max_length": cfg.train.max_length, "format": text_format,
            "quantization": model_cfg.quantization}
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))

    losses = loss_history(trainer.state.log_history, "loss")
    (ctx.stage_dir / "loss_history.json").write_text(json.dumps(losses))
    metrics: dict[str, Any] = {
        "accuracy": train_stats["accuracy"],
        "heldout_accuracy": held_stats.get("accuracy"),
        "heldout_accuracy_ci": held_stats.get("accuracy_ci"),  # 95%, resampling held-out prompts
        "heldout_pairs": held_stats.get("pairs", 0),
        "heldout_fully_ordered": held_stats.get("fully_ordered"),
        "accuracy_by_k": held_stats.get("accuracy_by_k") or train_stats["accuracy_by_k"],
        "mean_margin": held_stats.get("mean_margin") if heldout else train_stats["mean_margin"],
        "loss": cfg.loss,
        "train_loss": mean_train_loss(trainer.state.log_history, output.training_loss, resumed_step,
                                      trainer.state.global_step),
        "first_loss": losses[0][1] if losses else None,
        "last_loss": losses[-1][1] if losses else None,
        "steps": trainer.state.global_step,
        "prompts": len(usable),
        "heldout_prompts": len(heldout),
        "skipped_all_tied": len(groups) - len(ranked),
        **read_info,  # records, hh_split_early, bad_records, bad_record_examples
        "train_pairs": sum(len(g.pairs) for g in usable),
        "accuracy_pairs": train_stats["pairs"],  # the training pairs "accuracy" was measured on (accuracy_pairs)
        "normalization_responses": norm["n"],
        "scoring_seconds": round(train_seconds_scoring + norm_seconds, 2),
        "heldout_scoring_seconds": round(held_seconds, 2),
        "duplicate_pairs": duplicate_pairs,
        "forward_rows": rows,  # response rows forwarded in training: each response once per epoch
        "trunk_cache": ({"layers": cache.layers, "replayed_batches": cache.hits, "computed_batches": cache.misses}
                        if (cache := trainer.trunk_cache) is not None else None),
        "train_seconds": round(seconds, 2),
        "resumed_from": resume,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "adapter": cfg.adapter.type,
        "quantization": model_cfg.quantization,
        "format": text_format,
        "normalization_mean": round(norm["mean"], 5),
        "normalization_std": round(norm["std"], 5),
    }
    if cfg.eval_data:
        extra_records, extra_info = read_stage_rankings(cfg.eval_data, "reward", None, cfg.max_bad_records)
        extra = group_by_prompt(extra_records)
        extra_stats = pair_metrics(rm.score_groups(extra, cfg.score_batch_size), extra)
        metrics["eval_data_accuracy"] = extra_stats["accuracy"]
        metrics["eval_data_accuracy_ci"] = extra_stats["accuracy_ci"]
        metrics["eval_data_pairs"] = extra_stats["pairs"]
        metrics["eval_data_bad_records"] = extra_info["bad_records"]
        metrics["eval_data_accuracy_by_k"] = extra_stats["accuracy_by_k"]
    del trainer, model, rm
    return StageResult(outputs={"model": str(out_dir)}, metrics=metrics)
