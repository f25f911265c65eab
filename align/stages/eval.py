"""Evaluate policies on held-out gold prompts: did alignment work?

For each policy (e.g. ``sft: "@sft"``, ``ppo: "@ppo"``): greedy responses to held-out prompts with
verifiable constraints, then
- gold score (fraction of constraints met) and strict accuracy (all met), per constraint type;
- reward-model score (when a reward model is given);
- KL to a reference model on the policy's own responses (sum over tokens of log π − log π_ref);
- response length;
- win rate of every policy over the baseline, judged by the gold function, the reward model or an
  LLM judge (position-swapped);
- optionally lm-evaluation-harness tasks (``lm_eval``) on each policy.
Outputs ``responses.jsonl`` (every prompt/response/score) and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


class Config(BaseModel):
    """The `eval:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    policies: dict[str, str] = Field(description="Name → model reference or @stage, e.g. {sft: '@sft', ppo: '@ppo'}.")
    baseline: str | None = Field(None, description="Policy the others are compared to (default: the first).")
    prompts: str = Field("gold:heldout", description="gold:heldout, gold:train, or a JSONL of gold prompt records.")
    num_prompts: int | None = Field(64, gt=0, description="Evaluate the first N prompts (None = all).")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(8, gt=0)
    reward_model: str | None = Field(None, description="Reward model dir or @reward: adds RM scores.")
    reference: str | None = Field(None, description="Reference model for KL (e.g. @sft); None = no KL.")
    judge: Literal["gold", "reward", "llm"] = Field("gold", description="What decides win rates.")
    llm_judge: dict[str, Any] | None = Field(None, description="Teacher settings for judge: llm (local or OpenAI-compatible).")
    lm_eval: LmEvalConfig | None = None


def load_prompts(spec: str, num: int | None) -> list:
    from align.eval.gold import load_gold_prompts, read_gold_prompts

    if spec.startswith("gold:"):
        split = spec.split(":", 1)[1]
        if split not in ("train", "heldout"):
            raise AlignError(f"eval.prompts: {spec!r}: the gold split must be train or heldout")
        prompts = load_gold_prompts(split)
    else:
        prompts = read_gold_prompts(spec)
    return prompts[:num] if num else prompts


def response_logprob_sums(model, tokenizer, conversations: list[list[dict]], responses: list[str],
                          batch_size: int = 8) -> list[float]:
    """Sum of log p(response tokens | prompt) per example (chat template applied), for KL estimates."""
    import torch

    from align.generation import chat_prompt

    device = next(model.parameters()).device
    sums: list[float] = []
    for start in range(0, len(responses), batch_size):
        prompts = [chat_prompt(tokenizer, c) for c in conversations[start : start + batch_size]]
        resp = responses[start : start + batch_size]
        rows, prompt_lens = [], []
        for p, r in zip(prompts, resp):
            p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(r + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
            rows.append(p_ids + r_ids)
            prompt_lens.append(len(p_ids))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
        for i, r in enumerate(rows):
            sums.append(float(logp[i, prompt_lens[i] - 1 : len(r) - 1].sum()))
    return sums


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
    from align.models import load_for_generation

    if not cfg.policies:
        raise AlignError("eval.policies: name at least one policy to evaluate")
    baseline = cfg.baseline or next(iter(cfg.policies))
    if baseline not in cfg.policies:
        raise AlignError(f"eval.baseline: {baseline!r} is not one of the policies ({', '.join(cfg.policies)})")
    if cfg.judge == "reward" and not cfg.reward_model:
        raise AlignError("eval.judge: reward needs eval.reward_model")
    if cfg.judge == "llm" and not cfg.llm_judge:
        raise AlignError("eval.judge: llm needs eval.llm_judge (teacher settings)")
    prompts = load_prompts(cfg.prompts, cfg.num_prompts)
    conversations = [[{"role": "user", "content": p.prompt}] for p in prompts]

    responses: dict[str, list[str]] = {}
    metrics: dict[str, Any] = {"n_prompts": len(prompts), "baseline": baseline, "judge": cfg.judge, "policies": {}}
    reference = load_for_generation(ctx.resolve(cfg.reference)) if cfg.reference else None  # loaded once
    for name, ref in cfg.policies.items():
        model, tokenizer = load_for_generation(ctx.resolve(ref))
        responses[name] = generate_chat(model, tokenizer, conversations, max_new_tokens=cfg.max_new_tokens,
                                        temperature=0.0, batch_size=cfg.batch_size, seed=ctx.seed)
        gold = score_batch(prompts, responses[name])
        entry = {
            "gold_score": gold["gold_score"], "strict_accuracy": gold["strict_accuracy"],
            "instruction_accuracy": gold["instruction_accuracy"], "pass_rate": gold["pass_rate"],
            "response_words_mean": sum(len(r.split()) for r in responses[name]) / len(prompts),
        }
        if reference is not None:
            # Sequence log-ratio on the policy's own (greedy) responses: a KL estimate, exact only for sampled ones.
            lp = response_logprob_sums(model, tokenizer, conversations, responses[name], cfg.batch_size)
            lp_ref = response_logprob_sums(*reference, conversations, responses[name], cfg.batch_size)
            entry["kl_to_reference"] = sum(a - b for a, b in zip(lp, lp_ref)) / len(lp)
        metrics["policies"][name] = entry
        del model
    del reference

    rm_scores: dict[str, list[float]] = {}
    if cfg.reward_model:
        from align.reward_model import load_reward_model

        reward_model = load_reward_model(ctx.resolve(cfg.reward_model))
        texts = [p.prompt for p in prompts]
        for name in cfg.policies:
            rm_scores[name] = reward_model.score(texts, responses[name])
            metrics["policies"][name]["reward_score"] = sum(rm_scores[name]) / len(prompts)
        del reward_model

    from align.eval.gold import gold_score

    per_prompt_gold = {n: [gold_score(p, r) for p, r in zip(prompts, responses[n])] for n in cfg.policies}
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
    if last != baseline:
        metrics["win_rate"] = metrics["policies"][last]["win_rate_vs_" + baseline]
        metrics["gold_gain_vs_baseline"] = metrics["gold_score"] - metrics["policies"][baseline]["gold_score"]
    return StageResult(outputs={"responses": str(ctx.stage_dir / "responses.jsonl")}, metrics=metrics)


def _llm_judge(settings: dict[str, Any]):
    """A position-swappable pairwise judge backed by a teacher (local model or OpenAI-compatible)."""
    from align.judges import pairwise_judge_fn
    from align.teachers import TeacherConfig, make_teacher

    return pairwise_judge_fn(make_teacher(TeacherConfig.model_validate(settings)))
