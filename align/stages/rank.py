"""Ranking data: K sampled responses per prompt, put in order by a judge (InstructGPT step 2's labels).

For each prompt the policy (usually the SFT model) samples K responses at a temperature; a judge
(gold function, LLM teacher, or people) orders them best → worst, with ties allowed.

Outputs: ``rankings.jsonl`` (``{prompt, responses, ranking}`` per line, written and fsynced as
each prompt is done, so a killed run resumes where it stopped without duplicates) and, for the
human judge, ``tasks.jsonl`` (``{prompt, responses}`` to label; the stage then stops).
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from align.data import DataConfig
from align.errors import AlignError
from align.judges import JudgeConfig
from align.models import ModelConfig
from align.stages import StageContext, StageResult

log = logging.getLogger("align.rank")
TASKS_FILE = "tasks.jsonl"


class Config(BaseModel):
    """The `rank:` section of a recipe."""

    model_config = ConfigDict(extra="forbid")

    prompts: DataConfig = Field(description="Prompts: JSON/JSONL with 'prompt' strings, Alpaca/chat/Self-Instruct "
                                "records (the user turn is the prompt), or @self_instruct.")
    policy: ModelConfig = Field(description="Model that samples the responses (usually @sft).")
    judge: JudgeConfig = Field(description="Who ranks: {type: gold, function: m:f} | {type: llm, teacher: {...}} | "
                               "{type: human}.")
    k: int = Field(4, ge=2, le=9, description="Responses sampled per prompt (InstructGPT: 4 to 9).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (> 0, or the K responses are identical).")
    max_new_tokens: int = Field(128, gt=0, description="Longest response, in tokens.")
    batch_size: int = Field(8, gt=0, description="Prompts per generation call (each yields K sequences).")


def load_prompts(cfg: DataConfig) -> list[list[dict]]:
    """Prompts as chat messages ending with the user turn, duplicates removed, in file order."""
    from align.data import load_prompts as load

    return load(cfg, unique=True)


def run(cfg: Config, ctx: StageContext) -> StageResult:
    import time

    from align.generation import generate_chat
    from align.judges import GoldJudge, make_judge
    from align.models import load_causal_lm, load_tokenizer
    from align.rankings import RANKINGS_FILE, JsonlAppender, RankingRecord, prompt_text

    data_cfg = cfg.prompts.model_copy(update={"path": ctx.resolve(cfg.prompts.path)})
    policy_cfg = cfg.policy.model_copy(update={"name": ctx.resolve(cfg.policy.name)})
    human = cfg.judge.type == "human"
    judge = None if human else make_judge(cfg.judge, ctx.resolve)  # fail on a bad judge before loading the policy
    prompts = load_prompts(data_cfg)

    out_path = ctx.stage_dir / (TASKS_FILE if human else RANKINGS_FILE)
    writer = JsonlAppender(out_path)
    key = [writer.key(RankingRecord(p, [], []).to_json()["prompt"]) for p in prompts]
    resumed = sum(k in writer.done for k in key)
    if resumed:
        log.info("rank: resuming, %d of %d prompts already in %s", resumed, len(prompts), out_path)

    model = tokenizer = None
    started, written, tie_records, groups = time.perf_counter(), 0, 0, 0
    gold_best: list[float] = []
    gold_all: list[float] = []
    with writer:
        # Batches have fixed boundaries and seeds, so a resumed run samples what the first run would have.
        for b, start in enumerate(range(0, len(prompts), cfg.batch_size)):
            todo = [i for i in range(start, min(start + cfg.batch_size, len(prompts))) if key[i] not in writer.done]
            if not todo:
                continue
            if model is None:
                model, tokenizer = load_causal_lm(policy_cfg), load_tokenizer(policy_cfg.name)
                model.eval()
            batch = prompts[start : start + cfg.batch_size]
            samples = generate_chat(model, tokenizer, batch, max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, num_return_sequences=cfg.k,
                                    batch_size=len(batch), seed=ctx.seed + b, progress=False)
            samples = [samples[i - start] for i in todo]
            texts = [prompt_text(prompts[i]) for i in todo]
            rankings = [None] * len(todo) if human else judge.rank(texts, samples)
            for n, (i, responses, ranking) in enumerate(zip(todo, samples, rankings)):
                record = RankingRecord(prompts[i], list(responses), ranking or [])
                row = record.to_json()
                if human:
                    row.pop("ranking")
                elif isinstance(judge, GoldJudge):
                    row["scores"] = judge.last_scores[n]
                    gold_best.append(max(judge.last_scores[n]))
                    gold_all.extend(judge.last_scores[n])
                if record.ranking:  # identical responses already merged into one tie group
                    tie_records += any(len(g) > 1 for g in record.ranking)
                    groups += len(record.ranking)
                writer.write(row)
                written += 1
            log.info("rank: %d/%d prompts done", len(writer.done), len(prompts))
    del model

    if human:
        raise AlignError(
            f"rank: judge 'human' wrote {len(writer.done)} labeling tasks ({{prompt, responses}}) to {out_path}. "
            "Rank each task's responses best→worst, save the results as JSONL records {prompt, responses, ranking}, "
            "and point reward.data at that file (or replace rank.judge with a gold or llm judge)."
        )
    seconds = time.perf_counter() - started
    metrics = {
        "rankings": len(writer.done),
        "prompts": len(prompts),
        "k": cfg.k,
        "written_now": written,
        "resumed_prompts": resumed,
        "records_with_ties": tie_records,
        "mean_tie_groups": round(groups / written, 3) if written else None,
        "judge": cfg.judge.type,
        "seconds_ranking": round(seconds, 2),
    }
    if gold_all:
        metrics["gold_mean"] = round(sum(gold_all) / len(gold_all), 4)
        metrics["gold_best_mean"] = round(sum(gold_best) / len(gold_best), 4)
    if judge is not None and hasattr(judge, "calls"):
        metrics["judge_calls"] = judge.calls
        metrics["judge_unparsed"] = judge.unparsed
    return StageResult(outputs={"rankings": str(out_path)}, metrics=metrics)
