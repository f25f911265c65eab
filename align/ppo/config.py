"""Settings of the `ppo` stage: which models play which role, where prompts come from, PPO knobs.

Defaults follow "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024) where it
gives one (k1 KL in the reward, gamma 1, lam 0.95, clip 0.2, Adam eps 1e-5, no dropout).
The advantage estimator is GAE with a value model by default; rloo and grpo are critic-free
(a group of samples per query is its own baseline) and run in the same loop.

The loop's settings (`ppo.train`) keep the update's optimisation knobs at the top and group the rest
by concern: ``rollout``, ``advantage``, ``kl``, ``value``, ``ptx``, ``log``. ``report_to`` sits at the top,
as in every stage's ``train:`` block.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from align.data import DataConfig
from align.sections import Shorthand
from align.trackers import ReportTo, report_to_field
from align.training import LRScheduler

log = logging.getLogger("align.ppo")

PPO_LR_SCHEDULERS = ("constant", "linear")  # of align.training.LRScheduler


class RewardTerm(BaseModel):
    """One verifiable reward added to the score: weight * fn(prompt, response)."""

    model_config = ConfigDict(extra="forbid")

    function: str = Field(description="`module:function` or `path/file.py:function`, fn(prompt, response) -> float "
                                      "(prompt = the last user message), e.g. align.eval.labeler:gold_score_fn.")
    weight: float = Field(1.0, allow_inf_nan=False, description="Its weight in the sum.")

    @field_validator("function")
    @classmethod
    def _is_function(cls, value: str) -> str:
        if ":" not in value or not value.rsplit(":", 1)[1].isidentifier():
            raise ValueError(f"expected 'module:function' or 'path/file.py:function', got {value!r}")
        return value


class RewardConfig(Shorthand):
    """Where scores come from: a reward model directory or a Python function, plus weighted functions.

    score = weight * source(prompt, response) + sum(term.weight * term.function(prompt, response)):
    e.g. a reward model plus a verifiable checker (RLVR), ``{source: "@reward", functions:
    [{function: "align.eval.labeler:gold_score_fn", weight: 1.0}]}``.
    """

    model_config = ConfigDict(extra="forbid")
    shorthand_key: ClassVar[str] = "source"  # a plain string stands for the source

    source: str = Field(
        description="@reward, a reward model directory, or `module:function` / `path/file.py:function` "
                    "called as fn(prompt, response) -> float (prompt = the last user message)."
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="Weight of the source's score in the sum (0: "
                          "only the functions score; the source still loads).")
    functions: list[RewardTerm] = Field(
        default_factory=list, description="Extra rewards added to the source's score, each {function, weight}: "
                                          "e.g. a verifiable checker next to the reward model.")
    share_base: bool = Field(
        True, description="Load a LoRA reward adapter trained on the policy's base onto the policy's own copy "
                          "of the base weights (one copy in memory). False: load it as a separate model."
    )
    batch_size: int = Field(16, gt=0, description="Responses per reward-model forward pass.")


class RolloutSettings(BaseModel):
    """Sampling the rollouts: how many per step, how long, how random, and how fast."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, gt=0, description="Rollouts (prompt + sampled response) per PPO step.")
    group_size: int = Field(
        1, gt=0, description="Responses sampled per query (G). batch_size counts responses, so a step holds "
                             "batch_size / group_size queries. rloo and grpo need >= 2."
    )
    max_prompt_length: int = Field(256, gt=0, description="Prompts longer than this (in tokens) are skipped.")
    max_new_tokens: int = Field(64, gt=0, description="Response length limit when sampling rollouts.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature; log-probs are recomputed with it.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (1.0 = off). top_k is always off.")
    missing_eos_penalty: float | None = Field(
        None, description="Score given instead of the reward to responses that never emit EOS (None = keep score)."
    )
    generation_batch_size: int | None = Field(
        None, gt=0, description="Prompts per generate() call (None: batch_size); prompts are sorted by length first.")

    # ---- speed (none of these change what is computed, up to float rounding)
    merge_for_sampling: bool = Field(
        True, description="Sample with the policy's LoRA merged into the base weights (restored exactly after); "
                          "4-bit bases, DoRA and tied weights sample unmerged (said in the log)."
    )
    forward_batch_size: int = Field(
        16, gt=0, description="Rollouts per no-grad forward pass (old and ref log-probs, values).")
    reuse_frozen_layers: bool = Field(
        True, description="When the adapters sit on the top layers only (adapter.top_layers), run the frozen lower "
                          "layers once per rollout and reuse their output for the ref_policy and every update."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: sampling, reward scores and old/ref log-probs under bf16 autocast; the update "
                            "keeps the policy's precision. For GPUs: on CPU it measured 3-6x slower (autocast "
                            "re-casts fp32 weights at every op); drift in benchmarks/results/rollout.md."
    )


class AdvantageSettings(BaseModel):
    """How returns become advantages: GAE with a value model, or a critic-free group baseline."""

    model_config = ConfigDict(extra="forbid")

    estimator: Literal["gae", "rloo", "grpo"] = Field(
        "gae", description="gae: a value model and GAE (PPO as in InstructGPT). rloo: REINFORCE leave-one-out "
                           "baseline over the rollout.group_size samples of a query. grpo: group-normalised "
                           "returns (GRPO). rloo and grpo load and train no value model."
    )
    dr_grpo: bool = Field(
        False, description="grpo only: Dr. GRPO (Liu et al. 2025): advantages are returns minus the group mean "
                           "(no division by the group std) and the loss is summed over tokens / "
                           "(rollouts * max_new_tokens) (no per-response length normalisation)."
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor in GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards (scale only) before GAE.")
    whiten_advantages: bool = Field(True, description="gae and rloo: whiten advantages over the whole batch of "
                                                     "rollouts (skipped for a batch whose scores are all equal).")


class KLSettings(BaseModel):
    """The KL(policy || ref_policy) penalty: its weight beta, how it adapts, and where it enters."""

    model_config = ConfigDict(extra="forbid")

    init_coef: float = Field(0.05, ge=0, description="beta: weight of the per-token KL(policy || ref_policy) penalty.")
    adaptive: bool = Field(False, description="Adapt beta toward target (Ziegler et al. 2019).")
    target: float = Field(6.0, gt=0, description="Target KL (nats per response) for the adaptive controller.")
    horizon: int = Field(10000, gt=0, description="Adaptive controller horizon, in rollouts.")
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward.")
    penalty: Literal["reward", "loss"] | None = Field(
        None, description="reward: -beta * KL on every token's reward (InstructGPT; estimator picks the "
                          "estimator). loss: beta * k3 KL(policy || ref_policy) as a loss term (GRPO, Shao et al. "
                          "2024). None: loss for advantage.estimator grpo, reward for gae and rloo."
    )


class ValueSettings(BaseModel):
    """The value model (advantage.estimator gae only): its form, its start, and its loss."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["head", "adapter"] = Field(
        "head", description="gae only: head: a scalar head on the policy trunk's last hidden state; adapter: its "
                            "own LoRA adapter on the shared base plus a head (needs an adapter policy)."
    )
    init: Literal["zero", "reward"] = Field(
        "zero", description="zero: the value head starts at 0; reward: the value model starts as the reward model "
                            "(InstructGPT): needs model: adapter and a reward adapter on the policy's base."
    )
    coef: float = Field(0.1, ge=0, description="Weight of the value loss in the total loss.")
    cliprange: float = Field(0.2, gt=0, description="Value prediction clip around the rollout-time value.")


class PtxSettings(BaseModel):
    """PPO-ptx (InstructGPT): an SFT log-likelihood term on demonstrations, against regressions."""

    model_config = ConfigDict(extra="forbid")

    coef: float = Field(0.0, ge=0, description="PPO-ptx: weight of the SFT log-likelihood on data (0 = off).")
    data: DataConfig | None = Field(None, description="Demonstrations for the PPO-ptx term (path or @stage).")
    max_length: int = Field(512, gt=8, description="Truncate PPO-ptx examples to this many tokens.")


class LogSettings(BaseModel):
    """What the run writes besides checkpoints: stats, sample rollouts, a gold score, a progress bar."""

    model_config = ConfigDict(extra="forbid")

    sample_every: int = Field(10, gt=0, description="Write a few rollouts to samples.jsonl every N steps.")
    num_samples: int = Field(4, gt=0, description="Rollouts written per sample_every.")
    gold_fn: str | None = Field(
        None, description="Optional `module:function` fn(prompt, response) -> float scored on every rollout and "
                          "logged as objective/gold (to plot reward over-optimisation)."
    )
    progress: bool = Field(True, description="Show a tqdm progress bar over steps.")


class PPOSettings(BaseModel):
    """The PPO loop (`ppo.train`): the update's optimisation settings here, each other concern in its section."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, gt=0, description="PPO steps; each = one batch of rollouts, then ppo_epochs of updates.")
    ppo_epochs: int = Field(4, gt=0, description="Passes over each batch of rollouts, reshuffled each pass.")
    mini_batch_size: int = Field(4, gt=0, description="Rollouts per forward/backward pass (micro-batch).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step (an optimizer step sees "
                                                 "mini_batch_size * grad_accum rollouts).")
    lr: float = Field(3e-5, gt=0, description="Adam learning rate (policy adapter, value head/adapter).")
    lr_scheduler: LRScheduler = Field(
        "constant", description="constant, or linear: decay to 0 at the last step (the PPO loop has no warm-up, "
                                "so cosine and constant_with_warmup are for the trainer-based stages).")
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (1e-5 as in OpenAI's lm-human-preferences).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    cliprange: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of an entropy bonus (0 = none).")
    max_approxkl: float | None = Field(
        None, gt=0, description="Skip the rest of a step's updates once an update's policy/approxkl exceeds this "
                                "(cleanrl's target_kl early stopping); None = always run every epoch."
    )
    loss_aggregation: Literal["token", "sequence", "constant"] | None = Field(
        None, description="How per-token policy losses are averaged. token: over all tokens of the optimizer batch; "
                          "sequence: per response, then over responses; constant: sum / (rollouts * "
                          "max_new_tokens). None: token for gae and rloo, sequence for grpo, constant for dr_grpo."
    )
    save_steps: int = Field(50, gt=0, description="Write a checkpoint every N steps (resume point after a kill).")
    save_total_limit: int = Field(2, gt=0, description="Keep only the newest N checkpoints.")
    report_to: ReportTo = report_to_field()

    rollout: RolloutSettings = Field(default_factory=RolloutSettings, description="Sampling the rollouts.")
    advantage: AdvantageSettings = Field(default_factory=AdvantageSettings, description="The advantage estimator.")
    kl: KLSettings = Field(default_factory=KLSettings, description="The KL penalty to the ref_policy.")
    value: ValueSettings = Field(default_factory=ValueSettings, description="The value model (gae only).")
    ptx: PtxSettings = Field(default_factory=PtxSettings, description="PPO-ptx: SFT loss on demonstrations.")
    log: LogSettings = Field(default_factory=LogSettings, description="Stats, samples, gold score, progress bar.")

    @field_validator("lr_scheduler")
    @classmethod
    def _loop_scheduler(cls, value: str) -> str:
        if value not in PPO_LR_SCHEDULERS:
            raise ValueError(f"the PPO loop supports {' and '.join(PPO_LR_SCHEDULERS)}; {value} is a schedule of "
                             "the trainer-based stages (sft, reward, dpo)")
        return value

    @model_validator(mode="after")
    def _check(self) -> PPOSettings:
        per_update = self.mini_batch_size * self.grad_accum
        batch, group = self.rollout.batch_size, self.rollout.group_size
        if batch % per_update:
            raise ValueError(
                f"rollout.batch_size ({batch}) must be a multiple of mini_batch_size * grad_accum "
                f"({self.mini_batch_size} * {self.grad_accum} = {per_update})"
            )
        if self.value.init == "reward" and self.value.model != "adapter":
            raise ValueError("value.init: reward needs value.model: adapter (the reward model's score head reads its "
                             "own adapter's hidden states, not the policy trunk's)")
        if self.ptx.coef > 0 and self.ptx.data is None:
            raise ValueError("ptx.coef > 0 needs ptx.data (demonstrations, e.g. the sft data)")
        if batch % group:
            raise ValueError(f"rollout.batch_size ({batch}) must be a multiple of rollout.group_size ({group}): "
                             "it counts responses, group_size of them per query")
        if self.advantage.estimator != "gae" and group < 2:
            raise ValueError(f"advantage.estimator {self.advantage.estimator} needs rollout.group_size >= 2 "
                             "(samples per query form the baseline)")
        if self.advantage.dr_grpo and self.advantage.estimator != "grpo":
            raise ValueError("advantage.dr_grpo applies to advantage.estimator: grpo only")
        if self.advantage.estimator == "grpo" and not self.advantage.dr_grpo and self.kl_penalty == "reward":
            log.warning("ppo.train: advantage.estimator grpo divides each group's returns by their std, and "
                        "kl.penalty reward puts the KL in those returns: near-flat groups get KL noise scaled up "
                        "regardless of kl.init_coef (exactly flat ones are left unscaled). GRPO puts the KL in the "
                        "loss (kl.penalty: loss, the grpo default); or use advantage.dr_grpo: true")
        return self

    @property
    def needs_value_model(self) -> bool:
        return self.advantage.estimator == "gae"

    @property
    def kl_penalty(self) -> str:
        """Where the KL enters (kl.penalty, or the estimator's own): GRPO as published (DeepSeekMath, Shao et
        al. 2024) adds beta * k3 KL to the loss instead of the reward, which keeps the group-normalised
        advantages a function of the scores alone; gae and rloo follow InstructGPT (KL in the reward)."""
        if self.kl.penalty is not None:
            return self.kl.penalty
        return "loss" if self.advantage.estimator == "grpo" else "reward"

    @property
    def aggregation(self) -> str:
        """The loss aggregation in force (loss_aggregation, or the estimator's own)."""
        if self.loss_aggregation is not None:
            return self.loss_aggregation
        if self.advantage.estimator == "grpo":
            return "constant" if self.advantage.dr_grpo else "sequence"
        return "token"

    @property
    def queries_per_step(self) -> int:
        return self.rollout.batch_size // self.rollout.group_size

    @property
    def updates_per_epoch(self) -> int:
        return self.rollout.batch_size // (self.mini_batch_size * self.grad_accum)
