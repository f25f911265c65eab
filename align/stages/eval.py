"""Evaluate policies on held-out gold prompts: did alignment work?

For each policy (e.g. ``sft: "@sft"``, ``ppo: "@ppo"``): greedy responses to held-out prompts with
verifiable constraints, then
- gold score (fraction of constraints met) and strict accuracy (all met), per constraint type;
- reward-model score (when a reward model is given);
- KL(π‖π_ref) to a reference model (when one is given), see below;
- response length;
- win rate of every policy over the baseline, judged by the gold function, the reward model or an
  LLM judge (position-swapped);
- optionally lm-evaluation-harness tasks (``lm_eval``) on each policy.
Outputs ``responses.jsonl`` (every prompt/response/score) and ``metrics.json``.

KL is a Monte-Carlo estimate on SAMPLED responses, not on the greedy ones: KL(π‖π_ref) =
E_{y~π(·|x)}[log π(y|x) − log π_ref(y|x)] only holds for y drawn from π. On greedy responses the
log-ratio is no estimate of anything (it can even be negative). So for every prompt ``kl_samples``
responses are sampled from the policy itself (temperature 1, no top-k / top-p / repetition
penalty: the model's own distribution, seeded), and the per-response sum over its tokens (up to
and including EOS, at most max_new_tokens) of log π − log π_ref is averaged over prompts and
samples (the "k1" estimator: unbiased, noisy; ``kl_stderr`` is its standard error). log π is
recorded while sampling; log π_ref takes one forward pass of the reference. A policy that IS the
reference gets 0 without sampling. Gold, strict, reward-model scores and win rates stay on the
greedy responses.

Models: ``model`` (precision / quantization, as in align.models.ModelConfig) applies to every model
eval loads, so a QLoRA recipe can evaluate in 4-bit. Policies and the reference that are LoRA
adapters on the same base (e.g. ``@sft``, ``@ppo``) share ONE copy of the base: the adapters are
loaded side by side and switched (a plain base is the same weights with adapters disabled).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.errors import AlignError
from align.stages import StageContext, StageResult


class LmEvalConfig(BaseModel):
    """Standard benchmarks through EleutherAI's lm-evaluation-harness (`pip install lm_eval`)."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(description="lm-eval task names, e.g. [hellaswag, arc_easy] or local YAML task names.")
    include_path: str | None = Field(
        None, description="Folder of local task YAMLs (offline use); lm-eval runs inside it, so data_files "
        "paths in the YAMLs are relative to it.")
    limit: int | None = Field(None, gt=0, description="Examples per task (None = all).")
    batch_size: int = Field(8, gt=0)
    num_fewshot: int | None = None


# Logit elements (rows x response tokens x vocabulary) scored per forward when computing KL log-probs:
# 2**26 = 128 MiB of bf16 logits (+ two fp32 temporaries), whatever the model; align.plan counts the same.
KL_LOGITS_ELEMENTS = 2**26


class ModelSettings(BaseModel):
    """How eval loads its models: align.models.ModelConfig without the name (each model has its own)."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Compute precision. auto: bf16 on GPUs that support it, fp32 on CPU.")
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Load base weights quantized with bitsandbytes (4bit = NF4 + double quant, as QLoRA "
        "trained them).")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2; None = default.")
    trust_remote_code: bool = False


class Config(BaseModel):
    """The `eval:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    policies: dict[str, str] = Field(description="Name → model reference or @stage, e.g. {sft: '@sft', ppo: '@ppo'}.")
    baseline: str | None = Field(None, description="Policy the others are compared to (default: the first).")
    prompts: str = Field("gold:heldout", description="gold:heldout, gold:train, gold:focus:heldout (a shipped set's "
                         "split), or a JSONL of gold prompt records.")
    num_prompts: int | None = Field(64, gt=0, description="Evaluate the first N prompts (None = all).")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    reward_model: str | None = Field(None, description="Reward model dir or @reward: adds RM scores.")
    reference: str | None = Field(None, description="Reference model for KL (e.g. @sft); None = no KL.")
    kl_samples: int = Field(
        1, ge=0, description="Responses sampled per prompt from each policy (temperature 1, no top-k/top-p, seeded) "
        "for KL(π‖π_ref): the mean over prompts and samples of Σ_tokens log π − log π_ref (k1, unbiased; kl_stderr "
        "is its standard error). Greedy responses would not give a KL estimate. 0 = no KL.")
    kl_batch_size: int = Field(
        32, gt=0, description="Sequences per generate() call when sampling for KL (prompts x kl_samples). Larger "
        "batches sample far faster per sequence on CPU; align plan counts their KV cache.")
    model: ModelSettings | None = Field(
        None, description="precision / quantization (none|8bit|4bit) for the policies, the reference and the reward "
        "model, e.g. {quantization: 4bit} after QLoRA. None: policies and reference unquantized, the reward model "
        "as it was trained (its saved quantization, fp32).")
    judge: Literal["gold", "reward", "llm"] = Field("gold", description="What decides win rates.")
    llm_judge: dict[str, Any] | None = Field(None, description="Teacher settings for judge: llm (local or OpenAI-compatible).")
    lm_eval: LmEvalConfig | None = None


def load_prompts(spec: str, num: int | None) -> list:
    from align.eval.gold import gold_spec_path, load_gold_prompts, read_gold_prompts

    if spec.startswith("gold:"):
        try:
            path, split = gold_spec_path(spec)
        except AlignError as err:
            raise AlignError(f"eval.prompts: {err}") from None
        prompts = load_gold_prompts(split, path)
    else:
        prompts = read_gold_prompts(spec)
    return prompts[:num] if num else prompts


# --------------------------------------------------------------------------- KL on sampled responses


@dataclass
class SampledBatch:
    """One generate() call's samples, as token ids (never re-tokenized text: the KL is over these tokens).

    input_ids (N, P + R): left-padded prompt, then the response columns; attention_mask (N, P + R): real
    prompt tokens and response tokens up to and including the first EOS; response_mask (N, R): the tokens
    whose log-probs count. N = prompts in the call x samples per prompt (rows of a prompt are adjacent).
    """

    input_ids: Any
    attention_mask: Any
    response_mask: Any
    logprobs: Any = None  # (N, R) the sampling model's log-prob of each response token, recorded while sampling


def eos_token_ids(model, tokenizer) -> list[int]:
    """The ids generation stops at: the tokenizer's EOS and the model's generation-config EOS ids."""
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])} - {None}
    return sorted(ids)


def logprob_recorder():
    """A logits processor that records log π(token) of every sampled token while generate() runs.

    It sees the final scores (no warpers follow it: sampling_config at temperature 1 adds none) and keeps one (N, V)
    log-softmax: at each step it reads the previous step's value at the token that step sampled. This
    saves a second forward pass of the policy over every sample.
    """
    import torch
    from transformers import LogitsProcessor

    class Recorder(LogitsProcessor):
        def __init__(self) -> None:
            self.last = None
            self.taken: list = []

        def __call__(self, input_ids, scores):
            if self.last is not None:
                self.taken.append(self.last.gather(-1, input_ids[:, -1:]).squeeze(-1))
            self.last = torch.log_softmax(scores.float(), dim=-1)
            return scores

        def finish(self, sequences):
            """(N, R) log-probs of the R generated tokens of `sequences` (N, P + R)."""
            self.taken.append(self.last.gather(-1, sequences[:, -1:].to(self.last.device)).squeeze(-1))
            out = torch.stack(self.taken, dim=1)
            self.last, self.taken = None, []
            return out

    return Recorder()


def sample_responses(model, tokenizer, conversations: list[list[dict]], n: int, max_new_tokens: int,
                     batch_size: int, seed: int) -> list[SampledBatch]:
    """n responses per conversation sampled from the model, kept as token ids with their log-probs.

    Each generate() call takes max(1, batch_size // n) prompts (about batch_size sequences). Seeded per
    call, like align.generation.generate_texts.
    """
    import torch
    from transformers import LogitsProcessorList

    from align.generation import chat_prompt, sampling_config

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    # temperature 1, no top-k/top-p, nothing from the checkpoint's generation_config.json: samples from π itself
    config = sampling_config(max_new_tokens=max_new_tokens, temperature=1.0, num_return_sequences=n,
                             eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    seeds = torch.Generator().manual_seed(seed)
    per_call = max(1, batch_size // n)
    batches: list[SampledBatch] = []
    for start in range(0, len(conversations), per_call):
        prompts = [chat_prompt(tokenizer, c) for c in conversations[start : start + per_call]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=seeds)))
        recorder = logprob_recorder()
        with torch.no_grad():
            out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                                 logits_processor=LogitsProcessorList([recorder]), generation_config=config)
        logprobs = recorder.finish(out).cpu()
        out = out.cpu()
        response = out[:, enc["input_ids"].shape[1] :]
        is_eos = torch.isin(response, torch.tensor(eos_ids, dtype=response.dtype))
        keep = (is_eos.long().cumsum(-1) - is_eos.long()) == 0  # up to and including the first EOS
        prompt_mask = enc["attention_mask"].repeat_interleave(n, dim=0)
        batches.append(SampledBatch(out, torch.cat([prompt_mask, keep.long()], dim=1), keep, logprobs))
    return batches


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(getattr(model.config, "vocab_size", 0) or 32_000)


def sequence_logprobs(model, batches: list[SampledBatch]) -> list[float]:
    """Σ over each response's counted tokens of log p(token | everything before it), one float per row.

    Rows go through the model in chunks of at most KL_LOGITS_ELEMENTS logit entries.
    """
    import torch

    from align.ppo.policy import causal_forward
    from align.rl import logprobs_from_logits

    device = next(model.parameters()).device
    vocab = _vocab_size(model)
    sums: list[float] = []
    for b in batches:
        n_resp = b.response_mask.shape[1]
        rows = max(1, KL_LOGITS_ELEMENTS // (n_resp * vocab))
        for s in range(0, b.input_ids.shape[0], rows):
            ids = b.input_ids[s : s + rows].to(device)
            mask = b.attention_mask[s : s + rows].to(device)
            keep = b.response_mask[s : s + rows].to(device)
            with torch.no_grad():
                logits = causal_forward(model, ids, mask, n_resp, hidden=False)[0]
                logp = logprobs_from_logits(logits, ids[:, -n_resp:])
                sums.extend(logp.where(keep, 0.0).sum(-1).tolist())
            del logits, logp
    return sums


def kl_estimate(policy: ModelView, reference: ModelView, conversations: list[list[dict]], n: int,
                max_new_tokens: int, batch_size: int, seed: int) -> dict[str, float]:
    """k1 Monte-Carlo KL(π‖π_ref): mean over prompts and n samples y ~ π of Σ_t log π(y_t|·) − log π_ref(y_t|·)."""
    import math

    if policy.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise AlignError("eval.reference: KL needs the reference to share the policy's tokenizer (the same token "
                         "ids); this reference's vocabulary differs")
    with policy.active() as model:
        batches = sample_responses(model, policy.tokenizer, conversations, n, max_new_tokens, batch_size, seed)
    lp = [float(x) for b in batches for x in b.logprobs.where(b.response_mask, 0.0).sum(-1)]
    with reference.active() as model:
        lp_ref = sequence_logprobs(model, batches)
    ratios = [a - b for a, b in zip(lp, lp_ref)]
    mean = sum(ratios) / len(ratios)
    var = sum((r - mean) ** 2 for r in ratios) / max(1, len(ratios) - 1)
    tokens = sum(int(b.response_mask.sum()) for b in batches)
    return {"kl": mean, "kl_stderr": math.sqrt(var / len(ratios)), "kl_samples": len(ratios),
            "kl_response_tokens_mean": tokens / len(ratios)}


# --------------------------------------------------------------------------- loading: one copy per base


@dataclass(frozen=True)
class ModelSpec:
    """A model eval runs, described without loading it."""

    ref: str  # as named (after @stage resolution)
    base: str  # the base weights (local dirs as absolute paths)
    adapter: str | None  # a LoRA adapter dir on that base; None = the base itself
    shareable: bool  # a plain model or a LoRA adapter: can ride on a shared copy of its base

    @property
    def group(self) -> tuple[str, str]:
        """Specs with the same group are served by one loaded model."""
        return ("base", self.base) if self.shareable else ("own", self.adapter or self.base)

    @property
    def identity(self) -> tuple[str, str | None]:
        return self.base, self.adapter


def _norm_path(path: str) -> str:
    return str(Path(path).resolve()) if Path(path).exists() else path


def describe_model(ref: str) -> ModelSpec:
    from align.models import resolve_model_ref

    resolved = resolve_model_ref(ref)
    adapter_cfg = Path(resolved) / "adapter_config.json"
    if adapter_cfg.exists():
        cfg = json.loads(adapter_cfg.read_text())
        return ModelSpec(ref, _norm_path(cfg["base_model_name_or_path"]), _norm_path(resolved),
                         cfg.get("peft_type") == "LORA")
    return ModelSpec(ref, _norm_path(resolved), None, True)


@dataclass
class ModelView:
    """One model as eval sees it: a loaded model (possibly shared) + which adapter to run it with."""

    model: Any
    tokenizer: Any
    adapter: str | None = None  # PeftModel adapter to activate
    base_only: bool = False  # run the shared base with adapters disabled

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)
        with self.model.disable_adapter() if self.base_only else contextlib.nullcontext():
            yield self.model


def check_settings(settings: ModelSettings | None) -> None:
    """Fail before loading anything when the machine cannot honour eval.model."""
    import importlib.util

    from align.models import pick_precision

    if settings is None:
        return
    try:
        pick_precision(settings.precision)
    except AlignError as exc:
        raise AlignError(f"eval.model.precision: {exc}") from None
    if settings.quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise AlignError(f"eval.model.quantization: {settings.quantization} loads the weights with bitsandbytes, "
                         "which is not installed (pip install bitsandbytes; without a CUDA GPU it needs a "
                         "bitsandbytes build with CPU support); or set eval.model.quantization: none")


def _model_config(ref: str, settings: ModelSettings | None):
    from align.models import ModelConfig

    return ModelConfig(name=ref, **(settings.model_dump() if settings else {}))


def _loading(what: str, settings: ModelSettings | None, load):
    """Run a loader; bitsandbytes/transformers errors of a quantized load name the recipe key."""
    try:
        return load()
    except (ImportError, RuntimeError, ValueError) as exc:
        if settings is None or settings.quantization == "none":
            raise
        raise AlignError(f"eval.model.quantization: {settings.quantization}: loading {what} failed: {exc}. "
                         "Use quantization: none, or a bitsandbytes build that supports this device.") from exc


def load_views(specs: list[ModelSpec], settings: ModelSettings | None) -> dict[tuple, ModelView]:
    """Load the models of one group: a plain model, or ONE base with every LoRA adapter of the group on it.

    Returns a view per spec identity (base, adapter). A spec that is the base itself runs with adapters
    disabled; an adapter is activated by name before each use.
    """
    from align.models import load_causal_lm, load_tokenizer

    unique = list({s.identity: s for s in specs}.values())
    adapters = [s for s in unique if s.adapter is not None]
    first = adapters[0] if adapters else unique[0]
    model = _loading(first.ref, settings, lambda: load_causal_lm(_model_config(first.ref, settings)))
    model.eval()
    names = {}
    for i, spec in enumerate(adapters):
        names[spec.identity] = "default" if i == 0 else f"eval_{i}"
        if i > 0:  # peft: a second LoRA on the same base weights, switched with set_adapter
            model.load_adapter(spec.adapter, adapter_name=names[spec.identity], is_trainable=False)
    views = {}
    for spec in unique:
        tokenizer = load_tokenizer(spec.ref)
        tokenizer.padding_side = "left"
        views[spec.identity] = ModelView(model, tokenizer, adapter=names.get(spec.identity),
                                         base_only=bool(adapters) and spec.adapter is None)
    return views


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_reward(path: str, settings: ModelSettings | None):
    """The reward model: as trained (align.reward_model.load_reward_model) unless eval.model says how."""
    from align.reward_model import load_reward_model

    if settings is None:
        return load_reward_model(path)
    from align.models import load_sequence_classifier
    from align.reward_model import read_saved_reward_model

    saved = read_saved_reward_model(path)
    folder = str(saved.folder)
    tokenizer = saved.tokenizer()
    # name = the folder: align.models loads an adapter on its base (quantized as asked), a full model as is
    model = _loading(folder, settings,
                     lambda: load_sequence_classifier(_model_config(folder, settings), num_labels=1))
    return saved.wrap(model, tokenizer)


def run_lm_eval(model_ref: str, cfg: LmEvalConfig, out_dir: Path) -> dict[str, Any]:
    """Run lm-evaluation-harness on one model (adapters via its `peft=` model arg); returns task metrics."""
    from align.models import resolve_model_ref

    resolved = Path(resolve_model_ref(model_ref))
    adapter = resolved / "adapter_config.json"
    if adapter.exists():
        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        model_args = f"pretrained={base},peft={resolved},tokenizer={resolved}"
    else:
        model_args = f"pretrained={resolved}"
    out_dir = out_dir.resolve()
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", model_args + ",dtype=float32",
           "--tasks", ",".join(cfg.tasks), "--batch_size", str(cfg.batch_size), "--output_path", str(out_dir),
           "--device", "cuda" if _cuda() else "cpu"]
    cwd = None
    if cfg.include_path:
        cwd = str(Path(cfg.include_path).resolve())
        if not Path(cwd).is_dir():
            raise AlignError(f"eval.lm_eval.include_path: {cfg.include_path} is not a folder")
        cmd += ["--include_path", cwd]
    if cfg.limit:
        cmd += ["--limit", str(cfg.limit)]
    if cfg.num_fewshot is not None:
        cmd += ["--num_fewshot", str(cfg.num_fewshot)]
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1")}
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise AlignError("eval.lm_eval needs lm-evaluation-harness: pip install lm_eval") from exc
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    (out_dir / "lm_eval.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise AlignError(f"lm_eval failed for {model_ref} (exit {proc.returncode}); see {out_dir / 'lm_eval.log'}:\n"
                         + proc.stderr[-1500:])
    results_files = sorted(out_dir.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not results_files:
        raise AlignError(f"lm_eval wrote no results under {out_dir}")
    results = json.loads(results_files[-1].read_text())["results"]
    return {task: {k: v for k, v in vals.items() if isinstance(v, (int, float))} for task, vals in results.items()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(cfg: Config, ctx: StageContext) -> StageResult:
    from align.eval.gold import score_batch
    from align.eval.winrate import pairwise_win_rate, win_rate
    from align.generation import generate_chat

    if not cfg.policies:
        raise AlignError("eval.policies: name at least one policy to evaluate")
    baseline = cfg.baseline or next(iter(cfg.policies))
    if baseline not in cfg.policies:
        raise AlignError(f"eval.baseline: {baseline!r} is not one of the policies ({', '.join(cfg.policies)})")
    if cfg.judge == "reward" and not cfg.reward_model:
        raise AlignError("eval.judge: reward needs eval.reward_model")
    if cfg.judge == "llm" and not cfg.llm_judge:
        raise AlignError("eval.judge: llm needs eval.llm_judge (teacher settings)")
    check_settings(cfg.model)
    prompts = load_prompts(cfg.prompts, cfg.num_prompts)
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]

    responses: dict[str, list[str]] = {}
    metrics: dict[str, Any] = {"n_prompts": len(prompts), "baseline": baseline, "judge": cfg.judge,
                               "policies": {name: {} for name in cfg.policies}}
    specs = {name: describe_model(ctx.resolve(ref)) for name, ref in cfg.policies.items()}
    ref_spec = describe_model(ctx.resolve(cfg.reference)) if cfg.reference and cfg.kl_samples else None
    groups: dict[tuple, list[str]] = {}
    for name, spec in specs.items():
        groups.setdefault(spec.group, []).append(name)
    # The reference rides on its own base's group, which goes first; policies on other bases get one
    # separate copy of it, loaded once and kept while they take turns.
    order = sorted(groups, key=lambda g: ref_spec is None or g != ref_spec.group)
    own_reference, loads = None, len(groups)
    for group in order:
        names = groups[group]
        members = [specs[n] for n in names]
        with_ref = ref_spec is not None and ref_spec.group == group
        if ref_spec is not None and not with_ref and own_reference is None:
            own_reference = load_views([ref_spec], cfg.model)[ref_spec.identity]
            loads += 1
        views = load_views(members + ([ref_spec] if with_ref else []), cfg.model)
        reference = views[ref_spec.identity] if with_ref else own_reference
        for name in names:
            view = views[specs[name].identity]
            with view.active() as model:
                responses[name] = generate_chat(model, view.tokenizer, conversations,
                                                max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                                batch_size=cfg.batch_size, seed=ctx.seed)
            gold = score_batch(prompts, responses[name])
            entry = metrics["policies"][name]
            entry.update({
                "gold_score": gold["gold_score"], "strict_accuracy": gold["strict_accuracy"],
                "instruction_accuracy": gold["instruction_accuracy"], "pass_rate": gold["pass_rate"],
                "response_words_mean": sum(len(r.split()) for r in responses[name]) / len(prompts),
            })
            if reference is not None and specs[name].identity == ref_spec.identity:
                entry.update({"kl": 0.0, "kl_stderr": 0.0, "kl_samples": 0})  # the reference itself: 0, exactly
            elif reference is not None:
                entry.update(kl_estimate(view, reference, conversations, cfg.kl_samples, cfg.max_new_tokens,
                                         cfg.kl_batch_size, ctx.seed))
            if "kl" in entry:
                entry["kl_to_reference"] = entry["kl"]  # the old key (report.py reads it), now the sampled estimate
        del views, reference, view, model
        _free()
    del own_reference
    _free()
    metrics["model_loads"] = loads  # base models loaded (policies and reference), each once

    rm_scores: dict[str, list[float]] = {}
    if cfg.reward_model:
        reward_model = load_reward(ctx.resolve(cfg.reward_model), cfg.model)
        texts = [p.prompt for p in prompts]
        for name in cfg.policies:
            rm_scores[name] = reward_model.score(texts, responses[name])
            metrics["policies"][name]["reward_score"] = sum(rm_scores[name]) / len(prompts)
        del reward_model

    from align.eval.bootstrap import paired_bootstrap
    from align.eval.gold import gold_score, strict_accuracy

    per_prompt_gold = {n: [gold_score(p, r) for p, r in zip(prompts, responses[n])] for n in cfg.policies}
    per_prompt_strict = {n: [strict_accuracy(p, r) for p, r in zip(prompts, responses[n])] for n in cfg.policies}
    for name in cfg.policies:
        if name != baseline:  # the gain over the baseline on the same prompts, with a paired bootstrap 95% CI
            metrics["policies"][name]["gold_gain"] = paired_bootstrap(
                per_prompt_gold[name], per_prompt_gold[baseline], seed=ctx.seed)
            metrics["policies"][name]["strict_gain"] = paired_bootstrap(
                per_prompt_strict[name], per_prompt_strict[baseline], seed=ctx.seed)
    judge_fn = _llm_judge(cfg.llm_judge) if cfg.judge == "llm" else None
    for name in cfg.policies:
        if name == baseline:
            continue
        if cfg.judge == "gold":
            wr = win_rate(per_prompt_gold[name], per_prompt_gold[baseline])
        elif cfg.judge == "reward":
            wr = win_rate(rm_scores[name], rm_scores[baseline])
        else:
            wr = pairwise_win_rate(judge_fn, [p.prompt for p in prompts], responses[name], responses[baseline])
        metrics["policies"][name]["win_rate_vs_" + baseline] = wr["win_rate"]
        metrics["policies"][name]["win_rate_detail"] = wr

    if cfg.lm_eval:
        for name, ref in cfg.policies.items():
            out = ctx.stage_dir / "lm_eval" / name
            out.mkdir(parents=True, exist_ok=True)
            metrics["policies"][name]["lm_eval"] = run_lm_eval(ctx.resolve(ref), cfg.lm_eval, out)

    with open(ctx.stage_dir / "responses.jsonl", "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            row = {"id": p.id, "prompt": p.prompt}
            for name in cfg.policies:
                row[name] = {"response": responses[name][i], "gold": per_prompt_gold[name][i]}
                if name in rm_scores:
                    row[name]["reward"] = rm_scores[name][i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # headline numbers for the run summary: the last policy (usually the most aligned one) vs baseline
    last = list(cfg.policies)[-1]
    metrics["gold_score"] = metrics["policies"][last]["gold_score"]
    metrics["strict_accuracy"] = metrics["policies"][last]["strict_accuracy"]
    if "kl" in metrics["policies"][last]:
        metrics["kl"] = metrics["policies"][last]["kl"]
    if last != baseline:
        metrics["win_rate"] = metrics["policies"][last]["win_rate_vs_" + baseline]
        gain = metrics["policies"][last]["gold_gain"]
        metrics["gold_gain_vs_baseline"] = gain["gain"]
        metrics["gold_gain_ci95"] = [gain["ci_low"], gain["ci_high"]]
    return StageResult(outputs={"responses": str(ctx.stage_dir / "responses.jsonl")}, metrics=metrics)


def _llm_judge(settings: dict[str, Any]):
    """A position-swappable pairwise judge backed by a teacher (local model or OpenAI-compatible)."""
    from align.judges import pairwise_judge_fn
    from align.teachers import TeacherConfig, make_teacher

    return pairwise_judge_fn(make_teacher(TeacherConfig.model_validate(settings)))
