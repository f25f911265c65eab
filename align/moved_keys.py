"""Recipe keys that moved: the one table, and the check that names an old key's new place.

A recipe (or a command-line override) that still uses an old key fails with one line per old key,
e.g. "`ppo.ppo.init_kl_coef` moved to `ppo.train.kl.init_coef`", instead of pydantic's "unknown key".
"""

from __future__ import annotations

from typing import Any

# ppo.ppo.<old> -> ppo.train.<new>: the PPO loop's block is `train:` as in the other training stages, its
# flat settings grouped by concern (align.ppo.config).
_PPO = {
    "steps": "steps", "ppo_epochs": "ppo_epochs", "mini_batch_size": "mini_batch_size", "grad_accum": "grad_accum",
    "lr": "lr", "lr_schedule": "lr_schedule", "adam_eps": "adam_eps", "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm", "cliprange": "cliprange", "entropy_coef": "entropy_coef",
    "max_approxkl": "max_approxkl", "loss_aggregation": "loss_aggregation", "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "batch_size": "rollout.batch_size", "group_size": "rollout.group_size",
    "max_prompt_length": "rollout.max_prompt_length", "max_new_tokens": "rollout.max_new_tokens",
    "temperature": "rollout.temperature", "top_p": "rollout.top_p",
    "missing_eos_penalty": "rollout.missing_eos_penalty", "generation_batch_size": "rollout.generation_batch_size",
    "merge_for_sampling": "rollout.merge_for_sampling", "forward_batch_size": "rollout.forward_batch_size",
    "reuse_frozen_layers": "rollout.reuse_frozen_layers", "rollout_precision": "rollout.precision",
    "advantage": "advantage.estimator", "dr_grpo": "advantage.dr_grpo", "gamma": "advantage.gamma",
    "lam": "advantage.lam", "whiten_rewards": "advantage.whiten_rewards",
    "whiten_advantages": "advantage.whiten_advantages",
    "init_kl_coef": "kl.init_coef", "adaptive_kl": "kl.adaptive", "target_kl": "kl.target",
    "kl_horizon": "kl.horizon", "kl_estimator": "kl.estimator", "kl_penalty": "kl.penalty",
    "value_model": "value.model", "value_init": "value.init", "vf_coef": "value.coef",
    "cliprange_value": "value.cliprange",
    "ptx_coef": "ptx.coef", "ptx_data": "ptx.data", "ptx_max_length": "ptx.max_length",
    "sample_every": "log.sample_every", "num_samples": "log.num_samples", "gold_fn": "log.gold_fn",
    "report_to": "log.report_to", "progress": "log.progress",
}

# self_instruct.sampling.<old> -> self_instruct.sampling.<new>: prefixes became sections.
_SAMPLING = {
    "num_prompt_instructions": "bootstrap.num_prompt_instructions",
    "num_machine_in_prompt": "bootstrap.num_machine_in_prompt",
    "bootstrap_prompt": "bootstrap.prompt", "bootstrap_on_length": "bootstrap.on_length",
    "bootstrap_max_tokens": "bootstrap.max_tokens", "bootstrap_temperature": "bootstrap.temperature",
    "bootstrap_stop": "bootstrap.stop",
    "classification_max_tokens": "instances.classification_max_tokens",
    "instance_max_tokens": "instances.max_tokens", "instance_temperature": "instances.temperature",
    "max_instances_per_task": "instances.max_per_task",
    "alpaca_num_tasks": "alpaca.num_tasks", "alpaca_prompt_tasks": "alpaca.prompt_tasks",
    "alpaca_max_tokens": "alpaca.max_tokens", "alpaca_temperature": "alpaca.temperature",
}

# old dotted key -> new dotted key (a whole block first: `ppo.ppo` keys not listed below still point to ppo.train)
MOVED_KEYS: dict[str, str] = {
    "ppo.ppo": "ppo.train",
    **{f"ppo.ppo.{old}": f"ppo.train.{new}" for old, new in _PPO.items()},
    **{f"self_instruct.sampling.{old}": f"self_instruct.sampling.{new}" for old, new in _SAMPLING.items()},
}


def _is_block(key: str) -> bool:
    return any(old.startswith(key + ".") for old in MOVED_KEYS)


def moved_to(key: str) -> tuple[str, str] | None:
    """(old key, new key) when the dotted `key` is, or lies under, a moved key (`ppo.ppo.ptx_data.path` ->
    `ppo.train.ptx.data.path`); a key of a moved block that the table does not list names the block."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        old = ".".join(parts[:n])
        if old in MOVED_KEYS:
            if _is_block(old):
                return old, MOVED_KEYS[old]
            return key, ".".join([MOVED_KEYS[old], *parts[n:]])
    return None


def moved_keys_in(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(old key, new key) for every old key in the raw recipe mapping, in the order they appear."""
    found: list[tuple[str, str]] = []

    def visit(node: dict, prefix: str) -> None:
        for k, value in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if key in MOVED_KEYS and not (_is_block(key) and isinstance(value, dict) and value):
                found.append((key, MOVED_KEYS[key]))
            elif isinstance(value, dict):
                visit(value, key)
            elif prefix in MOVED_KEYS and (prefix, MOVED_KEYS[prefix]) not in found:
                found.append((prefix, MOVED_KEYS[prefix]))  # a key the table does not list, under a moved block

    visit(raw, "")
    return found


def moved_message(old: str, new: str) -> str:
    return f"`{old}` moved to `{new}`"
