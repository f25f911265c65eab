"""The planner: one recipe, one device; resolves model references and hands each stage to its estimator.

align's own stages are validated into their settings classes and estimated from those
(`align.plan.settings` is where their fields are read). A section align does not know (a caller's
own stage, passed as a mapping) is read by what it holds: model roles, ``adapter``, ``train``,
generation settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from align.errors import AlignError
from align.model_configs import Arch, arch_for
from align.models import AdapterConfig
from align.plan import generation_stages, training_stages
from align.plan.activations import TrainSetup, training_terms
from align.plan.estimate import StageEstimate
from align.plan.memory import Term, adapter_tensors, numel, overhead_term
from align.plan.settings import (
    Role,
    adapter_from_peft,
    as_adapter,
    dpo_continues,
    known_stages,
    problems,
    produced_model,
    rank_k,
    stage_adapter,
    stage_settings,
)
from align.plan.suggest import suggest

DEFAULT_REWARD_K = 2  # responses per prompt in reward data the planner cannot read: preference pairs
ROLE_KEYS = ("model", "policy", "ref_policy", "value_model", "reward_model", "teacher", "judge")
REMOTE_BACKENDS = ("openai", "api", "http", "remote", "server")


class Planner:
    """Estimates every stage of one recipe (the loaded recipe, or its `model_dump()`) for one device."""

    def __init__(self, recipe: BaseModel | dict[str, Any], device: str = "cuda", reward_k: int | None = None):
        if device not in ("cuda", "cpu"):
            raise AlignError(f"device {device!r}: expected cuda or cpu")
        if reward_k is not None and reward_k < 2:
            raise AlignError(f"reward K {reward_k}: a prompt needs at least 2 responses to rank")
        self.device = device
        self.reward_k = reward_k  # explicit responses per prompt for the reward stage (else see reward_group_size)
        known = known_stages()
        items = (((s, getattr(recipe, s, None)) for s in type(recipe).model_fields) if isinstance(recipe, BaseModel)
                 else recipe.items())
        # known stages as validated settings; anything else (a caller's own stage) as the mapping it is
        self.sections: dict[str, BaseModel | dict[str, Any]] = {}
        for name, value in items:
            if name in known and isinstance(value, (BaseModel, dict)):
                self.sections[name] = stage_settings(name, value)
            elif isinstance(value, dict) and name != "vars":
                self.sections[name] = value
        self._archs: dict[str, tuple[Arch, AdapterConfig | None]] = {}
        self._group_sizes: dict[tuple, tuple[int, str]] = {}

    # ----- models

    def resolve(self, name: str, stack: tuple[str, ...] = ()) -> tuple[Arch, AdapterConfig | None]:
        """Architecture of a model reference + the adapter it carries (an `@stage` output or adapter dir)."""
        if not name.startswith("@"):
            if name not in self._archs:
                arch, peft_cfg = arch_for(name)
                self._archs[name] = (arch, adapter_from_peft(peft_cfg) if peft_cfg else None)
            return self._archs[name]
        stage, _, output = name[1:].partition(".")
        section = self.sections.get(stage)
        if section is None or stage in stack:
            raise AlignError(f"model {name!r}: the recipe has no stage {stage!r} to take a model from")
        if isinstance(section, BaseModel):
            role, adapter = produced_model(stage, section), stage_adapter(section)
        else:
            role = next((r for r in find_roles(section) if r.key in ("model", "policy")), None)
            adapter = as_adapter(section["adapter"]) if section.get("adapter") else None
        if role is None:
            raise AlignError(f"model {name!r}: stage {stage!r} produces no model (it names no model or policy)")
        arch, upstream = self.resolve(role.name, stack + (stage,))
        if stage == "ppo" and upstream and output != "merged":
            return arch, upstream  # align.ppo trains the policy's own adapter further (its `adapter` is unused)
        if stage == "dpo" and upstream and dpo_continues(section) and adapter.type != "full":
            return arch, upstream  # dpo start: continue trains the policy's own adapter further
        if output == "merged" or adapter is None or adapter.type == "full":
            return arch, None
        return arch, adapter

    def base_of(self, name: str) -> tuple[str, str | None]:
        """(the base weights a model runs on, the adapter it adds or None): eval loads each base once for
        every LoRA/DoRA adapter on it. A full or prefix/prompt-tuned model is its own base. (`resolve`
        rejects reference cycles before this recursion could loop.)"""
        _, adapter = self.resolve(name)
        shareable = adapter is None or adapter.type in ("lora", "dora")
        if name.startswith("@"):
            if adapter is None:  # a full or merged stage output: weights of its own
                return name, None
            role = self.stage_model(name)
            base, _ = self.base_of(role.name) if role else (name, None)
            return (base, name) if shareable else (name, None)
        if adapter is None:
            return name, None
        path = Path(name).expanduser()
        folder = path / "model" if (path / "model" / "adapter_config.json").exists() else path
        try:
            base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        except (OSError, ValueError, KeyError):
            base = name
        return (base, name) if shareable else (name, None)

    def stage_model(self, ref: str) -> Role | None:
        """The model an `@stage` reference's stage trains or samples from."""
        stage = ref[1:].partition(".")[0]
        section = self.sections.get(stage)
        if isinstance(section, BaseModel):
            return produced_model(stage, section)
        return next((r for r in find_roles(section or {}) if r.key in ("model", "policy")), None)

    def reward_group_size(self, data: str, max_records: int | None,
                          max_bad_records: float = 0.0) -> tuple[int, str]:
        """K, the responses one reward batch element holds (all of a prompt's responses), and where it comes from.

        - the planner's explicit `reward_k` when given;
        - `rank.k` when `data` is the rank stage's output (`@rank`);
        - a local rankings / pairs file: the largest prompt group align.preferences.rankings makes of it
          (records sharing a prompt are merged, as the reward stage does; `max_records` and the stage's
          `max_bad_records` tolerance respected, so a file the stage trains on is a file the planner reads);
        - anything else (a hub dataset, which the planner never downloads, or another stage's output):
          DEFAULT_REWARD_K = 2, preference pairs such as Anthropic HH.
        """
        if self.reward_k is not None:
            return self.reward_k, "set explicitly"
        if data.startswith("@"):
            stage = data[1:].partition(".")[0]
            rank = self.sections.get(stage)
            if stage == "rank" and isinstance(rank, BaseModel):
                return rank_k(rank), "rank.k"
            return DEFAULT_REWARD_K, f"{data} is not the rank stage: pairs assumed"
        if not Path(data).expanduser().exists():
            return DEFAULT_REWARD_K, f"{data} is not a local file: pairs assumed (K = 2, e.g. Anthropic HH)"
        key = (data, max_records, max_bad_records)
        if key not in self._group_sizes:
            from align.preferences.rankings import group_by_prompt, read_rankings_checked

            try:
                groups = group_by_prompt(read_rankings_checked(data, max_records, max_bad_records)[0])
                k = max(len(g.responses) for g in groups)
                self._group_sizes[key] = (max(k, 2), f"largest prompt group in {data}")
            except AlignError as exc:  # unreadable here: the reward stage will say why
                self._group_sizes[key] = (DEFAULT_REWARD_K, f"{data} unreadable ({exc}): pairs assumed")
        return self._group_sizes[key]

    # ----- stages

    def stage(self, name: str, section: BaseModel | dict[str, Any]) -> StageEstimate:
        """Dispatch on the stage's name when align knows it (settings validated), else on what the section holds."""
        handler = ESTIMATORS.get(name)
        if handler is not None:
            return handler(self, name, stage_settings(name, section))
        roles = [r for r in find_roles(section) if not r.remote]
        if not roles:
            return StageEstimate(name, "none", [], ["no local model: nothing on the accelerator"])
        trainable = [r for r in roles if r.key in ("model", "policy")]
        if "train" in section and trainable:
            return self.generic_training(name, section, trainable[0])
        return generation_stages.generic(self, name, section, roles)

    # ----- one trained model

    def train_setup(self, role: Role, adapter: AdapterConfig, batch_size: int, max_length: int, grad_accum: int,
                    checkpointing: bool, optim: str, padded: bool,
                    **fields: Any) -> tuple[TrainSetup, list[Term], list[str]]:
        """The setup of one trained model, the adapter it starts from (merged in), and notes."""
        arch, upstream = self.resolve(role.name)
        setup = TrainSetup(
            arch=arch, device=self.device, precision=role.precision, quantization=role.quantization, adapter=adapter,
            batch_size=batch_size, seq_len=max_length, grad_accum=grad_accum, checkpointing=checkpointing,
            optim=optim, attn=role.attn or "sdpa", padded=padded, **fields,
        )
        extra: list[Term] = []
        notes = [f"{role.key}: {arch.name} ({arch.source}); {setup.dtypes.label}; "
                 f"{setup.batch_size * setup.seqs_per_example} sequences x {setup.seq_len} tokens per micro-batch "
                 "(padded to max length: the worst case)"]
        notes += list(arch.notes)
        if upstream and setup.adapter.type != "full":
            up = numel(adapter_tensors(arch, upstream))
            extra.append(Term("upstream adapter (merged in)", up * setup.dtypes.weight,
                              note=f"{role.name}: {up:,} params folded into the base"))
        return setup, extra, notes

    def training_estimate(self, name: str, setup: TrainSetup, extra: list[Term], notes: list[str],
                          knobs: dict[str, Any]) -> StageEstimate:
        terms = training_terms(setup) + extra + overhead_term(self.device)
        return StageEstimate(name, "training", terms, notes, knobs=knobs)

    def generic_training(self, name: str, section: dict[str, Any], role: Role) -> StageEstimate:
        """A stage align does not know that trains a model: its own loop (full logits, peft's fp32 adapters).
        Its ``train`` and ``adapter`` mappings read as align's TrainConfig and AdapterConfig read them."""
        from align.training import TrainConfig

        train = TrainConfig.model_validate({k: v for k, v in (section.get("train") or {}).items()
                                            if k in TrainConfig.model_fields})
        adapter = as_adapter(section.get("adapter") or {})
        setup, extra, notes = self.train_setup(
            role, adapter, train.batch_size, train.max_length, train.grad_accum, train.gradient_checkpointing,
            train.optim, padded=not section.get("packing", False), head="lm-full", trainer="own")
        knobs = {"quantization": f"{role.path}.quantization", "adapter": "adapter", "batch_size": "train.batch_size",
                 "grad_accum": "train.grad_accum", "max_length": "train.max_length",
                 "checkpointing": "train.gradient_checkpointing", "optim": "train.optim"}
        return self.training_estimate(name, setup, extra, notes, knobs)


ESTIMATORS = {"sft": training_stages.sft, "reward": training_stages.reward, "dpo": training_stages.dpo,
              "ppo": training_stages.ppo, "rank": generation_stages.rank, "eval": generation_stages.eval_stage,
              "self_instruct": generation_stages.self_instruct}


# --------------------------------------------------------------------------- sections align does not know


def find_roles(section: dict[str, Any]) -> list[Role]:
    """Models a plain mapping names (string references or model settings), for stages align does not know."""
    from align.models import ModelConfig

    roles = []
    for key in ROLE_KEYS:
        value = section.get(key)
        path = key
        remote = False
        if isinstance(value, dict) and "name" not in value and "model" in value:
            backend = str(value.get("backend") or value.get("type") or "").lower()
            remote = any(b in backend for b in REMOTE_BACKENDS) or "base_url" in value or "url" in value
            path, value = f"{key}.model", value["model"]
        if isinstance(value, str):
            roles.append(Role.of(key, path, value).with_remote(remote))
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            backend = str(value.get("backend", "")).lower()
            known = {k: v for k, v in value.items() if k in ModelConfig.model_fields and v is not None}
            try:
                model = ModelConfig.model_validate(known)
            except ValidationError as exc:
                raise AlignError(f"{key}: {problems(exc)}") from None
            roles.append(Role.of(key, path, model).with_remote(remote or any(b in backend for b in REMOTE_BACKENDS)))
    return roles


def lookup(section: dict[str, Any], *keys: str, default: Any = None, within: tuple[str, ...] = ("", "generation",
                                                                                                  "train")) -> tuple:
    """(value, dotted path) of the first of `keys` found in the section or its sub-sections."""
    for sub in within:
        node = section.get(sub) if sub else section
        if isinstance(node, dict):
            for k in keys:
                if node.get(k) is not None:
                    return node[k], f"{sub}.{k}" if sub else k
    return default, f"{within[-1]}.{keys[0]}" if within[-1] else keys[0]


# --------------------------------------------------------------------------- entry point


def plan_recipe(recipe: BaseModel | dict[str, Any], device: str = "cuda", budget: float | None = None,
                reward_k: int | None = None) -> list[StageEstimate]:
    """One estimate per stage present in the recipe, in run order; with a budget, suggestions for misfits.
    `recipe`: the loaded recipe (`align.config.load_recipe`) or a mapping of sections (align's stages are
    validated as the recipe would be). `reward_k`: responses per prompt in the reward stage's data, when
    the planner cannot tell."""
    from align.stages import STAGE_ORDER

    planner = Planner(recipe, device, reward_k)
    stages = [s for s in STAGE_ORDER if s in planner.sections]
    stages += [s for s in planner.sections if s not in stages]
    out = []
    for name in stages:
        section = planner.sections[name]
        est = planner.stage(name, section)
        if budget is not None and est.total > budget:
            est.suggestions = suggest(planner, name, section, est, budget)
        out.append(est)
    return out
