"""Estimators of the stages that only generate: rank, eval, self_instruct, and any unknown stage.

Each reads its stage's validated settings through one accessor of `align.plan.settings`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from align.model_configs import Arch
from align.plan.estimate import StageEstimate
from align.plan.memory import (
    Dtypes,
    Term,
    adapter_tensors,
    dtypes_for,
    generation_terms,
    numel,
    overhead_term,
    weights_term,
)
from align.plan.settings import (
    EVAL_KNOBS,
    RANK_KNOBS,
    SELF_INSTRUCT_KNOBS,
    Role,
    eval_view,
    local_teacher,
    rank_view,
    self_instruct_view,
    trained_scoring,
)

if TYPE_CHECKING:
    from align.plan.planner import Planner

PROMPT_GUESS = 256  # prompt tokens assumed where a stage has no prompt-length setting
JUDGE_NEW_TOKENS = 256  # what an LLM judge is assumed to write per call
REWARD_SCORE_ROWS = 8  # align.preferences.reward_model.RewardModel.score: rows per scoring forward
# A stage align does not know: its batch and lengths when it names none.
GENERIC_BATCH, GENERIC_NEW_TOKENS, GENERIC_PROMPT = 8, 256, 256


def generator(planner: Planner, role: Role, batch: int, prompt: int, new: int, phase: str, prefix: str = "",
              resident: bool = False) -> tuple[list[Term], list[str]]:
    """Weights (+ a loaded adapter) and generation buffers of one model; weights in `phase` unless resident."""
    arch, upstream = planner.resolve(role.name)
    d = dtypes_for(planner.device, role.precision)
    weights = [weights_term(arch, d, role.quantization, prefix)]
    if upstream:
        up = numel(adapter_tensors(arch, upstream))
        weights.append(Term(f"{prefix}adapter (loaded)", up * 4, note=f"{up:,} params"))
    if not resident:
        weights = [replace(t, phase=phase) for t in weights]
    return weights + generation_terms(arch, d, batch, prompt, new, phase, prefix), [
        f"{role.key}: {arch.name} ({arch.source}); {d.label}"]


def _teacher_role(key: str, path: str, model: str) -> Role:
    """A local teacher loads as a plain model reference (ModelConfig's defaults)."""
    return Role.of(key, path, model)


def rank(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """The policy samples k responses per prompt; a local LLM judge, if any, runs after it."""
    v = rank_view(cfg)
    terms, notes = generator(planner, v.policy, v.batch_size * v.k, PROMPT_GUESS, v.max_new_tokens, "sampling")
    if local_teacher(v.judge_teacher):
        role = _teacher_role("judge", "judge.teacher.model", v.judge_teacher.model)
        t, n = generator(planner, role, v.judge_teacher.batch_size, 2 * PROMPT_GUESS + v.k * v.max_new_tokens,
                         JUDGE_NEW_TOKENS, "judging")
        terms, notes = terms + t, notes + n
    notes.append(f"{v.batch_size} prompts x k={v.k} per generate call; prompts assumed {PROMPT_GUESS} tokens")
    return StageEstimate(name, "generation", terms + overhead_term(planner.device), notes, knobs=dict(RANK_KNOBS))


def eval_stage(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """align.stages.eval: the policies take turns; LoRA policies (and the reference) on one base share ONE
    copy of it. Per policy: greedy generation, then (with a reference) KL sampling and the reference's
    scoring forward; the reward model scores after every policy is freed. `model` (precision,
    quantization) applies to all of them; without it the reward model loads as trained: its base in the
    reward stage's quantization, in fp32 (align.preferences.reward_model.load_reward_model)."""
    from align.eval.kl import KL_LOGITS_ELEMENTS

    v = eval_view(cfg)
    quant = v.quantization
    d = dtypes_for(planner.device, v.precision)
    ident = {label: planner.base_of(ref) for label, ref in v.policies.items()}
    ref_ident = planner.base_of(v.reference) if v.reference else None
    groups: dict[str, list[str]] = {}
    for label, (base, _) in ident.items():
        groups.setdefault(base, []).append(label)

    def loaded(base: str, members: list[tuple[str, str | None]], prefix: str) -> list[Term]:
        """A base's weights + every adapter loaded on it (peft keeps adapters in fp32)."""
        arch, _ = planner.resolve(members[0][1] or base)
        terms = [weights_term(arch, d, quant, prefix)]
        for _, adapter in dict.fromkeys(members):
            if adapter is not None:
                up = numel(adapter_tensors(arch, planner.resolve(adapter)[1]))
                terms.append(Term(f"{prefix}adapter {adapter} (loaded)", up * 4, note=f"{up:,} params"))
        return terms

    terms: list[Term] = []
    notes = [f"models: {d.label}" + (f", {quant}" if quant != "none" else ", unquantized")
             + ("" if v.model_given else " (eval.model not set)")]
    for base, labels in groups.items():
        members = [ident[label] for label in labels]
        with_ref = ref_ident is not None and ref_ident[0] == base  # the reference rides on this base too
        weights = loaded(base, members + ([ref_ident] if with_ref else []), "")
        if ref_ident is not None and not with_ref:
            weights += loaded(ref_ident[0], [ref_ident], "reference (KL) ")
        if len(dict.fromkeys(members + ([ref_ident] if with_ref else []))) > 1:
            notes.append(f"{', '.join(labels)}{' and the reference' if with_ref else ''}: one copy of {base}")
        arch, _ = planner.resolve(base if not members[0][1] else members[0][1])
        for label in labels:
            phase = f"policy {label}"
            terms += [replace(t, phase=phase) for t in weights]
            terms += generation_terms(arch, d, v.batch_size, PROMPT_GUESS, v.max_new_tokens, phase)
            if ref_ident is None or ident[label] == ref_ident:
                continue
            phase = f"policy {label} KL"
            terms += [replace(t, phase=phase) for t in weights]
            terms += kl_terms(arch, d, v.kl_samples, v.kl_batch_size, v.max_new_tokens, phase, KL_LOGITS_ELEMENTS)
    if v.reference:
        notes.append(f"KL: {v.kl_samples} sample(s) per prompt, up to {v.kl_batch_size} sequences per generate "
                     "call; then the reference scores them (a policy that is the reference: no sampling)")
    if v.reward_model:
        terms += _eval_reward(planner, v.reward_model, v, d, notes)
    if local_teacher(v.llm_judge):
        role = _teacher_role("judge", "llm_judge.model", v.llm_judge.model)
        t, n = generator(planner, role, v.llm_judge.batch_size, 4 * PROMPT_GUESS, JUDGE_NEW_TOKENS, "judging")
        terms, notes = terms + t, notes + n
    notes.append(f"policies take turns (a phase each); prompts assumed {PROMPT_GUESS} tokens")
    knobs = {k: list(p) if isinstance(p, list) else p for k, p in EVAL_KNOBS.items()}
    return StageEstimate(name, "generation", terms + overhead_term(planner.device), notes, knobs=knobs)


def kl_terms(arch: Arch, d: Dtypes, n: int, kl_batch: int, new: int, phase: str, chunk_elements: int) -> list[Term]:
    """KL buffers: sampling (KV cache of one generate call + the recorded log-softmax row), then the
    reference's forward over the samples in chunks of `chunk_elements` logits. They do not overlap:
    the larger counts."""
    rows = max(1, kl_batch // n) * n
    V = arch.vocab_size
    sampling = generation_terms(arch, d, rows, PROMPT_GUESS, new, phase, "KL sampling ")
    sampling.append(Term("KL sampling: log-prob recorder", rows * V * 4 + rows * new * 4, phase,
                         "one fp32 log-softmax row per sequence"))
    chunk = max(1, min(rows, chunk_elements // (new * V)))
    logits = chunk * (new + 1) * V * d.act + 2 * chunk * new * V * 4
    forward = chunk * (PROMPT_GUESS + new) * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
    scoring = [Term("KL: reference log-probs", logits + forward, phase,
                    f"{chunk} sequences x {new} response positions x vocab per forward (logits + fp32 log-softmax)")]
    return sampling if sum(t.bytes for t in sampling) >= scoring[0].bytes else scoring


def _eval_reward(planner: Planner, ref: str, v: Any, eval_dtypes: Dtypes, notes: list[str]) -> list[Term]:
    """The reward model's weights (+ adapter) and one scoring forward (RewardModel.score: 8 rows)."""
    from align.training import TrainConfig

    arch, adapter = planner.resolve(ref)
    max_length, trained_quant = TrainConfig.model_fields["max_length"].default, "none"
    if ref.startswith("@"):
        stage = ref[1:].partition(".")[0]
        section = planner.sections.get(stage)
        trained = trained_scoring(stage, section) if isinstance(section, BaseModel) else None
        if trained:
            max_length, trained_quant = trained
    # else a reward model dir: align_reward.json is not read here (unquantized, the training default length)
    if v.model_given:
        d, quant, how = eval_dtypes, v.quantization, "eval.model"
    else:  # load_reward_model: float32, its base quantized as the reward stage trained it (adapters only)
        quant = trained_quant if adapter else "none"
        d = dtypes_for(planner.device, "fp32")
        how = "as trained (fp32" + (f", {quant} base)" if quant != "none" else ")")
    phase = "reward scoring"
    terms = [replace(weights_term(arch, d, quant, "reward_model ", head="classifier"), phase=phase)]
    if adapter:
        up = numel(adapter_tensors(arch, adapter))
        terms.append(Term("reward_model adapter", up * 4, phase, f"{up:,} params"))
    rows = REWARD_SCORE_ROWS
    act = rows * max_length * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
    terms.append(Term("reward_model scoring forward", act, phase, f"{rows} x {max_length} tokens"))
    notes.append(f"reward_model: {how}")
    return terms


def self_instruct(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    v = self_instruct_view(cfg)
    teacher = v.teacher
    if not local_teacher(teacher):
        return StageEstimate(name, "none", [], [f"teacher served over HTTP ({teacher.model}): "
                                                "nothing on this machine's accelerator"])
    role = _teacher_role("teacher", "teacher.model", teacher.model)
    terms, notes = generator(planner, role, teacher.batch_size, 2 * PROMPT_GUESS, v.new_tokens, "generation",
                             resident=True)
    notes.append(f"teacher batch {teacher.batch_size}; in-context prompts assumed "
                 f"{2 * PROMPT_GUESS} tokens + {v.new_tokens} new")
    knobs = {k: list(p) if isinstance(p, list) else p for k, p in SELF_INSTRUCT_KNOBS.items()}
    return StageEstimate(name, "generation", terms + overhead_term(planner.device), notes, knobs=knobs)


def generic(planner: Planner, name: str, section: dict[str, Any], roles: list[Role]) -> StageEstimate:
    """A stage align does not know: every named model generates; all assumed loaded together."""
    from align.plan.planner import lookup

    batch, batch_path = lookup(section, "batch_size", "generation_batch_size", default=GENERIC_BATCH)
    new, new_path = lookup(section, "max_new_tokens", "response_length", "max_response_length",
                           default=GENERIC_NEW_TOKENS)
    prompt, _ = lookup(section, "max_prompt_length", "prompt_length", default=GENERIC_PROMPT)
    per_prompt, _ = lookup(section, "num_return_sequences", "k", "num_generations", default=1)
    terms, notes = [], []
    for r in roles:
        t, n = generator(planner, r, int(batch) * int(per_prompt), int(prompt), int(new), f"generation ({r.key})",
                         f"{r.key}: " if len(roles) > 1 else "", resident=True)
        terms += t
        notes += n
    notes.append(f"batch {batch} x {per_prompt} sequences; {prompt} prompt + {new} new tokens "
                 "(all models assumed loaded together)")
    knobs = {"quantization": [f"{r.path}.quantization" for r in roles], "gen_batch": batch_path,
             "gen_batch_default": int(batch), "max_new_tokens": new_path, "max_new_tokens_default": int(new)}
    return StageEstimate(name, "generation", terms + overhead_term(planner.device), notes, knobs=knobs)
