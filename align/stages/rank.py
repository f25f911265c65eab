"""Ranking data: K sampled responses per prompt, put in order by a judge (InstructGPT step 2's labels).

For each prompt the policy (usually the SFT model) samples K responses at a temperature; a judge
(gold function, LLM teacher, or people) orders them best → worst, with ties allowed.

A prompt whose K responses all tie (one tie group) gives the reward model no pair. With
``informative: N`` the stage keeps drawing prompts, in file order, until N rankings are informative
(at least two tie groups), or the prompts run out (``prompts.max_samples`` caps the draws); the
all-tied rankings are written too (so resume knows what was drawn) and counted in the metrics.

Outputs: ``rankings.jsonl`` (``{prompt, responses, ranking}`` per line, written and fsynced as
each prompt is done, so a killed run resumes where it stopped without duplicates) and, for the
human judge, ``tasks.jsonl`` (``{prompt, responses}`` to label; the stage then stops).
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

from align.data import DataConfig
from align.errors import AlignError
from align.models import ModelConfig
from align.preferences.judges import JudgeConfig
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
    informative: int | None = Field(
        None, gt=0, description="Keep drawing prompts (in file order) until this many rankings are informative "
        "(not all K responses tied); draws stop at the end of `prompts` (cap them with prompts.max_samples). "
        "None: rank every prompt.")


def is_informative(ranking: list) -> bool:
    """A ranking with at least two tie groups implies at least one (better, worse) pair."""
    return len(ranking) > 1


def load_prompts(cfg: DataConfig) -> list[list[dict]]:
    """Prompts as chat messages ending with the user turn, duplicates removed, in file order."""
    from align.data import load_prompts as load

    return load(cfg, unique=True)


def run(cfg: Config, ctx: StageContext) -> StageResult:
    import time

    from align.generation import generate_chat
    from align.lora_merge import lora_merge_blocker, lora_merged
    from align.models import load_causal_lm, load_tokenizer
    from align.preferences.judges import GoldJudge, make_judge
    from align.preferences.rankings import RANKINGS_FILE, JsonlAppender, RankingRecord, prompt_text

    data_cfg = cfg.prompts
    policy_cfg = cfg.policy
    human = cfg.judge.type == "human"
    if human and cfg.informative:
        raise AlignError("rank: informative needs a gold or llm judge (the human judge only writes labeling tasks)")
    judge = None if human else make_judge(cfg.judge)  # fail on a bad judge before loading the policy
    prompts = load_prompts(data_cfg)

    out_path = ctx.stage_dir / (TASKS_FILE if human else RANKINGS_FILE)
    writer = JsonlAppender(out_path)
    key = [writer.key(RankingRecord(p, [], []).to_json()["prompt"]) for p in prompts]
    resumed = sum(k in writer.done for k in key)
    if resumed:
        log.info("rank: resuming, %d of %d prompts already in %s", resumed, len(prompts), out_path)
    drawn, informative = written_so_far(out_path, set(key)) if not human else (resumed, 0)
    target = cfg.informative

    model = tokenizer = None
    started, written, tie_records, groups = time.perf_counter(), 0, 0, 0
    gold_best: list[float] = []
    gold_all: list[float] = []
    with writer:
        # Batches have fixed boundaries and seeds, so a resumed run samples what the first run would have.
        for b, start in enumerate(range(0, len(prompts), cfg.batch_size)):
            if target is not None and informative >= target:
                break
            todo = [i for i in range(start, min(start + cfg.batch_size, len(prompts))) if key[i] not in writer.done]
            if not todo:
                continue
            if model is None:
                model, tokenizer = load_causal_lm(policy_cfg), load_tokenizer(policy_cfg.name)
                model.eval()
                reason = lora_merge_blocker(model, quantization=policy_cfg.quantization)
                log.info("rank: sampling %s", "with the policy's LoRA merged into the base weights"
                         if reason is None else f"unmerged: {reason}")
            batch = prompts[start : start + cfg.batch_size]
            with lora_merged(model, quantization=policy_cfg.quantization):
                samples = generate_chat(model, tokenizer, batch, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, num_return_sequences=cfg.k,
                                        batch_size=len(batch), seed=ctx.seed + b, progress=False)
            samples = [samples[i - start] for i in todo]
            texts = [prompt_text(prompts[i]) for i in todo]
            rankings = [None] * len(todo) if human else judge.rank(texts, samples)
            for n, (i, responses, ranking) in enumerate(zip(todo, samples, rankings)):
                if target is not None and informative >= target:
                    break  # the rest of this batch is never drawn: a resumed run stops at the same record
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
                drawn += 1
                informative += bool(ranking) and is_informative(ranking)
            goal = f", {informative}/{target} informative" if target is not None else ""
            log.info("rank: %d/%d prompts done%s", len(writer.done), len(prompts), goal)
    del model

    if human:
        raise AlignError(
            f"rank: judge 'human' wrote {len(writer.done)} labeling tasks ({{prompt, responses}}) to {out_path}. "
            "Rank each task's responses best→worst, save the results as JSONL records {prompt, responses, ranking}, "
            "and point reward.data at that file (or replace rank.judge with a gold or llm judge)."
        )
    seconds = time.perf_counter() - started
    all_tied = drawn - informative
    log.info("rank: %d of %d ranked prompts are informative, %d all tied (no pair for the reward model)",
             informative, drawn, all_tied)
    if target is not None and informative < target:
        log.warning(
            "rank: only %d informative rankings of the %d asked for (rank.informative): all %d prompts were drawn "
            "and %d were all tied. Give it more prompts (rank.prompts / rank.prompts.max_samples), sample more "
            "responses (rank.k) or at a higher temperature, or lower rank.informative.",
            informative, target, drawn, all_tied)
    metrics = {
        "rankings": len(writer.done),
        "prompts": len(prompts),
        "k": cfg.k,
        "written_now": written,
        "resumed_prompts": resumed,
        "drawn": drawn,
        "informative": informative,
        "all_tied": all_tied,
        "informative_target": target,
        "informative_target_met": None if target is None else informative >= target,
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


def written_so_far(path, keys: set[str]) -> tuple[int, int]:
    """(rankings already in the file for these prompts, how many of them are informative), for resume."""
    from align.jsonl import iter_jsonl
    from align.preferences.rankings import JsonlAppender

    drawn = informative = 0
    for _, row in iter_jsonl(path, missing_ok=True):
        if JsonlAppender.key(row.get("prompt")) in keys:
            drawn += 1
            informative += is_informative(row.get("ranking") or [])
    return drawn, informative
