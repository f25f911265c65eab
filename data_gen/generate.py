"""The Self-Instruct generation loop: a teacher writes tasks, filters keep the good ones, a file keeps them safe.

One round (Wang et al. 2022, as in yizhongw/self-instruct)::

    prompts    = [8 in-context instructions: 6 seeds + 2 already generated] x request_batch_size
    candidates = parse(teacher.complete(prompts))             # new instructions, item 9 onwards
    candidates = heuristics(candidates)                       # length, blacklist, "Write a program"...
    candidates = rouge_l(candidates, pool) <= 0.7             # pool = seeds + everything kept so far
    labels     = teacher.complete(classification prompts)     # is it a classification task?
    instances  = teacher.complete(instance prompts)           # input-first, or output-first for classification
    kept       = instance_filters(instances)                  # empty, input == output, ":" endings, contradictions
    append kept tasks to machine_generated.jsonl (one fsync'd line each)

The Alpaca variant (``method: alpaca``, Taori et al. 2023) asks for whole tasks (instruction, input,
output) in one prompt and runs the same heuristic (with Alpaca's longer blacklist), ROUGE-L and instance
filters.

A teacher text cut at the token limit (finish_reason "length") loses what the originals drop: a whole
bootstrap continuation (``bootstrap.on_length``), the last instance of a task, the last Alpaca task.

Resuming: ``machine_generated.jsonl`` is the source of truth. A restarted run reads it back, rebuilds the
similarity pool from seeds + kept tasks, and continues to the target; each kept task is one atomic line,
so a kill loses at most the round in flight and never duplicates a task. ``progress.jsonl`` holds one line
of filter counts per finished round (the counts of a round cut short by a kill are not recorded);
``teacher_outputs.jsonl`` every raw teacher text, to see why things were dropped.

A run never loops forever: it stops after ``max_teacher_calls`` teacher calls or ``max_idle_rounds``
rounds in a row that kept nothing, says why, and writes ``complete: false`` in ``stats.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from align.data_gen import filters
from align.data_gen.diversity import verb_noun_diversity
from align.data_gen.export import EXPORT_FORMATS
from align.data_gen.filters import FilterReport, filter_instances, instruction_drop_reason
from align.data_gen.prompts import (
    BootstrapStyle,
    bootstrap_stop,
    build_alpaca_prompt,
    build_bootstrap_prompt,
    build_classification_prompt,
    build_instance_prompt,
    parse_alpaca_output,
    parse_bootstrap_output,
    parse_classification,
    parse_instances,
)
from align.data_gen.records import RecordWriter, load_records
from align.data_gen.seeds import SeedTask
from align.errors import AlignError

if TYPE_CHECKING:
    from align.data_gen.rouge_filter import SimilarityPool

log = logging.getLogger("align.data_gen")

RECORDS_FILE = "machine_generated.jsonl"
PROGRESS_FILE = "progress.jsonl"
STATS_FILE = "stats.json"
TEACHER_OUTPUTS_FILE = "teacher_outputs.jsonl"
RUN_FILE = "run.json"
EXPORT_FILES = {"alpaca": "alpaca_data.json", "self_instruct": "self_instruct_data.jsonl", "chat": "chat_data.jsonl"}
BEYOND_TARGET = "beyond_target"  # passed every filter, but the target was already reached

Method = Literal["self_instruct", "alpaca"]
ExportFormat = Literal["alpaca", "self_instruct", "chat"]


class BootstrapSettings(BaseModel):
    """self_instruct: the prompts that ask the teacher for new instructions."""

    model_config = ConfigDict(extra="forbid")

    num_prompt_instructions: int = Field(8, gt=1, description="In-context instructions per bootstrap prompt.")
    num_machine_in_prompt: int = Field(2, ge=0, description="How many of them are machine-generated (once "
                                       "available); the rest are seeds.")
    prompt: BootstrapStyle = Field("original", description="original: the Self-Instruct code's prompt "
                                   "('Come up with a series of tasks:', '1.' numbering); guided: a "
                                   "paraphrase with guidance sentences and 'Task N:' numbering.")
    on_length: Literal["drop", "drop_last"] = Field(
        "drop", description="A bootstrap continuation cut at max_tokens: drop: discard all of it (the "
        "original); drop_last: keep its complete items, drop the cut-off last one.")
    max_tokens: int = Field(256, gt=0, description="Token budget of one bootstrap continuation (7 "
                            "new instructions of up to ~30 tokens; the original's 1024 mostly pays for "
                            "rambling past the stop).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature for new instructions.")
    stop: list[str] | None = Field(None, description="Stop strings for bootstrap calls. None: a blank "
                                   "line and item 2n (n in-context: '\\n16', '16.', '16 .' as the "
                                   "original, or 'Task 16'); the stage drops the blank line for chat "
                                   "teachers, which space items out.")


class InstanceSettings(BaseModel):
    """self_instruct: the classification question and the instances (input, output) of each new task."""

    model_config = ConfigDict(extra="forbid")

    classification_max_tokens: int = Field(5, gt=0, description="Token budget of the yes/no answer.")
    max_tokens: int = Field(200, gt=0, description="Token budget of one task's instances (original: 300).")
    temperature: float = Field(0.0, ge=0, description="Temperature for classification and instances.")
    max_per_task: int = Field(3, gt=0, description="Keep at most this many instances per task (the "
                              "paper's data has 1.6 on average); generation stops after them.")


class AlpacaSettings(BaseModel):
    """alpaca: the prompts that ask for whole tasks (instruction, input, output) at once."""

    model_config = ConfigDict(extra="forbid")

    num_tasks: int = Field(20, gt=1, description="alpaca: list length per prompt, demos included.")
    prompt_tasks: int = Field(3, gt=0, description="alpaca: seed tasks shown per prompt.")
    max_tokens: int = Field(3072, gt=0, description="alpaca: token budget of one continuation.")
    temperature: float = Field(1.0, ge=0, description="alpaca: sampling temperature.")


class SelfInstructSettings(BaseModel):
    """The loop's settings (a recipe's `self_instruct.sampling`): how the teacher is prompted, which
    instructions are kept, and how hard the loop tries (defaults follow the Self-Instruct code)."""

    model_config = ConfigDict(extra="forbid")

    request_batch_size: int = Field(5, gt=0, description="Bootstrap (or Alpaca) prompts per teacher call.")
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings,
                                         description="self_instruct: prompts for new instructions.")
    instances: InstanceSettings = Field(default_factory=InstanceSettings,
                                        description="self_instruct: classification and instances of each task.")
    alpaca: AlpacaSettings = Field(default_factory=AlpacaSettings, description="alpaca: prompts for whole tasks.")
    rouge_threshold: float = Field(0.7, ge=0, le=1, description="Drop an instruction whose ROUGE-L F with a "
                                   "pool member is above this.")
    min_words: int = Field(filters.MIN_WORDS, gt=0, description="Drop instructions with fewer words than this "
                           "(the originals drop 3 words or fewer).")
    max_words: int = Field(filters.MAX_WORDS, gt=0, description="Drop instructions longer than this.")
    max_teacher_calls: int | None = Field(None, gt=0, description="Stop after this many teacher calls in one "
                                          "invocation. None: 20 + 2 x the instructions still needed.")
    max_idle_rounds: int = Field(8, gt=0, description="Stop after this many rounds in a row that kept nothing.")
    save_teacher_outputs: bool = Field(True, description="Append every raw teacher text to teacher_outputs.jsonl "
                                       "(to see why things were dropped).")


@dataclass
class GenerationResult:
    """What a run produced: kept tasks, the filter tally, the stats written, the exported files."""

    records: list[dict]
    report: FilterReport
    stats: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.stats["complete"])


@dataclass
class _Round:
    """Counts for one round, appended to progress.jsonl when it ends."""

    index: int
    calls: int = 0
    raw: int = 0
    empty_generations: int = 0
    truncated_generations: int = 0  # teacher texts cut at the token limit (finish_reason "length")
    report: FilterReport = field(default_factory=FilterReport)
    classification: dict[str, int] = field(default_factory=lambda: {"yes": 0, "no": 0, "unclear": 0})
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"round": self.index, "calls": self.calls, "raw": self.raw, "empty_generations": self.empty_generations,
                "truncated_generations": self.truncated_generations,
                "kept": self.report.kept, "dropped": self.report.dropped,
                "instances_removed": self.report.instances_removed, "classification": self.classification,
                "seconds": round(self.seconds, 3)}


def _fingerprint_seeds(seed_tasks: Sequence[SeedTask]) -> str:
    text = "\n".join(t.instruction for t in seed_tasks)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_run_file(out_dir: Path, method: str, seed_tasks: Sequence[SeedTask]) -> None:
    """Refuse to mix a resumed run with a different method or seed set in the same folder."""
    path = out_dir / RUN_FILE
    info = {"method": method, "seeds_sha256": _fingerprint_seeds(seed_tasks), "num_seeds": len(seed_tasks)}
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("method", "seeds_sha256"):
            if old.get(key) != info[key]:
                raise AlignError(f"{out_dir} holds a run with {key}={old.get(key)!r}, not {info[key]!r}; "
                                 "use another output folder (or delete it) to start a different run")
    else:
        path.write_text(json.dumps(info, indent=2))


class _Loop:
    """State of one invocation: pool, writer, counters. Methods are the steps of a round."""

    def __init__(self, teacher: Any, seed_tasks: Sequence[SeedTask], out_dir: Path, num_instructions: int,
                 method: Method, cfg: SelfInstructSettings, seed: int):
        self.teacher, self.seed_tasks, self.out_dir = teacher, list(seed_tasks), out_dir
        self.target, self.method, self.cfg, self.seed = num_instructions, method, cfg, seed
        self.seed_instructions = [t.instruction for t in self.seed_tasks]
        self.records = load_records(out_dir / RECORDS_FILE)  # repairs a torn last line left by a kill
        self.rounds = load_records(out_dir / PROGRESS_FILE)
        from align.data_gen.rouge_filter import SimilarityPool  # rouge_score pulls in nltk: seconds to import

        self.pool: SimilarityPool = SimilarityPool(self.seed_instructions + [r["instruction"] for r in self.records],
                                   threshold=cfg.rouge_threshold)
        self.calls = 0  # this invocation
        self.raw_log: RecordWriter | None = None
        self.bootstrap_stop = (cfg.bootstrap.stop if cfg.bootstrap.stop is not None
                               else bootstrap_stop(cfg.bootstrap.num_prompt_instructions, cfg.bootstrap.prompt))
        self.blacklist = filters.ALPACA_BLACKLIST if method == "alpaca" else filters.BLACKLIST

    @property
    def machine_instructions(self) -> list[str]:
        return [r["instruction"] for r in self.records]

    def _call(self, rnd: _Round, kind: str, prompts: list[str], **kwargs: Any) -> list[tuple[str, bool | None]]:
        """The teacher's texts, each with whether the token limit cut it off (None: the teacher did not say)."""
        self.calls += 1
        rnd.calls += 1
        texts = self.teacher.complete(prompts, **kwargs)
        if len(texts) != len(prompts):
            raise AlignError(f"teacher returned {len(texts)} texts for {len(prompts)} prompts")
        out = []
        for i, text in enumerate(texts):
            reason = getattr(text, "finish_reason", None)
            rnd.truncated_generations += reason == "length"
            if self.raw_log is not None:
                self.raw_log.append({"round": rnd.index, "kind": kind, "index": i, "text": str(text),
                                     "finish_reason": reason})
            out.append((str(text), None if reason is None else reason == "length"))
        return out

    # --- candidates ------------------------------------------------------------------------------------

    def _bootstrap(self, rnd: _Round, rng: random.Random) -> list[dict]:
        cfg = self.cfg
        prompts = [build_bootstrap_prompt(self.seed_instructions, self.machine_instructions,
                                          cfg.bootstrap.num_prompt_instructions, rng=rng,
                                          num_machine=cfg.bootstrap.num_machine_in_prompt,
                                          style=cfg.bootstrap.prompt)
                   for _ in range(cfg.request_batch_size)]
        texts = self._call(rnd, "bootstrap", prompts, max_tokens=cfg.bootstrap.max_tokens,
                           temperature=cfg.bootstrap.temperature,
                           stop=self.bootstrap_stop)
        out = []
        for text, truncated in texts:
            if truncated and cfg.bootstrap.on_length == "drop":
                continue  # as the original's post_process_gpt3_response: a cut-off continuation yields nothing
            # truncated None (teacher did not say): the parser guesses from the last item's punctuation
            found = parse_bootstrap_output(text, start_index=cfg.bootstrap.num_prompt_instructions + 1, truncated=truncated)
            rnd.empty_generations += not found
            out.extend({"instruction": inst} for inst in found)
        return out

    def _alpaca(self, rnd: _Round, rng: random.Random) -> list[dict]:
        cfg = self.cfg
        prompts = [build_alpaca_prompt(self.seed_tasks, cfg.alpaca.num_tasks, rng=rng,
                                       num_prompt_tasks=cfg.alpaca.prompt_tasks)
                   for _ in range(cfg.request_batch_size)]
        texts = self._call(rnd, "alpaca", prompts, max_tokens=cfg.alpaca.max_tokens, temperature=cfg.alpaca.temperature,
                           stop=[f"\n{cfg.alpaca.num_tasks + 1}.", f"{cfg.alpaca.num_tasks + 1}. Instruction"])
        out = []
        for text, truncated in texts:
            found = parse_alpaca_output(text, truncated=bool(truncated))  # drops a cut-off last task, as Alpaca
            rnd.empty_generations += not found
            out.extend({"instruction": t["instruction"], "instances": [{"input": t["input"], "output": t["output"]}],
                        "is_classification": False} for t in found)
        return out

    def _novel(self, rnd: _Round, candidates: list[dict]) -> list[dict]:
        """Heuristic and ROUGE-L filters; candidates of this round are checked against each other too."""
        from align.data_gen.rouge_filter import SimilarityPool

        cfg = self.cfg
        round_pool = SimilarityPool(threshold=cfg.rouge_threshold)
        novel = []
        for cand in candidates:
            reason = instruction_drop_reason(cand["instruction"], cfg.min_words, cfg.max_words, self.blacklist)
            if reason is None and (self.pool.is_near_duplicate(cand["instruction"])
                                   or round_pool.is_near_duplicate(cand["instruction"])):
                reason = filters.NEAR_DUPLICATE
            if reason is not None:
                rnd.report.drop(reason)
                continue
            round_pool.add(cand["instruction"])
            novel.append(cand)
        return novel

    def _add_instances(self, rnd: _Round, tasks: list[dict]) -> None:
        """Self-Instruct steps 2 and 3: classification label, then instances written by the teacher."""
        cfg = self.cfg
        answers = self._call(rnd, "classification", [build_classification_prompt(t["instruction"]) for t in tasks],
                             max_tokens=cfg.instances.classification_max_tokens, temperature=cfg.instances.temperature,
                             stop=["\n", "Task"])
        for task, (answer, _) in zip(tasks, answers):
            label = parse_classification(answer)
            rnd.classification["unclear" if label is None else "yes" if label else "no"] += 1
            task["is_classification"] = bool(label)
        texts = self._call(rnd, "instances", [build_instance_prompt(t["instruction"], t["is_classification"]) for t in tasks],
                           max_tokens=cfg.instances.max_tokens, temperature=cfg.instances.temperature,
                           stop=["\nTask:", f"Example {cfg.instances.max_per_task + 1}"])
        for task, (text, truncated) in zip(tasks, texts):
            # a cut-off last instance is dropped, as in the original's parse_instances_for_*_task
            task["instances"] = parse_instances(text, task["is_classification"], truncated=bool(truncated))

    # --- a round -------------------------------------------------------------------------------------

    def run_round(self, writer: RecordWriter) -> _Round:
        started = time.perf_counter()
        rnd = _Round(index=len(self.rounds))
        # The rng depends on how much is already kept, so a round restarted after a kill that had
        # written some tasks asks different questions (one killed before writing repeats exactly).
        rng = random.Random(f"{self.seed}:{rnd.index}:{len(self.records)}")
        candidates = self._bootstrap(rnd, rng) if self.method == "self_instruct" else self._alpaca(rnd, rng)
        rnd.raw = len(candidates)
        tasks = self._novel(rnd, candidates)
        # Instance generation is the expensive call: ask it only for what the target still needs,
        # plus a margin for tasks the instance filters will drop.
        needed = self.target - len(self.records)
        cap = needed + max(2, needed // 3)
        for _ in tasks[cap:]:
            rnd.report.drop(BEYOND_TARGET)
        tasks = tasks[:cap]
        if tasks and self.method == "self_instruct":
            self._add_instances(rnd, tasks)
        for task in tasks:
            check = filter_instances(task["instances"])
            rnd.report.add_instance_check(check)
            if check.drop_reason is not None:
                rnd.report.drop(check.drop_reason)
                continue
            if len(self.records) >= self.target:
                rnd.report.drop(BEYOND_TARGET)
                continue
            self._keep(writer, rnd, task, check.instances[: self.cfg.instances.max_per_task])
        rnd.seconds = time.perf_counter() - started
        return rnd

    def _keep(self, writer: RecordWriter, rnd: _Round, task: dict, instances: list[dict]) -> None:
        similar = self.pool.most_similar(task["instruction"], k=5)
        record = {
            "id": f"gen_task_{len(self.records)}",
            "instruction": task["instruction"],
            "instances": instances,
            "is_classification": task["is_classification"],
            "most_similar": {text: round(score, 4) for score, text in similar},
            "max_similarity": round(similar[0][0], 4) if similar else 0.0,
            "method": self.method,
            "round": rnd.index,
        }
        writer.append(record)  # durable before it counts
        self.records.append(record)
        self.pool.add(task["instruction"])
        rnd.report.keep()


def _default_max_calls(needed: int) -> int:
    return 20 + 2 * needed


def generate(
    teacher: Any,
    seed_tasks: Sequence[SeedTask],
    out_dir: str | Path,
    *,
    num_instructions: int,
    method: Method = "self_instruct",
    config: SelfInstructSettings | None = None,
    seed: int = 0,
    formats: Sequence[ExportFormat] = ("alpaca", "self_instruct", "chat"),
    progress: bool = True,
    export_incomplete: bool = False,
) -> GenerationResult:
    """Generate until `num_instructions` tasks are kept in `out_dir` (resuming what is there), then export.

    `teacher` is anything with ``complete(prompts, *, max_tokens, temperature, stop) -> list[str]``
    (see `align.teachers`). Writes ``machine_generated.jsonl`` (kept tasks, the resumable record),
    ``progress.jsonl`` (filter counts per round), ``stats.json`` and one file per export format.

    Exports are training data, so they are written (each atomically) only for a finished run: one that
    reached the target, or, with ``export_incomplete``, one that stopped at its limits with at least one
    task kept. A run that fails or keeps nothing exports nothing and removes exports an earlier run left,
    which no longer match ``machine_generated.jsonl``; stats.json says what happened either way.
    """
    from tqdm.auto import tqdm

    cfg = config or SelfInstructSettings()
    if num_instructions <= 0:
        raise AlignError(f"num_instructions must be positive, got {num_instructions}")
    if method not in ("self_instruct", "alpaca"):
        raise AlignError(f"method must be self_instruct or alpaca, got {method!r}")
    if method == "self_instruct" and len(seed_tasks) < cfg.bootstrap.num_prompt_instructions:
        raise AlignError(f"self_instruct needs at least {cfg.bootstrap.num_prompt_instructions} seed tasks "
                         f"(sampling.bootstrap.num_prompt_instructions), got {len(seed_tasks)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_file(out_dir, method, seed_tasks)
    loop = _Loop(teacher, seed_tasks, out_dir, num_instructions, method, cfg, seed)
    resumed_with = len(loop.records)
    if resumed_with:
        log.info("self-instruct: resuming %s with %d kept tasks after %d rounds", out_dir, resumed_with,
                 len(loop.rounds))
    max_calls = cfg.max_teacher_calls or _default_max_calls(max(0, num_instructions - resumed_with))
    idle = 0
    stop_reason = None
    started = time.perf_counter()
    bar = tqdm(total=num_instructions, initial=min(resumed_with, num_instructions), desc=f"{method} tasks",
               disable=not progress, unit="task")
    try:
        raw_writer = RecordWriter(out_dir / TEACHER_OUTPUTS_FILE, fsync=False) if cfg.save_teacher_outputs else None
        with RecordWriter(out_dir / RECORDS_FILE) as writer, RecordWriter(out_dir / PROGRESS_FILE) as progress_log, \
                raw_writer or contextlib.nullcontext() as raw_log:
            loop.raw_log = raw_log
            while len(loop.records) < num_instructions:
                if loop.calls >= max_calls:
                    stop_reason = (f"stopped after {loop.calls} teacher calls (max_teacher_calls) with "
                                   f"{len(loop.records)}/{num_instructions} tasks kept")
                    break
                if idle >= cfg.max_idle_rounds:
                    stop_reason = (f"stopped: the teacher produced nothing usable in {idle} rounds in a row "
                                   f"(max_idle_rounds); {len(loop.records)}/{num_instructions} tasks kept")
                    break
                before = len(loop.records)
                rnd = loop.run_round(writer)
                progress_log.append(rnd.to_dict())
                loop.rounds.append(rnd.to_dict())
                idle = 0 if len(loop.records) > before else idle + 1
                bar.update(len(loop.records) - before)
                bar.set_postfix(calls=loop.calls, raw=rnd.raw, kept=rnd.report.kept)
                log.info("self-instruct round %d: %d raw -> %d kept (%s); %d/%d", rnd.index, rnd.raw, rnd.report.kept,
                         ", ".join(f"{k} {v}" for k, v in rnd.report.dropped.items()) or "no drops",
                         len(loop.records), num_instructions)
    except BaseException as exc:  # teacher failure, Ctrl-C: record where the run stands, then re-raise
        bar.close()
        try:
            _finish(loop, out_dir, formats, time.perf_counter() - started,
                    f"interrupted by {type(exc).__name__}: {exc}", resumed_with, export=False)
        except Exception:  # never hide the original error behind a reporting one
            log.exception("self-instruct: could not write stats after an error")
        raise
    bar.close()
    elapsed = time.perf_counter() - started
    if stop_reason:
        log.warning("self-instruct: %s. Outputs so far are in %s; re-run the same command to continue.",
                    stop_reason, out_dir)
    complete = len(loop.records) >= num_instructions
    return _finish(loop, out_dir, formats, elapsed, stop_reason, resumed_with,
                   export=complete or (export_incomplete and bool(loop.records)))


def _finish(loop: _Loop, out_dir: Path, formats: Sequence[ExportFormat], elapsed: float, stop_reason: str | None,
            resumed_with: int, export: bool) -> GenerationResult:
    """Totals over every round (this and earlier invocations), stats.json and (when `export`) the exports."""
    report = FilterReport()
    classification = {"yes": 0, "no": 0, "unclear": 0}
    for rnd in loop.rounds:
        report = report.merge(FilterReport.from_dict(rnd))
        for key in classification:
            classification[key] += rnd.get("classification", {}).get(key, 0)
    complete = len(loop.records) >= loop.target
    stats_path = out_dir / STATS_FILE
    instances = [len(r["instances"]) for r in loop.records]
    stats = {
        "method": loop.method,
        "target": loop.target,
        "kept": len(loop.records),
        "complete": complete,
        "stop_reason": None if complete else stop_reason or "interrupted",
        "rounds": len(loop.rounds),
        "teacher_calls": sum(r.get("calls", 0) for r in loop.rounds),
        "teacher_calls_this_run": loop.calls,
        "raw_generations": sum(r.get("raw", 0) for r in loop.rounds),
        "empty_generations": sum(r.get("empty_generations", 0) for r in loop.rounds),
        "truncated_generations": sum(r.get("truncated_generations", 0) for r in loop.rounds),
        "filters": report.to_dict(),
        "classification": classification,
        "instances": {"total": sum(instances), "per_task_mean": round(sum(instances) / len(instances), 3)
                      if instances else 0.0},
        "diversity": verb_noun_diversity(r["instruction"] for r in loop.records).to_dict(),
        "elapsed_s": round(sum(r.get("seconds", 0.0) for r in loop.rounds), 2),  # in rounds, all invocations
        "elapsed_s_this_run": round(elapsed, 2),  # wall clock of this invocation's loop
        "resumed_from": resumed_with,
        "files": {},
    }
    files: dict[str, Path] = {}
    if export:
        for fmt in formats:
            files[fmt] = EXPORT_FORMATS[fmt](loop.records, out_dir / EXPORT_FILES[fmt])
            stats["files"][fmt] = files[fmt].name
    else:  # an export left by an earlier invocation no longer matches the records: never pass it off as data
        for name in EXPORT_FILES.values():
            (out_dir / name).unlink(missing_ok=True)
    tmp = stats_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    tmp.replace(stats_path)
    return GenerationResult(loop.records, report, stats, files)
