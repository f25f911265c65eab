"""RLHF with PPO (InstructGPT step 3): make the policy earn reward without drifting from ref_policy.

Our own loop on torch + peft (TRL >= 1.13 has no PPO trainer), following "The N+ Implementation
Details of RLHF with PPO" (Huang et al. 2024) and alpaca_farm's split. Each step:

    rollouts = rollout(queries)                      # sample, cut after EOS, score, old log-probs/values
    adv      = estimate_advantages(rollouts, beta)   # score - beta * KL per token, GAE (or rloo/grpo)
    stats    = step_with_rollouts(rollouts, adv)     # ppo_epochs of clipped policy + value updates
    record_step_stats(...); kl_ctl.update(kl)        # stats.jsonl and train.report_to, adapt beta

With a LoRA policy one copy of the base weights serves every role (see align.ppo.policy).
With ``train.advantage.estimator: rloo`` or ``grpo`` each query is sampled rollout.group_size
times, the group is its own baseline, and no value model is loaded or trained (REINFORCE
leave-one-out, GRPO, Dr. GRPO). Under torchrun / accelerate launch the loop is data-parallel (see
align.ppo.distributed): each process rolls out its shard of the step's queries, the rollouts are
gathered, and every process takes the same update; rank 0 alone writes logs, checkpoints and outputs.
Outputs: ``model/`` (the policy as a PEFT adapter or full checkpoint, plus tokenizer),
``value_head.safetensors`` (gae only), ``stats.jsonl``, ``samples.jsonl``, ``checkpoints/step-N/``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from align.data import DataConfig
from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig, adapter_problem
from align.ppo.config import PPOSettings, RewardConfig
from align.stages import StageContext, StageResult
from align.trackers import Trackers, check_installed, run_name

log = logging.getLogger("align")


class Config(BaseModel):
    """The `ppo:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    policy: ModelConfig = Field(description="Starting policy: @sft (a LoRA adapter or full model), a model dir or alias.")
    reward: RewardConfig = Field(description="@reward, a reward model dir, or `module:function` (string shorthand).")
    prompts: DataConfig = Field(description="Queries: prompt-only JSONL, Alpaca/Self-Instruct data, @self_instruct...")
    adapter: AdapterConfig = Field(
        default_factory=AdapterConfig,
        description="Adapter to train when the policy is not already one (type: full trains every weight).",
    )
    train: PPOSettings = Field(default_factory=PPOSettings, description="The PPO loop: optimisation here; rollout, "
                               "advantage, kl, value, ptx and log in their sections.")

    @model_validator(mode="after")
    def _adapter_fits_model(self) -> Config:
        if problem := adapter_problem(self.policy, self.adapter):
            raise ValueError(problem)
        return self


def run(cfg: Config, ctx: StageContext) -> StageResult:
    import torch
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from align.data import load_examples
    from align.divergence import in_step, is_finite
    from align.ppo import distributed
    from align.ppo.checkpoint import (
        latest_checkpoint,
        load_checkpoint,
        rng_state,
        save_checkpoint,
        truncate_jsonl,
    )
    from align.ppo.policy import load_roles, save_policy
    from align.ppo.queries import QuerySampler, load_queries
    from align.ppo.rollout import encode_queries, rollout
    from align.ppo.scoring import FunctionScorer, load_scorer, start_value_from_reward
    from align.ppo.stats import StatsLog, read_stats, record_step_stats
    from align.ppo.update import PtxBatches, estimate_advantages, rows_per_process, step_with_rollouts
    from align.rl import AdaptiveKLController, FixedKLController

    s = cfg.train
    check_installed(s.report_to, "ppo.train.report_to")  # before any model loads
    distributed.init_from_env()  # before loading models: on CUDA it picks this process's GPU
    rank, world = distributed.rank(), distributed.world_size()
    main = distributed.is_main()
    rows_per_process(s, world)  # batch sizes must split across processes: fail before loading anything
    policy_cfg = cfg.policy
    prompts_cfg = cfg.prompts
    set_seed(ctx.seed)

    # ---- models: policy, ref_policy, value_model, reward_model
    roles = load_roles(policy_cfg, cfg.adapter, s.value.model if s.needs_value_model else None)
    scorer = load_scorer(cfg.reward, cfg.reward.source, roles)
    if s.value.init == "reward":
        start_value_from_reward(roles, scorer)
    gold = FunctionScorer(s.log.gold_fn, "gold_fn") if s.log.gold_fn else None
    _speed_notes(roles, s)
    for note in roles.notes:
        log.info("ppo: %s", note)
    if world > 1:
        _check_device(roles.device, rank)
        log.info("ppo: process %d of %d rolls out %d of %d queries per step", rank, world, s.rollout.batch_size // world,
                 s.rollout.batch_size)

    # ---- data: queries (and PPO-ptx demonstrations)
    queries = load_queries(prompts_cfg)
    tokens = encode_queries(roles.tokenizer, queries)
    kept = [i for i, t in enumerate(tokens) if len(t) <= s.rollout.max_prompt_length]
    if not kept:
        raise AlignError(f"ppo: every prompt in {prompts_cfg.path} is longer than rollout.max_prompt_length={s.rollout.max_prompt_length}")
    if len(kept) < len(queries):
        log.warning("ppo: skipped %d prompts longer than %d tokens", len(queries) - len(kept), s.rollout.max_prompt_length)
    queries, tokens = [queries[i] for i in kept], [tokens[i] for i in kept]
    sampler = QuerySampler(len(queries), s.queries_per_step, ctx.seed)
    ptx = None
    if s.ptx.coef > 0:
        ptx = PtxBatches(roles.tokenizer, load_examples(s.ptx.data), s.ptx.max_length, ctx.seed)

    # ---- optimisation state, resumed from the newest checkpoint if a run was interrupted
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=s.lr, eps=s.adam_eps, weight_decay=s.weight_decay)
    kl_ctl = (AdaptiveKLController(s.kl.init_coef, s.kl.target, s.kl.horizon) if s.kl.adaptive
              else FixedKLController(s.kl.init_coef))
    ckpt_root = ctx.stage_dir / "checkpoints"
    start_step, resumed_from = 0, None
    if rank > 0:  # same weights as rank 0 (same seed above), but its own sampling stream
        set_seed((ctx.seed * 1_000_003 + rank) % 2**32)
    latest = distributed.broadcast_object(latest_checkpoint(ckpt_root))  # rank 0's choice, everywhere
    if latest is not None:
        start_step = load_checkpoint(latest, roles, optimizer, kl_ctl, rank)["step"]
        resumed_from = str(latest)
        log.info("ppo: resuming from %s (step %d)", latest, start_step)
    distributed.broadcast_parameters(roles.trainable_parameters())  # start in sync, as DDP does
    logger = None
    if main:
        for name in ("stats.jsonl", "samples.jsonl"):
            truncate_jsonl(ctx.stage_dir / name, start_step)
        trackers = Trackers(s.report_to, ctx.stage_dir / "tensorboard", start_step, tracker_args(s, ctx), roles.model)
        logger = StatsLog(ctx.stage_dir, trackers)

    # ---- the loop
    bar = tqdm(range(start_step, s.steps), desc="ppo", initial=start_step, total=s.steps,
               disable=not s.log.progress or not main)
    started = time.perf_counter()
    last_loss: tuple[int, float] | None = None  # for the message if training diverges
    for step in bar:
        t0 = time.perf_counter()
        lr = s.lr * (1 - step / s.steps) if s.lr_scheduler == "linear" else s.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        # this process's shard of the step's queries, each group_size times in a row (a group)
        batch = [i for i in sampler.indices(step, rank, world) for _ in range(s.rollout.group_size)]
        hint = f"lower ppo.train.lr (now {s.lr:g})"
        first = f"check the policy it started from ({resumed_from or policy_cfg.name}) for NaN/inf weights"
        # NaN/inf: one clear error naming this step (a policy that cannot sample at once was broken before)
        with in_step("ppo", step + 1, last_loss, first if step == start_step else hint, bar):
            rollouts = rollout(roles, scorer, [queries[i] for i in batch], [tokens[i] for i in batch], s, gold)
            if world > 1:  # the recorded lower-layer outputs stay local: updates run rows of every process
                rollouts.trunk = None
            rollouts = distributed.gather_rollouts(rollouts, roles.tokenizer.pad_token_id)  # the global batch
            check_scores(rollouts.scores, scorer.kind)
        with in_step("ppo", step + 1, last_loss, hint, bar):
            kl_coef = kl_ctl.value
            adv = estimate_advantages(rollouts, kl_coef, s)
            t_update = time.perf_counter()
            update_stats = step_with_rollouts(roles, optimizer, rollouts, adv, s, ctx.seed, step, ptx)
            update_stats["time/update_s"] = time.perf_counter() - t_update
            if (step + 1) % s.save_steps == 0 or step + 1 == s.steps:
                check_weights(roles)  # no checkpoint or output with NaN/inf weights
        if is_finite(update_stats.get("loss/total")):
            last_loss = (step + 1, update_stats["loss/total"])
        stats = record_step_stats(rollouts, adv, update_stats, kl_coef)
        kl_ctl.update(stats["objective/kl"], n_steps=s.rollout.batch_size)
        stats.update({"lr": lr, "time/step_s": time.perf_counter() - t0})
        if logger is not None:
            logger.log(step + 1, stats)
            if (step + 1) % s.log.sample_every == 0 or step == 0:
                logger.samples(step + 1, rollouts, s.log.num_samples)
        bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.3f}")
        if (step + 1) % s.save_steps == 0 or step + 1 == s.steps:
            rng_states = distributed.all_gather_object(rng_state()) if world > 1 else None
            if main:
                save_checkpoint(ckpt_root, step + 1, roles, optimizer, kl_ctl, {}, s.save_total_limit, rng_states)
    if logger is not None:
        logger.close()
    seconds = time.perf_counter() - started

    # ---- outputs
    out_dir = ctx.stage_dir / "model"
    value_head_file = ctx.stage_dir / "value_head.safetensors"
    if main:
        save_policy(roles, out_dir)
        if roles.value_head is not None:
            save_file({k: v.contiguous().cpu() for k, v in roles.value_head.state_dict().items()},
                      str(value_head_file))
    distributed.barrier()  # outputs and stats.jsonl are complete before any process moves on
    history = read_stats(ctx.stage_dir / "stats.jsonl")
    metrics = summarize(history)
    metrics.update({
        "resumed_from": resumed_from,
        "train_seconds": round(seconds, 2),
        "ref_policy": roles.ref_kind,
        "reward": scorer.kind,
        "roles": roles.notes,
        "trainable_params": sum(p.numel() for p in roles.trainable_parameters()),
        "prompts": len(queries),
        "world_size": world,
        "advantage": s.advantage.estimator,
    })
    outputs = {"model": str(out_dir)}
    if roles.value_head is not None:
        outputs["value_head"] = str(value_head_file)
    return StageResult(outputs=outputs, metrics=metrics)


def tracker_args(s: PPOSettings, ctx: StageContext) -> dict[str, Any]:
    """The TrainingArguments fields the trackers show for this run (the loop's own settings where one fits)."""
    return {"output_dir": str(ctx.stage_dir), "run_name": run_name(ctx.run_dir, ctx.name), "seed": ctx.seed,
            "learning_rate": s.lr, "max_steps": s.steps, "lr_scheduler_type": s.lr_scheduler,
            "weight_decay": s.weight_decay, "adam_epsilon": s.adam_eps, "max_grad_norm": s.max_grad_norm,
            "per_device_train_batch_size": s.mini_batch_size, "gradient_accumulation_steps": s.grad_accum,
            "save_steps": s.save_steps}


def _speed_notes(roles: Any, s: PPOSettings) -> None:
    """Decide (and say) how rollouts are made cheaper for this model."""
    from align.ppo.policy import find_frozen_layers, merge_blocker

    blocker = merge_blocker(roles) if s.rollout.merge_for_sampling else "ppo.train.rollout.merge_for_sampling is off"
    roles.notes.append("sampling: the policy's LoRA merged into the base weights (restored exactly after)"
                       if blocker is None else f"sampling: unmerged ({blocker})")
    roles.frozen_layers = find_frozen_layers(roles) if s.rollout.reuse_frozen_layers else 0
    if roles.frozen_layers:
        roles.notes.append(f"the {roles.frozen_layers} lower layers carry no adapter: computed once per rollout and "
                           "reused by the ref_policy and every update")
    if s.rollout.precision == "bf16":
        roles.rollout_bf16 = True
        roles.notes.append("sampling, reward scores and old/ref log-probs under bf16 autocast "
                           "(ppo.train.rollout.precision)")


def check_scores(scores: Any, kind: str) -> None:
    """The reward must be finite for every rollout (a NaN reward model is not the policy's fault)."""
    from align.divergence import describe, is_finite
    from align.errors import TrainingDiverged

    if not is_finite(scores):
        bad = next(float(v) for v in scores.flatten() if not is_finite(float(v)))
        raise TrainingDiverged(f"the reward ({kind}) returned {describe(bad)} scores",
                               hint="check ppo.reward: the reward model or function gives NaN/inf for some responses")


def check_weights(roles: Any) -> None:
    """Raise if a trainable weight (policy adapter or weights, value head) holds NaN/inf."""
    from align.divergence import non_finite_parameter
    from align.errors import TrainingDiverged

    head = roles.value_head.named_parameters() if roles.value_head is not None else ()  # none for rloo / grpo
    named = [*roles.model.named_parameters(), *(("value_head." + n, p) for n, p in head)]
    name = non_finite_parameter(named)
    if name is not None:
        raise TrainingDiverged(f"weight {name} became non-finite")


def _check_device(device: Any, rank: int) -> None:
    """Each process must hold its own copy of the models on its own GPU."""
    import torch

    if device.type == "cuda" and device.index != torch.cuda.current_device():
        raise AlignError(
            f"ppo: process {rank} loaded the policy on {device}, not on its own GPU cuda:{torch.cuda.current_device()}; "
            "start one process per GPU (torchrun --nproc_per_node N) and leave device_map unset"
        )


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last mean score and the final KL, from the whole stats.jsonl (resumed runs included)."""
    if not history:
        return {"steps": 0}
    first, last = history[0], history[-1]
    tail = history[-max(1, len(history) // 10) :]
    out: dict[str, Any] = {
        "steps": last["step"],
        "first_score": first["objective/scores"],
        "last_score": last["objective/scores"],
        "last_10pct_score": sum(h["objective/scores"] for h in tail) / len(tail),
        "objective/scores": last["objective/scores"],
        "objective/kl": last["objective/kl"],
        "final_kl": last["objective/kl"],
        "final_kl_coef": last["objective/kl_coef"],
        "eos_fraction": last["eos/fraction"],
        "mean_step_seconds": sum(h["time/step_s"] for h in history) / len(history),
    }
    if "objective/gold" in last:
        out["first_gold"], out["last_gold"] = first["objective/gold"], last["objective/gold"]
        out["gold_score"] = last["objective/gold"]
    return out
