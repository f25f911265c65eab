"""Evaluate policies on held-out gold prompts: did alignment work?

For each policy (e.g. ``sft: "@sft"``, ``ppo: "@ppo"``): greedy responses to held-out prompts with
verifiable constraints, then
- gold score: the simulated labeler's score (align.eval.labeler: quality × constraint compliance), with
  compliance (fraction of constraints met) and strict accuracy (all met), per constraint type;
- gaming guards (align.eval.guards): degenerate share, distinct-n, on-topic similarity by two signals,
  length, each with a paired CI of its change from the baseline, and a row per fixed string answered to
  every prompt (what a trivial answer scores);
- reward-model score (when a reward model is given);
- KL(π‖π_ref) to a reference model (when one is given), see below;
- response length;
- win rate of every policy over the baseline, judged by the gold function, the reward model or an
  LLM judge (position-swapped);
- ``benchmarks: [ifeval]``: the 541 official IFEval prompts (or the first ``ifeval.num_prompts``), greedy,
  scored by the official checkers (align.eval.ifeval): prompt- and instruction-level, strict and loose,
  with a paired bootstrap CI of each policy's change from the baseline and the fixed strings' scores;
- optionally lm-evaluation-harness tasks (``lm_eval``) on each policy.
Outputs ``responses.jsonl`` (every prompt/response/score), ``ifeval_responses.jsonl`` (with
``benchmarks: [ifeval]``) and ``metrics.json``.

KL is a Monte-Carlo estimate on SAMPLED responses (``kl_samples`` per prompt from the policy itself, the
"k1" estimator with its standard error; align.eval.kl says why greedy responses would not do). A policy
that IS the reference gets 0 without sampling. Gold, strict, reward-model scores and win rates stay on
the greedy responses.

Models: ``model`` (align.models.ModelSettings: a ModelConfig without the name, i.e. precision,
quantization, ...) applies to every model eval loads, so a QLoRA recipe can evaluate in 4-bit. Policies
and the reference that are LoRA adapters on the same base (e.g. ``@sft``, ``@ppo``) share ONE copy of
the base (align.eval.loading).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.errors import AlignError
from align.eval.guards import DEFAULT_FIXED_STRINGS
from align.eval.harness import LmEvalConfig
from align.eval.ifeval import IFEvalConfig
from align.models import ModelSettings
from align.preferences.judges import LLMJudgeConfig
from align.stages import StageContext, StageResult

log = logging.getLogger("align.eval")

if TYPE_CHECKING:
    from align.eval.loading import ModelView


class Config(BaseModel):
    """The `eval:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    policies: dict[str, str] = Field(description="Name → model reference or @stage, e.g. {sft: '@sft', ppo: '@ppo'}.",
                                     json_schema_extra={"input": "model"})
    baseline: str | None = Field(None, description="Policy the others are compared to (default: the first).")
    prompts: str = Field("gold:heldout", description="gold:heldout, gold:train, gold:focus:heldout (a shipped set's "
                         "split), or a JSONL of gold prompt records.", json_schema_extra={"input": "gold_prompts"})
    num_prompts: int | None = Field(64, gt=0, description="Evaluate the first N prompts (None = all).")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    reward_model: str | None = Field(None, description="Reward model dir or @reward: adds RM scores.",
                                     json_schema_extra={"input": "model"})
    reference: str | None = Field(None, description="Reference model for KL (e.g. @sft); None = no KL.",
                                  json_schema_extra={"input": "model"})
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
    llm_judge: LLMJudgeConfig | None = Field(
        None, description="judge: llm's settings, as rank.judge: {teacher: <model reference> | {type: openai, model, "
        "base_url, api_key_env}}; pairwise, both presentation orders.")
    fixed_strings: list[str] = Field(
        list(DEFAULT_FIXED_STRINGS), description="Each answered to every prompt and scored like a policy: the "
        "trivial-answer row next to every gain. [] = none.")
    benchmarks: list[Literal["ifeval"]] = Field(
        [], description="Benchmarks run on every policy next to the gold prompts: ifeval (the official IFEval "
        "prompts and checkers, offline).")
    ifeval: IFEvalConfig = Field(default_factory=IFEvalConfig, description="IFEval settings (benchmarks: [ifeval]).")
    lm_eval: LmEvalConfig | None = None


def run(cfg: Config, ctx: StageContext) -> StageResult:
    from tqdm.auto import tqdm

    from align.eval.gold import gold_score, load_prompt_set, strict_accuracy
    from align.eval.guards import fixed_string_rows, guard_changes, per_prompt_guards, summarize_guards
    from align.eval.harness import run_lm_eval
    from align.eval.ifeval import compare_ifeval, load_ifeval_prompts, score_ifeval, trivial_baseline
    from align.eval.kl import kl_estimate
    from align.eval.labeler import careful_scores, task_cosines
    from align.eval.loading import check_settings, describe_model, for_each_policy, load_reward
    from align.eval.results import headline, write_responses
    from align.eval.scoring import compare_to_baseline, gold_metrics, per_prompt, reward_scores
    from align.generation import generate_chat

    baseline = _check(cfg)
    check_settings(cfg.model)
    prompts = load_prompt_set(cfg.prompts, cfg.num_prompts, key="eval.prompts")
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]
    responses: dict[str, list[str]] = {}
    gold: dict[str, list[float]] = {}
    guards: dict[str, dict[str, list[float]]] = {}
    ifeval_prompts = load_ifeval_prompts(cfg.ifeval.num_prompts) if "ifeval" in cfg.benchmarks else []
    ifeval_chats = [[{"role": "user", "content": p.prompt}] for p in ifeval_prompts]
    ifeval_responses: dict[str, list[str]] = {}
    ifeval: dict[str, Any] = {}
    policies: dict[str, dict[str, Any]] = {name: {} for name in cfg.policies}

    # ---- each policy in turn, one copy of each base: greedy responses, gold metrics, KL on sampled responses
    bar = tqdm(total=len(cfg.policies), desc="eval policies", unit="policy")

    def evaluate(name: str, policy: ModelView, reference: ModelView | None) -> None:
        started = time.perf_counter()
        with policy.active() as model:
            responses[name] = generate_chat(model, policy.tokenizer, conversations, max_new_tokens=cfg.max_new_tokens,
                                            temperature=0.0, batch_size=cfg.batch_size, seed=ctx.seed)
        cosines = task_cosines(prompts, responses[name])  # one embedding pass for the labeler and the guards
        gold[name] = careful_scores(prompts, responses[name], cosines)
        guards[name] = per_prompt_guards(prompts, responses[name], cosines)
        policies[name].update(gold_metrics(prompts, responses[name], gold[name]))
        policies[name].update(summarize_guards(guards[name]))
        log.info("eval: %s: greedy responses to %d prompts in %.0f s, gold %.3f (compliance %.3f), degenerate %.0f%%, "
                 "on-topic %.2f", name, len(prompts), time.perf_counter() - started, policies[name]["gold_score"],
                 policies[name]["compliance"], 100 * policies[name]["degenerate_share"],
                 policies[name]["on_topic_cosine"])
        if ifeval_prompts:
            started = time.perf_counter()
            with policy.active() as model:
                ifeval_responses[name] = generate_chat(
                    model, policy.tokenizer, ifeval_chats, max_new_tokens=cfg.ifeval.max_new_tokens, temperature=0.0,
                    batch_size=cfg.ifeval.batch_size, seed=ctx.seed)
            ifeval[name] = score_ifeval(ifeval_prompts, ifeval_responses[name])
            policies[name].update({f"ifeval_{k}": v for k, v in ifeval[name].metrics().items()})
            log.info("eval: %s: IFEval on %d prompts in %.0f s: prompt-level strict %.3f, instruction-level strict %.3f",
                     name, len(ifeval_prompts), time.perf_counter() - started, ifeval[name].prompt_strict,
                     ifeval[name].instruction_strict)
        if reference is policy:  # the reference itself: 0, exactly, without sampling
            policies[name].update({"kl": 0.0, "kl_stderr": 0.0, "kl_samples": 0})
        elif reference is not None:
            started = time.perf_counter()
            policies[name].update(kl_estimate(policy, reference, conversations, cfg.kl_samples, cfg.max_new_tokens,
                                              cfg.kl_batch_size, ctx.seed))
            log.info("eval: %s: KL to the reference from %d sampled responses in %.0f s: %.2f", name,
                     policies[name]["kl_samples"], time.perf_counter() - started, policies[name]["kl"])
        bar.update(1)

    specs = {name: describe_model(path) for name, path in cfg.policies.items()}
    ref_spec = describe_model(cfg.reference) if cfg.reference and cfg.kl_samples else None
    loads = for_each_policy(specs, ref_spec, cfg.model, evaluate)
    bar.close()
    responses = {name: responses[name] for name in cfg.policies}  # the recipe's order, whatever the loading order

    # ---- reward model scores of the same greedy responses
    rm_scores: dict[str, list[float]] = {}
    if cfg.reward_model:
        rm_scores = reward_scores(load_reward(cfg.reward_model, cfg.model), prompts, responses)
        for name, scores in rm_scores.items():
            policies[name]["reward_score"] = sum(scores) / len(prompts)

    # ---- every policy against the baseline: gains with a paired bootstrap CI, win rates by the judge
    gold = {name: gold[name] for name in cfg.policies}
    compliance = per_prompt(gold_score, prompts, responses)
    strict = per_prompt(strict_accuracy, prompts, responses)
    comparisons = compare_to_baseline(prompts, responses, baseline, gold=gold, compliance=compliance, strict=strict,
                                      rm_scores=rm_scores, judge=cfg.judge, llm_judge=cfg.llm_judge, seed=ctx.seed)
    for name, comparison in comparisons.items():
        policies[name].update(comparison)
    for name, changes in guard_changes(guards, baseline, ctx.seed).items():
        policies[name].update(changes)
    fixed = fixed_string_rows(prompts, cfg.fixed_strings)
    if ifeval_prompts:
        for name in cfg.policies:
            if name != baseline:
                change = compare_ifeval(ifeval[name], ifeval[baseline], seed=ctx.seed)
                policies[name]["ifeval_prompt_strict_change"] = change["prompt_strict"]
                policies[name]["ifeval_instruction_strict_change"] = change["instruction_strict"]
        for text, row in fixed.items():
            row.update({f"ifeval_{k}": v for k, v in trivial_baseline(ifeval_prompts, text).metrics().items()})
        _write_ifeval(ctx.stage_dir / "ifeval_responses.jsonl", ifeval_prompts, ifeval_responses, ifeval)

    # ---- optional lm-evaluation-harness tasks, each policy in a subprocess
    if cfg.lm_eval:
        for name, path in cfg.policies.items():
            out = ctx.stage_dir / "lm_eval" / name
            out.mkdir(parents=True, exist_ok=True)
            policies[name]["lm_eval"] = run_lm_eval(path, cfg.lm_eval, out)

    # ---- outputs: every response with its scores, the metrics and the run's headline numbers
    write_responses(ctx.stage_dir / "responses.jsonl", prompts, responses,
                    {"gold": gold, "compliance": compliance, "reward": rm_scores,
                     "on_topic": {n: g["on_topic_cosine"] for n, g in guards.items()},
                     "degenerate": {n: g["degenerate"] for n, g in guards.items()}})
    metrics = {"n_prompts": len(prompts), "baseline": baseline, "judge": cfg.judge, "policies": policies,
               "fixed_strings": fixed, "model_loads": loads, **headline(policies, baseline)}
    outputs = {"responses": str(ctx.stage_dir / "responses.jsonl")}
    if ifeval_prompts:
        outputs["ifeval_responses"] = str(ctx.stage_dir / "ifeval_responses.jsonl")
    return StageResult(outputs=outputs, metrics=metrics)


def _write_ifeval(path, prompts, responses: dict[str, list[str]], results: dict[str, Any]) -> None:
    """ifeval_responses.jsonl: per prompt {key, prompt, instruction_id_list, <policy>: {response, strict, loose}}."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for i, p in enumerate(prompts):
            row: dict[str, Any] = {"key": p.key, "prompt": p.prompt, "instruction_id_list": p.instruction_id_list}
            for name, texts in responses.items():
                row[name] = {"response": texts[i], "strict": results[name].follow_strict[i],
                             "loose": results[name].follow_loose[i]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _check(cfg: Config) -> str:
    """The baseline's name, after rejecting settings that cannot work together."""
    if not cfg.policies:
        raise AlignError("eval.policies: name at least one policy to evaluate")
    baseline = cfg.baseline or next(iter(cfg.policies))
    if baseline not in cfg.policies:
        raise AlignError(f"eval.baseline: {baseline!r} is not one of the policies ({', '.join(cfg.policies)})")
    if cfg.judge == "reward" and not cfg.reward_model:
        raise AlignError("eval.judge: reward needs eval.reward_model")
    if cfg.judge == "llm" and not cfg.llm_judge:
        raise AlignError("eval.judge: llm needs eval.llm_judge (teacher settings)")
    return baseline
