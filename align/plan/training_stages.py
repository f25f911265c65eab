"""Estimators of the stages that train: sft, reward, dpo, ppo.

Each reads its stage's validated settings through one accessor of `align.plan.settings` and
returns a `StageEstimate` built from the arithmetic in `align.plan.memory` and
`align.plan.activations`.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from align.errors import AlignError
from align.model_configs import Arch
from align.plan.activations import TrainSetup, layer_activation_bytes, training_terms
from align.plan.estimate import StageEstimate
from align.plan.memory import (
    Term,
    adapter_tensors,
    generation_terms,
    lora_targets,
    numel,
    overhead_term,
    weights_term,
)
from align.plan.settings import (
    PPO_KEYS,
    PPOView,
    TrainView,
    dpo_view,
    ppo_knobs,
    ppo_view,
    produced_model,
    reward_view,
    sft_view,
    stage_adapter,
    train_knobs,
)

if TYPE_CHECKING:
    from align.plan.planner import Planner

# align.ppo's optimizer: torch AdamW over the trainable parameters, whatever the recipe's `train.optim`.
PPO_OPTIM = "adamw_torch"


def trl_tiled_head() -> bool:
    """Does the installed TRL score the LM head in tiles (no full logits)? Checked without importing TRL."""
    try:
        dist = importlib.metadata.distribution("trl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return Path(str(dist.locate_file("trl/kernels/chunked_logprob.py"))).exists()


def _trained(planner: Planner, name: str, view: TrainView, **fields) -> StageEstimate:
    """One trained model as the view describes it (adapter and train settings of sft, reward or dpo)."""
    setup, extra, notes = trained_setup(planner, view, **fields)
    return planner.training_estimate(name, setup, extra, notes, train_knobs(view.model.path))


def trained_setup(planner: Planner, view: TrainView, **fields) -> tuple[TrainSetup, list[Term], list[str]]:
    """The `TrainSetup` of a stage's trained model (`fields` override how it trains: head, trainer...), the
    upstream adapter merged into its base, and notes."""
    return planner.train_setup(view.model, view.adapter, view.batch_size, view.max_length, view.grad_accum,
                               view.checkpointing, view.optim, padded=not view.packing, **fields)


def sft(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """TRL's SFTTrainer: LoRA weights in bf16 on quantized bases, the tiled LM head when TRL has it."""
    return _trained(planner, name, sft_view(cfg), head="lm-fused" if trl_tiled_head() else "lm-full", trainer="trl")


def reward(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """transformers.Trainer over prompt groups: all K responses of a prompt in one forward, a scalar head;
    peft's prepare_model_for_kbit_training upcasts the non-quantized weights to fp32."""
    view = reward_view(cfg)
    k, why = planner.reward_group_size(view.data, view.max_records, view.max_bad_records)
    est = _trained(planner, name, view.train, head="classifier", seqs_per_example=k, trainer="own",
                   upcast_non_quantized=view.train.model.quantization != "none")
    est.notes.append(f"{k} responses per prompt ({why}); train.batch_size counts prompts")
    return est


def dpo(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """TRL's DPO/KTO/ORPO/CPO trainers: chosen and rejected of a pair in one forward (2 sequences per
    pair; KTO 1 per example), the tiled LM head. The reference shares the base: a frozen copy of the
    continued adapter, or the base with adapters disabled; only full fine-tuning without precomputed
    reference log-probs holds a second copy of the weights."""
    view = dpo_view(cfg)
    role = view.train.model
    arch, upstream = planner.resolve(role.name)
    full = view.train.adapter.type == "full"
    continued = upstream is not None and view.continues and not full
    train = replace(view.train, adapter=upstream) if continued else view.train
    pairs = 1 if view.method == "kto" else 2
    head = "lm-fused" if trl_tiled_head() else "lm-full"
    est = _trained(planner, name, train, head=head, trainer="trl", seqs_per_example=pairs)
    if continued:  # the SFT adapter itself trains: nothing is merged in
        est.terms = [t for t in est.terms if not t.name.startswith("upstream adapter")]
    setup, _, _ = trained_setup(planner, train, seqs_per_example=pairs)
    if view.reference_free:
        est.notes.append(f"{view.method}: no reference model")
    elif view.precompute_ref_log_probs:
        est.notes.append("reference log-probs precomputed before training: no reference during training")
    else:
        if continued:
            n = numel(adapter_tensors(arch, upstream))
            est.terms.append(Term("ref_policy: frozen copy of the SFT adapter", n * setup.adapter_param_bytes(),
                                  note=f"{n:,} params on the shared base weights"))
        elif full:
            est.terms.append(weights_term(arch, setup.dtypes, role.quantization, "ref_policy "))
        else:
            est.notes.append("ref_policy = the base with adapters disabled: no extra weights")
        layer = layer_activation_bytes(setup, setup.seq_len)
        est.terms.append(Term("ref_policy forward (no grad)", setup.tokens * layer, "forward/backward",
                              "one block's activations at a time, while the policy's are kept for backward"))
    est.notes.append(f"train.batch_size counts {'examples' if view.method == 'kto' else 'pairs'} "
                     f"({pairs} sequence{'s' if pairs > 1 else ''} each)")
    return est


# --------------------------------------------------------------------------- ppo


def ppo(planner: Planner, name: str, cfg: BaseModel) -> StageEstimate:
    """align.ppo: every role on one base for LoRA policies; a full policy keeps a frozen copy as ref_policy."""
    v = ppo_view(cfg)
    policy = v.policy
    arch, upstream = planner.resolve(policy.name)
    adapter = (upstream or v.adapter).model_copy(update={"dropout": 0.0})  # the PPO model never enters train mode
    prompt, new = v.max_prompt_length, v.max_new_tokens
    setup = TrainSetup(arch=arch, device=planner.device, precision=policy.precision, quantization=policy.quantization,
                       adapter=adapter, batch_size=v.mini_batch_size, seq_len=prompt + new, grad_accum=v.grad_accum,
                       optim=PPO_OPTIM, attn=policy.attn or "sdpa", padded=True, head="ppo",
                       head_tokens=new, trainer="own")
    d = setup.dtypes
    terms = [replace(t, phase="ppo update") if t.phase == "forward/backward" else t for t in training_terms(setup)]
    if not setup.full:
        terms[0] = replace(terms[0], note=terms[0].note + "; one copy shared by every role")
    notes = [f"policy: {arch.name} ({arch.source}); {d.label}; "
             f"{'trains the @-referenced adapter' if upstream else adapter.type}"]
    if setup.full:
        terms.append(weights_term(arch, d, setup.quantization, "ref_policy (frozen copy) "))
    elif upstream:
        ref = numel(adapter_tensors(arch, upstream))
        terms.append(Term("ref_policy adapter (frozen copy)", ref * 4, note="the starting adapter, on the shared base"))
    else:
        notes.append("ref_policy: the shared base with the adapter disabled (no extra weights)")
    if v.critic_free:
        notes.append(f"value_model: none (advantage {v.advantage})")
    elif v.value_adapter and not setup.full:
        value = replace(setup, head="classifier")
        terms += [replace(t, phase="ppo update") if t.phase == "forward/backward" else t
                  for t in training_terms(value, "value_model ", with_weights=False)]
        notes.append("value_model: its own adapter on the shared base (a second forward/backward)")
    else:
        terms.append(Term("value head", (arch.hidden_size + 1) * 16, note="fp32 weights, grads, Adam state"))
    terms += _ppo_reward(planner, v, arch, setup, prompt + new, notes)
    terms += generation_terms(arch, d, v.generation_batch_size, prompt, new, "rollout", "rollout ")
    if not setup.full and setup.quantization == "none" and v.merge_for_sampling and adapter.type == "lora":
        top = adapter.top_layers
        adapted = sum(a * b * (min(c, top) if top and c > 1 else c)
                      for a, b, c in lora_targets(arch, adapter.target_modules).values())
        terms.append(Term("merged policy weights (sampling)", adapted * d.weight, "rollout",
                          f"a merged copy of each adapted weight while sampling ({PPO_KEYS['merge_for_sampling']})"))
    fwd = v.forward_batch_size
    scoring = fwd * new * arch.vocab_size * (2 * d.act) + 2 * new * arch.vocab_size * 4
    layer = fwd * (prompt + new) * (3 * arch.intermediate_size + 4 * arch.hidden_size) * d.act
    terms.append(Term("old + ref log-probs (no grad)", scoring + layer, "scoring",
                      f"policy and ref logits over {new} response tokens x {fwd} rollouts ({PPO_KEYS['forward_batch_size']})"))
    terms += overhead_term(planner.device)
    notes.append(f"{v.rollouts} rollouts per step, generated {v.generation_batch_size} at a time; updates of "
                 f"{v.mini_batch_size} x {v.grad_accum}; {prompt} prompt + {new} response tokens")
    return StageEstimate(name, "ppo", terms, notes, knobs=ppo_knobs(v, setup.full))


def _ppo_reward(planner: Planner, v: PPOView, arch: Arch, setup: TrainSetup, seq: int,
                notes: list[str]) -> list[Term]:
    source = v.reward_source
    if not source.startswith("@") and not Path(source).expanduser().exists():
        notes.append(f"reward: Python function {source} (no model)")
        return []
    if source.startswith("@"):
        stage = source[1:].split(".")[0]
        section = planner.sections.get(stage)
        role = produced_model(stage, section) if isinstance(section, BaseModel) else None
        if role is None:
            raise AlignError(f"ppo.reward {source!r}: that stage names no model")
        r_arch, _ = planner.resolve(role.name)
        r_adapter = stage_adapter(section)
    else:
        r_arch, r_adapter = planner.resolve(source)
    full = r_adapter is None or r_adapter.type == "full"
    d = setup.dtypes
    shared = (v.reward_share_base and not setup.full and not full and r_adapter.type in ("lora", "dora")
              and r_arch == arch)
    phase_term = Term("reward_model scoring", v.reward_batch_size * seq * (3 * r_arch.intermediate_size
                                                                          + 4 * r_arch.hidden_size) * d.act, "scoring")
    if shared:
        n = numel(adapter_tensors(r_arch, r_adapter))
        notes.append("reward_model: its LoRA adapter on the shared base")
        return [Term("reward_model adapter", n * 4, note=f"{n:,} params, frozen"), phase_term]
    notes.append("reward_model: a separate model (set reward.share_base, or train it as LoRA on the policy's "
                 "base, to share one copy)")
    return [weights_term(r_arch, d, "none", "reward_model ", head="classifier"), phase_term]
