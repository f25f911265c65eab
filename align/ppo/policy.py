"""The PPO model roles on one copy of the base weights.

With a LoRA policy, the base is loaded once (4-bit when asked) and every role is a view of it:

- policy: the trainable adapter ``default`` (saved as a plain PEFT adapter);
- ref_policy: the model with adapters disabled when the policy starts as a fresh adapter (then the
  base *is* the starting policy), or a frozen second copy ``ref`` of the policy's starting adapter
  when the policy was loaded from an adapter (e.g. ``@sft``): InstructGPT's KL is against the SFT
  model, not the pretrained base underneath it;
- value_model: a scalar head on the policy trunk's last hidden state (``head``), or its own
  trainable adapter ``value`` plus a head (``adapter``); none at all for critic-free estimators;
- reward_model: optionally a frozen adapter ``reward`` plus its score head (see ``scoring``).

A full (non-adapter) policy trains every weight and its ref_policy is a frozen deep copy.
Dropout stays off throughout (the model is never put in train mode): with dropout the log-probs
recomputed during the update would not match those of the rollouts (N+ details #5).

Two things make rollouts cheaper without changing what is computed (up to float rounding):
``merged_for_sampling`` samples with the policy's LoRA folded into the base weights (plain
``generate`` speed), and ``frozen_layers`` / ``trunk_capture`` / ``trunk_replay`` run the lower
layers that no adapter touches once per rollout and reuse their output in every later forward.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from align.errors import AlignError
from align.frozen_trunk import capture_lower_layers, frozen_prefix, replay_lower_layers
from align.lora_merge import keep_trainable_set, lora_merge_blocker, lora_merged
from align.models import (
    AdapterConfig,
    ModelConfig,
    check_adapter_fits,
    guard_4bit_cpu_gradients,
    load_causal_lm,
    load_tokenizer,
    peft_config,
    pick_precision,
    resolve_model_ref,
)

POLICY_ADAPTER = "default"  # PEFT saves the "default" adapter at the top level: plain from_pretrained loads it
REF_ADAPTER = "ref"
VALUE_ADAPTER = "value"
REWARD_ADAPTER = "reward"


class ValueHead(nn.Module):
    """hidden (B, T, H) -> value (B, T), in float32.

    Zero-initialised so the first value-loss gradients do not push random directions into a
    shared trunk.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


@dataclass
class ModelRoles:
    """Everything that runs a forward pass during PPO, and how the roles map onto modules."""

    model: nn.Module  # the policy: PeftModel on the shared base, or a full causal LM
    tokenizer: Any
    value_head: ValueHead | None  # None for critic-free estimators (rloo, grpo)
    ref_kind: str  # "disable_adapter" | "ref_adapter" | "copy"
    base_dir: str  # resolved directory of the base weights
    quantization: str
    ref_model: nn.Module | None = None  # only for ref_kind == "copy"
    value_adapter: bool = False
    autocast_bf16: bool = False
    rollout_bf16: bool = False  # bf16 autocast for the no-grad phases only (ppo.train.rollout.precision)
    frozen_layers: int = 0  # bottom decoder layers no adapter of any role touches (set by find_frozen_layers)
    notes: list[str] = field(default_factory=list)

    @property
    def is_peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self, no_grad: bool = False) -> contextlib.AbstractContextManager:
        """bf16 autocast when precision bf16 was asked for (on CPU weights stay fp32), or for a no-grad
        phase (sampling, scoring, old/ref log-probs) under rollout_precision bf16."""
        if self.autocast_bf16 or (no_grad and self.rollout_bf16):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def trainable_parameters(self) -> list[nn.Parameter]:
        head = list(self.value_head.parameters()) if self.value_head is not None else []
        return [p for p in self.model.parameters() if p.requires_grad] + head


def _adapter_type(adapter_dir: Path) -> str:
    return json.loads((adapter_dir / "adapter_config.json").read_text()).get("peft_type", "?")


def _set_trainable(model: nn.Module, adapters: tuple[str, ...]) -> None:
    """Exactly the named adapters' weights train; everything else (base, ref, reward) is frozen."""
    for name, param in model.named_parameters():
        param.requires_grad = any(f".{a}." in name for a in adapters)


def load_roles(policy: ModelConfig, adapter: AdapterConfig, value_model: str | None = "head") -> ModelRoles:
    """Load the policy (and with it the ref_policy and value_model) as described in the module doc.

    value_model None: no value model at all (critic-free estimators).
    """
    resolved = Path(resolve_model_ref(policy.name))
    tokenizer = load_tokenizer(policy.name)
    tokenizer.padding_side = "left"
    precision = pick_precision(policy.precision)
    notes: list[str] = []
    ref_model = None
    if (resolved / "adapter_config.json").exists():
        kind = _adapter_type(resolved)
        if kind != "LORA":
            raise AlignError(f"ppo: the policy adapter {resolved} is {kind}; PPO supports LoRA/DoRA adapters "
                             "(prefix/prompt tuning cannot share the base with the other roles)")
        model = load_causal_lm(policy, for_training=True)
        model.load_adapter(str(resolved), adapter_name=REF_ADAPTER, is_trainable=False)
        ref_kind = "ref_adapter"
        base_dir = model.peft_config[POLICY_ADAPTER].base_model_name_or_path
        notes.append(f"policy = LoRA adapter {resolved} (trainable); ref_policy = a frozen copy of that adapter "
                     "on the same base (the `adapter` settings are not used)")
    else:
        base = load_causal_lm(policy)
        base_dir = str(resolved)
        if adapter.type == "full":
            check_adapter_fits("ppo", policy, adapter)
            if value_model == "adapter":
                raise AlignError("ppo: train.value.model: adapter needs a LoRA policy; use value.model: head")
            ref_model = copy.deepcopy(base).eval().requires_grad_(False)
            model = base.requires_grad_(True)
            ref_kind = "copy"
            notes.append("policy = full model (all weights train); ref_policy = a frozen copy (2 copies of the "
                         "weights in memory)")
        elif adapter.type in ("lora", "dora"):
            from peft import get_peft_model

            model = get_peft_model(base, peft_config(adapter, model=base))
            ref_kind = "disable_adapter"
            notes.append(f"policy = fresh {adapter.type} adapter on {base_dir}; ref_policy = the base (adapters "
                         "disabled)")
        else:
            raise AlignError(f"ppo: adapter.type {adapter.type} is not supported; use lora, dora or full")
    trainable = (POLICY_ADAPTER,)
    if value_model == "adapter":
        if not hasattr(model, "peft_config"):
            raise AlignError("ppo: train.value.model: adapter needs a LoRA policy; use value.model: head")
        value_cfg = copy.deepcopy(model.peft_config[POLICY_ADAPTER])
        value_cfg.inference_mode = False
        model.add_adapter(VALUE_ADAPTER, value_cfg)
        trainable += (VALUE_ADAPTER,)
        notes.append("value_model = its own LoRA adapter on the shared base + a scalar head")
    elif value_model == "head":
        notes.append("value_model = a scalar head on the policy trunk's last hidden state")
    else:
        notes.append("value_model = none (critic-free advantage estimator)")
    if hasattr(model, "peft_config"):
        _set_trainable(model, trainable)
        model.set_adapter(POLICY_ADAPTER)
        _set_trainable(model, trainable)  # set_adapter flips requires_grad; put ours back
    guarded = guard_4bit_cpu_gradients(model)
    if guarded:
        notes.append(f"4-bit CPU gradient guard on {guarded} layers")
    model.eval()  # dropout off, for good
    hidden = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.get_input_embeddings().weight.shape[1]
    value_head = ValueHead(hidden).to(next(model.parameters()).device) if value_model is not None else None
    return ModelRoles(
        model=model, tokenizer=tokenizer, value_head=value_head, ref_kind=ref_kind, base_dir=str(base_dir),
        quantization=policy.quantization, ref_model=ref_model, value_adapter=value_model == "adapter",
        autocast_bf16=precision.bf16 and precision.use_cpu, notes=notes,
    )


def init_value_from_reward(roles: ModelRoles, adapter_config: Any, head: nn.Linear, mean: float,
                           weight: float = 1.0) -> None:
    """Start the value model as the reward model (InstructGPT; TRL's PPO loaded its value model from the
    reward model): the value adapter becomes a trainable copy of the reward adapter, the value head
    weight * (score head − mean). Then the value predicted after token t is exactly the reward model's
    (normalised, weighted) score of the sequence up to t, as a sequence classifier reads its last token:
    the critic starts from the reward model's judgement instead of from 0.

    Needs value.model: adapter: the score head reads the reward adapter's hidden states, which the
    policy trunk (value.model: head) does not produce.
    """
    if not roles.value_adapter:
        raise AlignError("ppo: train.value.init: reward needs value.model: adapter (the reward model's score head reads "
                         "its own adapter's hidden states; on the policy trunk it would not give the reward model's "
                         "scores)")
    config = copy.deepcopy(adapter_config)
    config.inference_mode = False
    model = roles.model
    with keep_trainable_set(model):
        model.delete_adapter(VALUE_ADAPTER)  # built from the policy's LoRA settings; the reward's may differ
        model.add_adapter(VALUE_ADAPTER, config)
    params = dict(model.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, param in params.items():
            if f".{REWARD_ADAPTER}." in name:
                params[name.replace(f".{REWARD_ADAPTER}.", f".{VALUE_ADAPTER}.")].copy_(param)
                copied += 1
        roles.value_head.summary.weight.copy_(weight * head.weight.to(roles.value_head.summary.weight))
        bias = head.bias.item() if head.bias is not None else 0.0
        roles.value_head.summary.bias.fill_(weight * (bias - mean))
    if not copied:
        raise AlignError("ppo: value_init: reward found no reward adapter weights on the shared base")
    _set_trainable(model, (POLICY_ADAPTER, VALUE_ADAPTER))
    model.set_adapter(POLICY_ADAPTER)
    _set_trainable(model, (POLICY_ADAPTER, VALUE_ADAPTER))  # set_adapter flips requires_grad; put ours back
    roles.notes.append(f"value_model = starts as the reward model ({copied} adapter tensors and the score head "
                       f"copied, weight {weight:g}, mean {mean:g} subtracted)")


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Run forwards with another adapter of a PeftModel active (the trainable set unchanged)."""
    previous = model.active_adapter
    with keep_trainable_set(model):
        model.set_adapter(name)
    try:
        with keep_trainable_set(model):
            yield
    finally:
        with keep_trainable_set(model):
            model.set_adapter(previous)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model alone (peft's disable_adapter), the trainable set unchanged."""
    with keep_trainable_set(model), model.disable_adapter():
        yield


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as generate() uses with left padding. (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int, *, hidden: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits predicting the last n_response tokens and, if asked, the hidden states they come from.

    Shapes: input_ids, attention_mask (B, P + R) -> logits (B, R, V), hidden (B, R, H) or None.
    Position t of the outputs is the prediction made *before* response token t.
    """
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
        logits_to_keep=n_response + 1, output_hidden_states=hidden, use_cache=False,
    )
    logits = out.logits[:, :-1]
    states = out.hidden_states[-1][:, -(n_response + 1) : -1] if hidden else None
    return logits, states


def policy_forward(
    roles: ModelRoles, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
    trunk: torch.Tensor | None = None, no_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The trainable forward: policy logits (B, R, V) and value predictions (B, R), or None without a
    value model. One trunk pass gives both when the value head sits on the policy trunk.

    trunk: the frozen lower layers' output for these rows (B, P + R, H), from trunk_capture, or None.
    no_grad: a rollout-time forward (rollout_precision applies).
    """
    with roles.autocast(no_grad), trunk_replay(roles, trunk):
        wants_states = roles.value_head is not None and not roles.value_adapter
        logits, states = causal_forward(roles.model, input_ids, attention_mask, n_response, hidden=wants_states)
        if roles.value_head is None:
            return logits, None
        if roles.value_adapter:
            with use_adapter(roles.model, VALUE_ADAPTER):
                _, states = causal_forward(roles.model, input_ids, attention_mask, n_response, hidden=True)
        values = roles.value_head(states)
    return logits, values


@torch.no_grad()
def ref_forward(
    roles: ModelRoles, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int,
    trunk: torch.Tensor | None = None,
) -> torch.Tensor:
    """ref_policy logits predicting the response tokens. (B, P + R) -> (B, R, V)."""
    with roles.autocast(no_grad=True):
        if roles.ref_kind == "copy":
            return causal_forward(roles.ref_model, input_ids, attention_mask, n_response, hidden=False)[0]
        with trunk_replay(roles, trunk):
            if roles.ref_kind == "ref_adapter":
                with use_adapter(roles.model, REF_ADAPTER):
                    return causal_forward(roles.model, input_ids, attention_mask, n_response, hidden=False)[0]
            with adapters_disabled(roles.model):
                return causal_forward(roles.model, input_ids, attention_mask, n_response, hidden=False)[0]


# --------------------------------------------------------------------------- sampling with merged LoRA


def merge_blocker(roles: ModelRoles) -> str | None:
    """Why the policy adapter cannot be merged exactly for sampling, or None when it can."""
    if not roles.is_peft:
        return "the policy is a full model (nothing to merge)"
    return lora_merge_blocker(roles.model, POLICY_ADAPTER, roles.quantization)


def merged_for_sampling(roles: ModelRoles, enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Run generate() on the base with the policy's LoRA delta added to its weights; yields whether merged.

    align.lora_merge.lora_merged on the policy adapter: exact on the way back (the original weight
    tensors are put back, no float drift over thousands of steps); the ref, reward and value adapters
    are untouched, and the trainable set is the same afterwards. A full policy yields False.
    """
    return lora_merged(roles.model, POLICY_ADAPTER, roles.quantization, enabled)


# --------------------------------------------------------------------------- frozen lower layers


def find_frozen_layers(roles: ModelRoles) -> int:
    """How many bottom decoder layers every role computes identically: no adapter of any role (policy,
    ref, value, reward) wraps a module in them, nothing in them trains, and the embeddings have none.
    Call after every adapter is loaded. 0 for a full (non-adapter) policy."""
    if roles.ref_kind == "copy" or not roles.is_peft:
        return 0
    return frozen_prefix(roles.model)


def trunk_replay(roles: ModelRoles, trunk: torch.Tensor | None) -> contextlib.AbstractContextManager:
    """Forwards inside skip the frozen lower layers and start from `trunk` (B, L, H), their recorded
    output for exactly these input columns. No-op when trunk is None."""
    return replay_lower_layers(roles.model, roles.frozen_layers, trunk)


def trunk_capture(roles: ModelRoles, into: list[torch.Tensor]) -> contextlib.AbstractContextManager:
    """Record the output of the last frozen layer (B, L, H) of each forward inside, appended to `into`."""
    return capture_lower_layers(roles.model, roles.frozen_layers, into)


def save_policy(roles: ModelRoles, out_dir: Path) -> None:
    """The policy as a plain PEFT adapter (or a full checkpoint) plus tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if roles.is_peft:
        roles.model.save_pretrained(str(out_dir), selected_adapters=[POLICY_ADAPTER])
    else:
        roles.model.save_pretrained(str(out_dir))
    roles.tokenizer.save_pretrained(str(out_dir))


def policy_state_dict(roles: ModelRoles) -> dict[str, torch.Tensor]:
    """The trainable weights of the policy model (adapters or all weights), for checkpoints."""
    return {n: p.detach() for n, p in roles.model.named_parameters() if p.requires_grad}


def load_policy_state_dict(roles: ModelRoles, state: dict[str, torch.Tensor]) -> None:
    params = dict(roles.model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise AlignError(f"ppo: checkpoint does not match the policy (missing {missing[:3]}, unexpected {unknown[:3]}); "
                         "was it written with other policy/adapter settings?")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
