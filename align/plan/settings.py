"""The one place the planner reads a stage's settings.

Estimates read the validated settings objects a recipe loads into (`align.stages.<stage>.Config`,
`align.ppo.config.PPOSettings`, `align.teachers.TeacherConfig`, ...), never raw mappings with
defaults of their own: a default changed in the schema reaches the plan with nothing to update.
Per stage there is one accessor that turns its settings into the few values the arithmetic needs
(a small frozen view), and one table of the dotted keys that suggestions change. When a setting
is renamed or moved in the schema, these are the lines to change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from align.errors import AlignError
from align.models import AdapterConfig, ModelConfig, ModelSettings
from align.teachers import TeacherConfig

# --------------------------------------------------------------------------- validation


@cache
def _recipe_model() -> type[BaseModel]:
    from align.config import recipe_model

    return recipe_model()


def known_stages() -> tuple[str, ...]:
    from align.stages import stage_config_classes

    return tuple(stage_config_classes())


def stage_settings(stage: str, section: BaseModel | dict[str, Any]) -> BaseModel:
    """The validated settings of a known stage. A mapping (a `model_dump()`, a suggestion's changed copy)
    is validated as the recipe would validate it, so every key it leaves out takes the schema's default."""
    from align.config import format_validation_error
    from align.stages import stage_config_classes

    cls = stage_config_classes()[stage]
    if isinstance(section, cls):
        return section
    data = section.model_dump() if isinstance(section, BaseModel) else section
    model = _recipe_model()
    try:
        return getattr(model.model_validate({stage: data}), stage)
    except ValidationError as exc:
        raise AlignError(format_validation_error(exc, model, "align plan", None)) from None


def problems(exc: ValidationError) -> str:
    """A pydantic error as one line: `key: what is wrong; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())


def as_adapter(adapter: AdapterConfig | dict[str, Any]) -> AdapterConfig:
    """The adapter as the schema's `AdapterConfig`: a mapping (tests, hand-written calls, a stage align does
    not know) is validated, so a key it leaves out takes the schema's default and never one of the planner's."""
    if isinstance(adapter, AdapterConfig):
        return adapter
    try:
        return AdapterConfig.model_validate(adapter)
    except ValidationError as exc:
        raise AlignError(f"adapter {adapter!r}: {problems(exc)}") from None


# --------------------------------------------------------------------------- models a stage names


@dataclass(frozen=True)
class Role:
    """A model a stage loads: where its settings sit in the section and what they say."""

    key: str
    path: str  # dotted path of the model settings inside the section (suggestions set `<path>.quantization`)
    name: str
    precision: str
    quantization: str
    attn: str | None = None
    remote: bool = False

    @classmethod
    def of(cls, key: str, path: str, model: ModelConfig | str) -> Role:
        """From a `ModelConfig` (a bare reference takes the schema's precision and quantization defaults)."""
        m = model if isinstance(model, ModelConfig) else ModelConfig(name=model)
        return cls(key, path, m.name, m.precision, m.quantization, m.attn_implementation)

    def with_remote(self, remote: bool) -> Role:
        return replace(self, remote=remote)


# The setting of each stage that names the model it trains or samples from: what `@stage` hands on.
PRODUCED_MODEL = {"sft": "model", "reward": "model", "dpo": "model", "ppo": "policy", "rank": "policy"}


def produced_model(stage: str, cfg: BaseModel) -> Role | None:
    key = PRODUCED_MODEL.get(stage)
    return Role.of(key, key, getattr(cfg, key)) if key else None


def stage_adapter(cfg: BaseModel) -> AdapterConfig | None:
    """The adapter a stage trains (`adapter`), None for a stage that trains none."""
    return getattr(cfg, "adapter", None)


def dpo_continues(cfg: BaseModel) -> bool:
    """dpo `start: continue`: an adapter policy trains further (else it is folded into the base)."""
    return cfg.start == "continue"


def local_teacher(teacher: TeacherConfig | None) -> bool:
    return teacher is not None and teacher.type == "local"


# --------------------------------------------------------------------------- training stages


@dataclass(frozen=True)
class TrainView:
    """What the estimate of a trained model reads from sft, reward or dpo."""

    model: Role
    adapter: AdapterConfig
    batch_size: int
    max_length: int
    grad_accum: int
    checkpointing: bool
    optim: str
    packing: bool


def _train_view(cfg: BaseModel, packing: bool) -> TrainView:
    t = cfg.train
    return TrainView(Role.of("model", "model", cfg.model), cfg.adapter, t.batch_size, t.max_length, t.grad_accum,
                     t.gradient_checkpointing, t.optim, packing)


def sft_view(cfg: BaseModel) -> TrainView:
    return _train_view(cfg, packing=cfg.packing)


def train_knobs(model_path: str = "model") -> dict[str, Any]:
    """Dotted keys of sft / reward / dpo settings that suggestions change."""
    return {"quantization": f"{model_path}.quantization", "adapter": "adapter",
            "batch_size": "train.batch_size", "grad_accum": "train.grad_accum",
            "max_length": "train.max_length", "checkpointing": "train.gradient_checkpointing",
            "optim": "train.optim"}


@dataclass(frozen=True)
class RewardView:
    train: TrainView
    data: str
    max_records: int | None
    max_bad_records: float = 0.0


def reward_view(cfg: BaseModel) -> RewardView:
    return RewardView(_train_view(cfg, packing=False), cfg.data, cfg.max_records, cfg.max_bad_records)


def rank_k(cfg: BaseModel) -> int:
    """Responses the rank stage samples per prompt (what `@rank` rankings hold)."""
    return cfg.k


@dataclass(frozen=True)
class DPOView:
    train: TrainView
    method: str
    reference_free: bool
    continues: bool
    precompute_ref_log_probs: bool


def dpo_view(cfg: BaseModel) -> DPOView:
    return DPOView(_train_view(cfg, packing=False), cfg.method.type, cfg.reference_free, dpo_continues(cfg),
                   cfg.precompute_ref_log_probs)


# --------------------------------------------------------------------------- ppo


@dataclass(frozen=True)
class PPOView:
    """What the PPO estimate reads from the `ppo` stage (its `train:` loop settings and `reward:`)."""

    policy: Role
    adapter: AdapterConfig
    rollouts: int  # rollouts per step
    mini_batch_size: int
    grad_accum: int
    generation_batch_size: int  # prompts per generate() call, resolved
    max_prompt_length: int
    max_new_tokens: int
    forward_batch_size: int
    advantage: str
    critic_free: bool
    value_adapter: bool  # the value model is its own adapter (not a head on the policy)
    merge_for_sampling: bool
    reward_source: str
    reward_share_base: bool
    reward_batch_size: int


def ppo_view(cfg: BaseModel) -> PPOView:
    t, r = cfg.train, cfg.reward
    rollout = t.rollout
    return PPOView(
        policy=Role.of("policy", "policy", cfg.policy), adapter=cfg.adapter, rollouts=rollout.batch_size,
        mini_batch_size=t.mini_batch_size, grad_accum=t.grad_accum,
        generation_batch_size=rollout.generation_batch_size or rollout.batch_size,
        max_prompt_length=rollout.max_prompt_length, max_new_tokens=rollout.max_new_tokens,
        forward_batch_size=rollout.forward_batch_size, advantage=t.advantage.estimator,
        critic_free=not t.needs_value_model, value_adapter=t.value.model == "adapter",
        merge_for_sampling=rollout.merge_for_sampling,
        reward_source=r.source, reward_share_base=r.share_base, reward_batch_size=r.batch_size,
    )


# Dotted keys of the ppo stage that suggestions change and notes name.
PPO_KEYS = {"quantization": "policy.quantization", "adapter": "adapter", "batch_size": "train.mini_batch_size",
            "grad_accum": "train.grad_accum", "gen_batch": "train.rollout.generation_batch_size",
            "max_new_tokens": "train.rollout.max_new_tokens", "value_head": "train.value.model",
            "forward_batch_size": "train.rollout.forward_batch_size",
            "merge_for_sampling": "train.rollout.merge_for_sampling"}


def ppo_knobs(view: PPOView, full: bool) -> dict[str, Any]:
    knobs: dict[str, Any] = {k: PPO_KEYS[k] for k in ("quantization", "batch_size", "grad_accum", "gen_batch",
                                                       "max_new_tokens")}
    knobs["gen_batch_default"] = view.generation_batch_size
    if view.value_adapter:
        knobs["value_head"] = PPO_KEYS["value_head"]
    if full:
        knobs["adapter"] = PPO_KEYS["adapter"]
    return knobs


# --------------------------------------------------------------------------- generation stages


@dataclass(frozen=True)
class RankView:
    policy: Role
    batch_size: int
    k: int
    max_new_tokens: int
    judge_teacher: TeacherConfig | None  # a judge: llm's teacher


def rank_view(cfg: BaseModel) -> RankView:
    teacher = getattr(cfg.judge, "teacher", None)
    return RankView(Role.of("policy", "policy", cfg.policy), cfg.batch_size, rank_k(cfg), cfg.max_new_tokens, teacher)


RANK_KNOBS = {"quantization": "policy.quantization", "gen_batch": "batch_size", "max_new_tokens": "max_new_tokens"}


@dataclass(frozen=True)
class EvalView:
    policies: dict[str, str]
    reference: str | None  # None also when kl_samples is 0 (no KL)
    reward_model: str | None
    batch_size: int
    max_new_tokens: int
    precision: str  # how every model loads: eval.model, or ModelSettings' defaults, as the stage does
    quantization: str
    model_given: bool  # eval.model is set (else the reward model loads as it was trained)
    kl_samples: int
    kl_batch_size: int
    llm_judge: TeacherConfig | None  # judge: llm's teacher


def eval_view(cfg: BaseModel) -> EvalView:
    judge = cfg.llm_judge.teacher if cfg.judge == "llm" and cfg.llm_judge else None
    loads = cfg.model or ModelSettings()  # as align.eval.loading loads every model
    return EvalView(dict(cfg.policies), cfg.reference if cfg.kl_samples > 0 else None, cfg.reward_model,
                    cfg.batch_size, cfg.max_new_tokens, loads.precision, loads.quantization, cfg.model is not None,
                    cfg.kl_samples, cfg.kl_batch_size, judge)


EVAL_KNOBS = {"quantization": ["model.quantization"], "gen_batch": "batch_size", "max_new_tokens": "max_new_tokens"}


def trained_scoring(stage: str, cfg: BaseModel) -> tuple[int, str] | None:
    """(train.max_length, model.quantization) of a stage that trains with `train` settings: how eval loads and
    scores a reward model it produced. None for a stage without them."""
    if stage not in ("sft", "reward", "dpo"):
        return None
    return cfg.train.max_length, cfg.model.quantization


@dataclass(frozen=True)
class SelfInstructView:
    teacher: TeacherConfig
    new_tokens: int  # the longest continuation the teacher writes


def self_instruct_view(cfg: BaseModel) -> SelfInstructView:
    s = cfg.sampling
    new = s.alpaca.max_tokens if cfg.method == "alpaca" else max(s.bootstrap.max_tokens, s.instances.max_tokens)
    return SelfInstructView(cfg.teacher, new)


SELF_INSTRUCT_KNOBS = {"quantization": [], "gen_batch": "teacher.batch_size"}


# --------------------------------------------------------------------------- adapters on disk


def adapter_from_peft(cfg: dict[str, Any]) -> AdapterConfig:
    """A saved peft adapter (adapter_config.json) as an `AdapterConfig`; keys peft did not write take the
    schema's defaults."""
    kind = str(cfg.get("peft_type", "LORA")).lower()
    kind = {"prefix_tuning": "prefix", "prompt_tuning": "prompt"}.get(kind, kind)
    if kind == "lora" and cfg.get("use_dora"):
        kind = "dora"
    values = {"type": kind, "r": cfg.get("r"), "target_modules": cfg.get("target_modules") or None,
              "num_virtual_tokens": cfg.get("num_virtual_tokens"),
              "dropout": cfg.get("lora_dropout", 0.0)}  # peft's own default when unsaved
    if isinstance(values["target_modules"], (set, tuple)):
        values["target_modules"] = sorted(values["target_modules"])
    try:
        return AdapterConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise AlignError(f"adapter_config.json: {problems(exc)}") from None
