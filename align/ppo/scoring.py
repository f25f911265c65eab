"""Scoring rollouts: a reward model (sharing the policy's base, or separate), a Python function, or a
weighted sum of one of those with Python functions (a reward model plus verifiable checkers).

Every scorer has ``score(queries, responses) -> list[float]`` with queries as conversations
(lists of messages ending with the user turn) and responses as decoded text without EOS.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from align.callables import is_callable_spec, load_callable
from align.errors import AlignError
from align.ppo.queries import Conversation, last_user_message

if TYPE_CHECKING:
    import torch

    from align.ppo.config import RewardConfig
    from align.ppo.policy import ModelRoles

log = logging.getLogger("align")


class Scorer(Protocol):
    kind: str

    def score(self, queries: list[Conversation], responses: list[str]) -> list[float]: ...


# --------------------------------------------------------------------------- Python functions


def is_function_spec(spec: str) -> bool:
    """`module:function` or `file.py:function` (and not an existing path)."""
    return is_callable_spec(spec)


def load_function(spec: str, what: str = "reward") -> Callable[..., Any]:
    """Import `module:function` or `path/to/file.py:function`."""
    return load_callable(spec, f"ppo: {what}")


class FunctionScorer:
    """fn(prompt, response) -> float, with prompt = the last user message of the query."""

    kind = "function"

    def __init__(self, spec: str, what: str = "reward") -> None:
        self.spec, self.what = spec, what
        self.fn = load_function(spec, what)

    def score(self, queries: list[Conversation], responses: list[str]) -> list[float]:
        out = []
        for query, response in zip(queries, responses, strict=True):
            value = self.fn(last_user_message(query), response)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise AlignError(f"ppo: {self.what} {self.spec} returned {value!r}; expected a number") from None
            if not math.isfinite(value):
                raise AlignError(f"ppo: {self.what} {self.spec} returned {value}; expected a finite number")
            out.append(value)
        return out


# --------------------------------------------------------------------------- reward models


def read_reward_info(model_dir: Path) -> dict:
    """align_reward.json and reward_normalization.json of a saved reward model (defaults when absent)."""
    from align.preferences.reward_model import META_FILE, NORM_FILE

    meta_file, norm_file = model_dir / META_FILE, model_dir / NORM_FILE
    info = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    info["mean"] = float(json.loads(norm_file.read_text()).get("mean", 0.0)) if norm_file.exists() else 0.0
    info.setdefault("adapter", (model_dir / "adapter_config.json").exists())
    info["max_length"] = int(info.get("max_length") or 512)
    if info["adapter"] and not info.get("base"):
        info["base"] = json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return info


class SharedBaseRewardScorer:
    """A LoRA reward adapter (sequence classifier) on the policy's own copy of the base weights.

    The adapter's LoRA weights go in as a frozen adapter ``reward``; its score head (saved by
    peft under modules_to_save) becomes a separate Linear on the trunk's last hidden state; the
    pooled position is the last non-pad token, exactly as transformers' *ForSequenceClassification.
    """

    kind = "reward_adapter_on_shared_base"

    def __init__(self, roles: ModelRoles, adapter_dir: Path, info: dict, batch_size: int) -> None:
        import torch
        from peft import LoraConfig
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from align.ppo.policy import REWARD_ADAPTER, keep_trainable_set

        self.roles, self.batch_size = roles, batch_size
        self.mean, self.max_length = info["mean"], info["max_length"]
        cfg = LoraConfig.from_pretrained(str(adapter_dir))
        head_names = tuple(cfg.modules_to_save or ("score", "classifier"))
        cfg.modules_to_save, cfg.task_type, cfg.inference_mode = None, "CAUSAL_LM", True
        self.adapter_config = cfg  # for value_init: reward (a value adapter shaped like this one)
        weights_file = adapter_dir / "adapter_model.safetensors"
        if not weights_file.exists():
            raise AlignError(f"ppo: {adapter_dir} has no adapter_model.safetensors")
        state = load_file(str(weights_file))
        head = {k: v for k, v in state.items() if any(f".{h}." in k for h in head_names)}
        lora = {k: v for k, v in state.items() if k not in head}
        weight = next((v for k, v in head.items() if k.endswith(".weight")), None)
        if weight is None or weight.shape[0] != 1:
            raise AlignError(f"ppo: {adapter_dir}: no 1-output score head among the saved modules_to_save "
                             f"({sorted(head)}); expected a reward adapter saved with task_type SEQ_CLS")
        bias = next((v for k, v in head.items() if k.endswith(".bias")), None)
        model = roles.model
        with keep_trainable_set(model):  # add_adapter re-activates the policy adapter, flipping requires_grad
            model.add_adapter(REWARD_ADAPTER, cfg)
        result = set_peft_model_state_dict(model, lora, adapter_name=REWARD_ADAPTER)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise AlignError(f"ppo: reward adapter {adapter_dir} does not fit the policy's base "
                             f"(unexpected weights {unexpected[:3]})")
        for name, param in model.named_parameters():
            if f".{REWARD_ADAPTER}." in name:
                param.requires_grad_(False)
        self.head = torch.nn.Linear(weight.shape[1], 1, bias=bias is not None)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            if bias is not None:
                self.head.bias.copy_(bias)
        self.head.requires_grad_(False).to(roles.device)
        try:  # the tokenizer the reward model was trained with (same vocabulary as the base)
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        except (OSError, ValueError):
            self.tokenizer = roles.tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id

    @property
    def trunk(self) -> torch.nn.Module:
        """The transformer without its LM head (LlamaModel inside LlamaForCausalLM, etc.)."""
        return self.roles.model.get_base_model().base_model

    def raw_scores(self, queries: list[Conversation], responses: list[str]) -> list[float]:
        """The head's output, on exactly the tokens the standalone reward model reads
        (align.preferences.reward_model)."""
        import torch

        from align.ppo.policy import REWARD_ADAPTER, use_adapter
        from align.preferences.reward_model import encode, pad_rows

        out: list[float] = []
        with torch.no_grad(), use_adapter(self.roles.model, REWARD_ADAPTER), self.roles.autocast(no_grad=True):
            for start in range(0, len(queries), self.batch_size):
                rows = [encode(self.tokenizer, q, r, "chat", self.max_length)
                        for q, r in zip(queries[start : start + self.batch_size],
                                        responses[start : start + self.batch_size], strict=True)]
                batch = {k: v.to(self.roles.device) for k, v in pad_rows(rows, self.pad_id).items()}
                hidden = self.trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                logits = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)  # (B, L)
                # the rightmost non-pad token, as transformers' *ForSequenceClassification pools
                non_pad = (batch["input_ids"] != self.pad_id).int()
                last = (torch.arange(non_pad.shape[1], device=non_pad.device) * non_pad).argmax(-1)
                out.extend(logits[torch.arange(len(last)), last].float().tolist())
        return out

    def score(self, queries: list[Conversation], responses: list[str]) -> list[float]:
        return [r - self.mean for r in self.raw_scores(queries, responses)]


class SeparateRewardScorer:
    """A reward model loaded on its own (another architecture, a full checkpoint, or share_base off)."""

    kind = "separate_reward_model"

    def __init__(self, path: Path, batch_size: int) -> None:
        from align.preferences.reward_model import load_reward_model

        self.model = load_reward_model(str(path))
        self.batch_size = batch_size

    def score(self, queries: list[Conversation], responses: list[str]) -> list[float]:
        return [float(s) for s in self.model.score(queries, responses, batch_size=self.batch_size)]


class WeightedSumScorer:
    """weight_0 * scorer_0 + weight_1 * scorer_1 + ...: e.g. a reward model plus a verifiable checker.

    (To watch one part alone during training, also name it as ppo.train.log.gold_fn: it is logged as objective/gold.)
    """

    kind = "weighted_sum"

    def __init__(self, parts: list[tuple[str, float, Scorer]]) -> None:
        self.parts = parts  # (name, weight, scorer)

    def score(self, queries: list[Conversation], responses: list[str]) -> list[float]:
        total = [0.0] * len(responses)
        for _, weight, scorer in self.parts:
            if weight:
                total = [t + weight * s for t, s in zip(total, scorer.score(queries, responses), strict=True)]
        return total


def start_value_from_reward(roles: ModelRoles, scorer: Scorer) -> None:
    """value_init: reward: the value model starts as the reward adapter on the shared base (see
    align.ppo.policy.init_value_from_reward); in a weighted sum, scaled by the reward model's weight."""
    from align.ppo.policy import init_value_from_reward

    parts = scorer.parts if isinstance(scorer, WeightedSumScorer) else [("reward", 1.0, scorer)]
    found = [(weight, part) for _, weight, part in parts if isinstance(part, SharedBaseRewardScorer)]
    if not found:
        raise AlignError(f"ppo: value_init: reward needs a reward model that shares the policy's base (a LoRA reward "
                         f"adapter trained on the same base, share_base: true); the reward here is {scorer.kind}")
    weight, rm = found[0]
    init_value_from_reward(roles, rm.adapter_config, rm.head, rm.mean, weight)


def load_scorer(cfg: RewardConfig, source: str, roles: ModelRoles) -> Scorer:
    """The scorer `cfg` describes: the source alone, or its weighted sum with `cfg.functions`."""
    scorer = load_source_scorer(cfg, source, roles)
    if not cfg.functions and cfg.weight == 1.0:
        return scorer
    parts: list[tuple[str, float, Scorer]] = [(source, cfg.weight, scorer)]
    parts += [(term.function, term.weight, FunctionScorer(term.function)) for term in cfg.functions]
    roles.notes.append("reward = " + " + ".join(f"{w:g} * {name}" for name, w, _ in parts))
    return WeightedSumScorer(parts)


def load_source_scorer(cfg: RewardConfig, source: str, roles: ModelRoles) -> Scorer:
    """Pick how to score: a function, the reward adapter on the shared base, or a separate model."""
    if is_function_spec(source):
        roles.notes.append(f"reward = Python function {source}")
        return FunctionScorer(source)
    from align.models import resolve_model_ref
    from align.preferences.reward_model import find_reward_dir

    if not Path(source).expanduser().exists():
        raise AlignError(f"ppo: reward {source!r} is neither a directory nor a `module:function`")
    model_dir = find_reward_dir(source)
    info = read_reward_info(model_dir)
    shareable = cfg.share_base and info["adapter"] and roles.is_peft and info.get("format", "chat") == "chat"
    if shareable:
        base = info.get("base") or ""
        same_base = bool(base) and Path(resolve_model_ref(base)).resolve() == Path(roles.base_dir).resolve()
        lora = json.loads((model_dir / "adapter_config.json").read_text()).get("peft_type") == "LORA"
        if same_base and lora:
            if roles.quantization != "none":
                log.info("ppo: the reward adapter runs on the policy's %s base; its scores can differ slightly "
                         "from the full-precision reward model's", roles.quantization)
            roles.notes.append(f"reward_model = LoRA adapter {model_dir} on the shared base (one copy of base weights)")
            return SharedBaseRewardScorer(roles, model_dir, info, cfg.batch_size)
        roles.notes.append(f"reward_model = separate model {model_dir} (its base {base} is not the policy's "
                           f"{roles.base_dir})")
    else:
        roles.notes.append(f"reward_model = separate model {model_dir}")
    return SeparateRewardScorer(model_dir, cfg.batch_size)
