"""Fit on one GPU: SFT-QLoRA and PPO throughput and peak memory on ~0.5B and ~1B models, against `align plan`.

GPU figures: not measured yet; run benchmarks/bench_gpu.py on a CUDA machine. It needs no download
and is sized to finish in about 5-7 minutes on an H100 (`--quick`: about 2-3; estimates, not timings).

Models: random-init Qwen2.5-0.5B- and Llama-3.2-1B-shaped decoders, built with
`AutoModelForCausalLM.from_config` from align's own architecture table
(`align.model_configs.HUB_CONFIGS`, what `align plan` reads), real vocabulary sizes, bf16,
saved once under the work folder so every path loads them with `from_pretrained` (4-bit NF4 is
quantized on load, as with a real checkpoint). Tokenizer: align's built-in `tiny-llama` one
(1024 tokens; its ids are valid rows of the bigger embedding). Data: one long synthetic
prompt/completion example per row, every one longer than max_length, so each batch holds exactly
batch_size x max_length tokens (no padding).

Cases per model, each in a fresh process (its own CUDA allocator, so peaks do not mix; a crash or
an out-of-memory error in one leaves the others alone):

1. `sft_align`: `align.stages.sft.build_trainer` (TRL SFTTrainer + `align.training.trainer_args`,
   4-bit base via `align.models`, LoRA via `align.models.peft_config`), then `trainer.train()`.
2. `sft_plain`: the usual QLoRA recipe: transformers `Trainer` + `BitsAndBytesConfig` (NF4,
   double quant, bf16 compute) + peft `prepare_model_for_kbit_training` + `get_peft_model`, the
   same LoRA, batch, length, steps, optimizer and learning rate.
3. `ppo`: align's loop as `align.stages.ppo` runs it (`load_roles`, `load_scorer` with a reward
   *function*, `rollout`, `estimate_advantages`, `step_with_rollouts`), 4-bit base, fresh LoRA.

Reported: tokens/s over the steps after the first (warm-up) ones, `torch.cuda.max_memory_allocated`
during training (reset after loading; the loaded size is reported too), PPO seconds per phase, and
the `align plan` estimate of the same settings with its error. Results are written after every case:

    python benchmarks/bench_gpu.py               # -> benchmarks/results/gpu.json + gpu.md
    python benchmarks/bench_gpu.py --quick       # 0.5B only, shorter runs
    python benchmarks/bench_gpu.py --cpu-smoke --out /tmp/x   # tiny model on CPU: tests the code path

Without CUDA (and without --cpu-smoke) it prints "no CUDA device: nothing measured" and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, step_timer, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".cache" / "bench-gpu"
if str(REPO) not in sys.path:  # `import align` without an install (the device machine gets a plain copy)
    sys.path.insert(0, str(REPO))

MODELS = {"qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "llama-3.2-1b": "meta-llama/Llama-3.2-1B"}
# --cpu-smoke: a tiny Llama whose vocabulary is bigger than the tokenizer's, as with the real shapes
SMOKE_ARCH = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "tie_word_embeddings": False}
LORA = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LR = 1e-4
CASES = ("sft_align", "sft_plain", "ppo")
WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "memory", "and", "planning", "in", "short",
         "clear", "sentences", "while", "the", "reviewer", "reads", "every", "line", "of", "the", "report", "before",
         "lunch"]

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "models": list(MODELS), "quantization": "4bit", "budget_s": 480, "case_timeout_s": 240,
        "sft": {"batch_size": 4, "max_length": 512, "steps": 12, "warmup_steps": 2, "checkpointing": False},
        "ppo": {"steps": 4, "warmup_steps": 1, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 4,
                "max_new_tokens": 128, "prompt_tokens": 128},
    },
    "quick": {
        "models": ["qwen2.5-0.5b"], "quantization": "4bit", "budget_s": 240, "case_timeout_s": 150,
        "sft": {"batch_size": 4, "max_length": 256, "steps": 6, "warmup_steps": 2, "checkpointing": False},
        "ppo": {"steps": 2, "warmup_steps": 1, "batch_size": 16, "mini_batch_size": 4, "ppo_epochs": 2,
                "max_new_tokens": 64, "prompt_tokens": 64},
    },
    "cpu-smoke": {  # checks the flow, not speed: hang guards only (a run takes about a minute on 2 idle cores)
        "models": ["tiny"], "quantization": "none", "budget_s": 1800, "case_timeout_s": 900,
        "sft": {"batch_size": 2, "max_length": 64, "steps": 2, "warmup_steps": 1, "checkpointing": False},
        "ppo": {"steps": 2, "warmup_steps": 1, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1,
                "max_new_tokens": 8, "prompt_tokens": 24},
    },
}


def length_reward(prompt: str, response: str) -> float:
    """The PPO reward function (no reward model): longer responses score higher. Loaded by align
    as `benchmarks/bench_gpu.py:length_reward`, so this module must stay import-safe."""
    return len(response.split()) / 100


def arch_spec(model_key: str) -> dict[str, Any]:
    """transformers config fields for a model key, from align's built-in architecture table."""
    if model_key == "tiny":
        return dict(SMOKE_ARCH)
    from align.model_configs import HUB_CONFIGS

    hub_id = MODELS[model_key]
    entry = HUB_CONFIGS[hub_id]
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "tie_word_embeddings")
    return {"model_type": "qwen2" if entry["qkv_bias"] else "llama", "hub_config": hub_id,
            **{k: entry[k] for k in keys}}


# --------------------------------------------------------------------------- measuring (worker side)


class Meter:
    """Peak memory of this process: CUDA allocated bytes, or on CPU the resident set (VmHWM, reset through
    /proc/self/clear_refs where Linux allows it) above the RSS when the meter was made."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.baseline = 0 if self.cuda else self._status("VmRSS")
        self.metric = ("torch.cuda.max_memory_allocated" if self.cuda
                       else "CPU resident set above the worker's RSS after imports (smoke only: not a GPU figure)")

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def now(self) -> int:
        self.sync()
        return self.torch.cuda.memory_allocated() if self.cuda else self._status("VmRSS") - self.baseline

    def reset_peak(self) -> None:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            # not Linux, or not allowed: the peak then runs from the process start
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        self.sync()
        return self.torch.cuda.max_memory_allocated() if self.cuda else self._status("VmHWM") - self.baseline

    def reserved_peak(self) -> int | None:
        return self.torch.cuda.max_memory_reserved() if self.cuda else None


def environment() -> dict[str, Any]:
    import importlib.metadata

    import torch

    versions = {}
    for dist in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    env: dict[str, Any] = {"versions": versions, "python": platform.python_version(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), device_memory_bytes=props.total_memory,
                   cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    else:
        env.update(device=f"CPU ({machine()})", cuda=None)
    return env


def sft_examples(n: int, words_per_example: int) -> list[dict]:
    """Prompt/completion records, each longer than any max_length used here."""
    out = []
    for i in range(n):
        completion = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words_per_example))
        out.append({"prompt": [{"role": "user", "content": f"Question {i}: write about memory."}],
                    "completion": [{"role": "assistant", "content": completion}]})
    return out


def worker_assets(job: dict) -> dict:
    """Random-init model (bf16 on CUDA, fp32 on CPU) + tiny-llama's tokenizer, saved once; SFT data."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from align.models import load_tokenizer

    model_dir, info_file = Path(job["model_dir"]), Path(job["model_dir"]) / "bench_info.json"
    data_file = Path(job["data"])
    if not data_file.exists():
        data_file.parent.mkdir(parents=True, exist_ok=True)
        words = 2 * job["sft"]["max_length"] + 64  # >= 1 token a word: every example is truncated
        data_file.write_text("".join(json.dumps(r) + "\n" for r in sft_examples(64, words)))
    if info_file.exists():
        return {**json.loads(info_file.read_text()), "environment": environment(), "reused": True}
    started = time.perf_counter()
    tok = load_tokenizer("tiny-llama")
    spec = {k: v for k, v in job["arch"].items() if k not in ("model_type", "hub_config")}
    config = AutoConfig.for_model(job["arch"]["model_type"], **spec, max_position_embeddings=4096,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialising 1B parameters on the GPU takes seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    info = {"params": params, "model_type": job["arch"]["model_type"], "vocab_size": config.vocab_size,
            "tokenizer_tokens": len(tok), "build_seconds": round(time.perf_counter() - started, 1)}
    info_file.write_text(json.dumps(info))
    del model
    return {**info, "environment": environment(), "reused": False}


def train_and_measure(trainer, meter: Meter, sft: dict, row_tokens: list[int]) -> dict:
    """trainer.train() with the step timer; throughput over the steps after the warm-up ones."""
    timer = step_timer()
    trainer.add_callback(timer)
    loaded = meter.now()
    meter.reset_peak()
    started = time.perf_counter()
    output = trainer.train()
    meter.sync()
    seconds = time.perf_counter() - started
    per_row = [min(n, sft["max_length"]) for n in row_tokens]
    tokens_per_step = sft["batch_size"] * sum(per_row) / len(per_row)
    ends = timer.ends
    warm = min(max(sft["warmup_steps"], 1), len(ends) - 1)
    if warm >= 1:
        timed_steps, timed = len(ends) - warm, ends[-1] - ends[warm - 1]
    else:  # one step: the whole of train()
        timed_steps, timed = len(ends), seconds
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": trainer.state.global_step, "timed_steps": timed_steps, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step * timed_steps / timed,
        "tokens_per_s_incl_warmup": tokens_per_step * len(ends) / seconds,
        "sec_per_step": timed / timed_steps, "train_seconds": seconds,
        "loaded_bytes": loaded, "peak_bytes": meter.peak(), "peak_reserved_bytes": meter.reserved_peak(),
        "memory_metric": meter.metric, "min_row_tokens": min(row_tokens),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "train_loss": output.training_loss, "last_loss": losses[-1] if losses else None,
    }


def train_settings(sft: dict) -> dict:
    """Our TrainConfig for the benchmark (the plain path mirrors it field by field)."""
    return {"lr": LR, "max_steps": sft["steps"], "batch_size": sft["batch_size"], "grad_accum": 1,
            "max_length": sft["max_length"], "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "optim": "adamw_torch", "gradient_checkpointing": sft["checkpointing"], "logging_steps": 1,
            "save_steps": 100_000, "report_to": ["none"]}


def worker_sft_align(job: dict) -> dict:
    import datasets  # noqa: F401  (imported before the meter, so on CPU its baseline includes them)
    import trl  # noqa: F401

    from align.stages import StageContext
    from align.stages.sft import Config, build_trainer

    meter = Meter()
    sft = job["sft"]
    cfg = Config.model_validate({
        "model": {"name": job["model_dir"], "quantization": job["quantization"]},
        "data": job["data"], "adapter": LORA, "train": train_settings(sft),
    })
    stage_dir = Path(job["case_dir"])
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainer, _ = build_trainer(cfg, StageContext("sft", stage_dir, stage_dir.parent, seed=0, upstream={}))
    rows = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    return train_and_measure(trainer, meter, sft, rows)


def plain_rows(tokenizer, data_file: str, max_length: int) -> dict[str, list]:
    """The same examples as the SFT stage reads, tokenized by hand: loss on the completion only."""
    ids_rows, labels_rows = [], []
    from align.jsonl import iter_jsonl

    for _, rec in iter_jsonl(data_file):
        prompt = tokenizer.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=False)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        ids_rows.append(ids)
        labels_rows.append([-100] * min(n_prompt, len(ids)) + ids[n_prompt:])
    return {"input_ids": ids_rows, "attention_mask": [[1] * len(r) for r in ids_rows], "labels": labels_rows}


def worker_sft_plain(job: dict) -> dict:
    """The obvious alternative: transformers Trainer + peft, written the way the QLoRA docs do."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    meter = Meter()
    sft, cuda = job["sft"], torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    rows = plain_rows(tokenizer, job["data"], sft["max_length"])
    dataset = Dataset.from_dict(rows)
    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    quantized = job["quantization"] == "4bit"
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0} if cuda else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], **kwargs)
    if cuda and not quantized:
        model = model.to("cuda")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=sft["checkpointing"])
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    fields = TrainingArguments.__dataclass_fields__
    args: dict[str, Any] = dict(
        output_dir=str(Path(job["case_dir"]) / "out"), per_device_train_batch_size=sft["batch_size"],
        gradient_accumulation_steps=1, max_steps=sft["steps"], learning_rate=LR, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no",
        report_to="none", bf16=cuda, use_cpu=not cuda, seed=0, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True,
    )
    args["warmup_ratio" if "warmup_ratio" in fields else "warmup_steps"] = 0
    args["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = \
        sft["checkpointing"]
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=dataset,
                      data_collator=default_data_collator)
    return train_and_measure(trainer, meter, sft, [len(r) for r in rows["input_ids"]])


def make_queries(tokenizer, n: int, target_tokens: int) -> list[list[dict]]:
    """n distinct one-turn queries of about target_tokens tokens each (chat template included)."""
    from align.ppo.rollout import encode_queries

    sample = " ".join(WORDS[j % len(WORDS)] for j in range(200))
    per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / 200
    overhead = len(encode_queries(tokenizer, [[{"role": "user", "content": ""}]])[0])
    n_words = max(1, int((target_tokens - overhead) / per_word))
    return [[{"role": "user", "content": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n_words))}]
            for i in range(n)]


def worker_ppo(job: dict) -> dict:
    """align's PPO loop, step by step as align.stages.ppo runs it, with per-phase times and peaks."""
    import torch
    from accelerate.utils import set_seed

    from align.models import AdapterConfig, ModelConfig
    from align.ppo.config import PPOSettings, RewardConfig
    from align.ppo.policy import load_roles
    from align.ppo.rollout import encode_queries, rollout
    from align.ppo.scoring import load_scorer
    from align.ppo.update import estimate_advantages, step_with_rollouts

    meter = Meter()
    p = job["ppo"]
    s = PPOSettings(steps=p["steps"], mini_batch_size=p["mini_batch_size"], ppo_epochs=p["ppo_epochs"],
                    rollout={"batch_size": p["batch_size"], "max_new_tokens": p["max_new_tokens"], "temperature": 1.0,
                             "max_prompt_length": max(p["prompt_tokens"] * 2, 8)},
                    report_to=["none"], log={"progress": False})
    set_seed(0)
    roles = load_roles(ModelConfig(name=job["model_dir"], quantization=job["quantization"]),
                       AdapterConfig(**LORA), s.value.model)
    reward = RewardConfig(source=job["reward"])
    scorer = load_scorer(reward, reward.source, roles)
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=s.lr, eps=s.adam_eps, weight_decay=s.weight_decay)
    queries = make_queries(roles.tokenizer, s.rollout.batch_size * s.steps, p["prompt_tokens"])
    tokens = encode_queries(roles.tokenizer, queries)
    loaded = meter.now()
    steps = []
    for step in range(s.steps):
        batch = list(range(step * s.rollout.batch_size, (step + 1) * s.rollout.batch_size))
        meter.reset_peak()
        t0 = time.perf_counter()
        r = rollout(roles, scorer, [queries[i] for i in batch], [tokens[i] for i in batch], s)
        meter.sync()
        t1 = time.perf_counter()
        peak_rollout = meter.peak()
        adv = estimate_advantages(r, s.kl.init_coef, s)
        meter.reset_peak()
        t2 = time.perf_counter()
        update = step_with_rollouts(roles, optimizer, r, adv, s, 0, step)
        meter.sync()
        t3 = time.perf_counter()
        steps.append({
            "generate_s": r.seconds["time/generate_s"], "score_s": r.seconds["time/score_s"],
            "logprobs_s": r.seconds["time/logprobs_s"], "rollout_s": t1 - t0, "advantages_s": t2 - t1,
            "update_s": t3 - t2, "step_s": t3 - t0, "peak_rollout_bytes": peak_rollout,
            "peak_update_bytes": meter.peak(), "response_len_mean": float(r.response_mask.sum(dim=1).float().mean()),
            "updates": update.get("policy/updates"),
        })
    warm = min(max(p["warmup_steps"], 0), len(steps) - 1)
    timed = steps[warm:]
    mean = {k: sum(st[k] for st in timed) / len(timed)
            for k in ("generate_s", "score_s", "logprobs_s", "rollout_s", "advantages_s", "update_s", "step_s",
                      "response_len_mean")}
    prompt_lengths = [len(t) for t in tokens]
    peak_rollout = max(st["peak_rollout_bytes"] for st in steps)
    peak_update = max(st["peak_update_bytes"] for st in steps)
    return {
        "steps": len(steps), "timed_steps": len(timed), **mean, "loaded_bytes": loaded,
        "peak_rollout_bytes": peak_rollout, "peak_update_bytes": peak_update,
        "peak_bytes": max(peak_rollout, peak_update), "peak_reserved_bytes": meter.reserved_peak(),
        "memory_metric": meter.metric, "prompt_tokens_max": max(prompt_lengths),
        "prompt_tokens_mean": sum(prompt_lengths) / len(prompt_lengths),
        "trainable_params": sum(x.numel() for x in roles.trainable_parameters()),
        "roles": roles.notes, "reward": scorer.kind, "per_step": steps,
    }


WORKERS = {"assets": worker_assets, "sft_align": worker_sft_align, "sft_plain": worker_sft_plain, "ppo": worker_ppo}


def run_worker_main(kind: str, job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    try:
        result = {"status": "ok", **WORKERS[kind](job)}
    except BaseException as exc:  # recorded, so the parent writes the other cases anyway
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": traceback.format_exc()[-6000:]}
    Path(job["result"]).write_text(json.dumps(result, default=str))


# --------------------------------------------------------------------------- planning (parent side)


def plan_sft(model_dir: str, quantization: str, sft: dict, device: str, plain: bool) -> dict:
    """`align plan` for the SFT stage with these settings; for the plain path, the planner's own-trainer
    variant (peft's fp32 adapters, full logits, non-quantized weights upcast to fp32)."""
    from align.plan import Planner, StageEstimate, overhead_term, plan_recipe, training_terms
    from align.plan.settings import sft_view
    from align.plan.training_stages import trained_setup

    section = {"model": {"name": model_dir, "quantization": quantization}, "data": "bench.jsonl",
               "adapter": dict(LORA), "train": train_settings(sft), "packing": False}
    if not plain:
        est = plan_recipe({"sft": section}, device=device)[0]
    else:
        planner = Planner({"sft": section}, device)
        setup, extra, _ = trained_setup(planner, sft_view(planner.sections["sft"]), head="lm-full", trainer="own",
                                        upcast_non_quantized=quantization != "none")
        est = StageEstimate("sft_plain", "training", training_terms(setup) + extra + overhead_term(device))
    return {"total_bytes": est.total, "peak_phase": est.peak_phase, "terms": {t.name: t.bytes for t in est.terms}}


def plan_ppo(model_dir: str, quantization: str, ppo: dict, prompt_tokens: int, reward: str, device: str) -> dict:
    from align.plan import plan_recipe

    section = {"policy": {"name": model_dir, "quantization": quantization}, "reward": {"source": reward},
               "prompts": "prompts.jsonl", "adapter": dict(LORA),
               "train": {"mini_batch_size": ppo["mini_batch_size"], "ppo_epochs": ppo["ppo_epochs"],
                         "rollout": {"batch_size": ppo["batch_size"], "max_new_tokens": ppo["max_new_tokens"],
                                     "max_prompt_length": prompt_tokens}}}
    est = plan_recipe({"ppo": section}, device=device)[0]
    resident = sum(t.bytes for t in est.terms if t.phase == "resident")
    phases = {name: resident + b for name, b in est.phase_totals().items()}
    return {"total_bytes": est.total, "peak_phase": est.peak_phase, "phases": phases,
            "rollout_bytes": max(phases.get("rollout", 0.0), phases.get("scoring", 0.0)),
            "update_bytes": max(phases.get("ppo update", 0.0), phases.get("optimizer step", 0.0)),
            "prompt_tokens": prompt_tokens, "terms": {t.name: t.bytes for t in est.terms}}


def with_error(plan: dict, measured: float | None) -> dict:
    if measured:
        plan["error_pct"] = 100.0 * (plan["total_bytes"] / measured - 1)
    return plan


# --------------------------------------------------------------------------- driving (parent side)


def run_job(kind: str, job: dict, timeout: float, env: dict[str, str]) -> dict:
    job_file = Path(job["result"]).with_suffix(".job.json")
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job))
    Path(job["result"]).unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--job", str(job_file)],
                              env=env, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired as exc:
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return {"status": "error", "error": f"timed out after {timeout:.0f} s", "stderr_tail": tail[-3000:],
                "wall_s": time.perf_counter() - started}
    wall = time.perf_counter() - started
    if Path(job["result"]).exists():
        result = json.loads(Path(job["result"]).read_text())
    else:  # killed (e.g. by the OOM killer) or crashed in native code
        result = {"status": "error", "error": f"worker exited with code {proc.returncode} and no result",
                  "stderr_tail": proc.stderr[-3000:]}
    result["wall_s"] = wall
    return result


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def fmt_gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def render_markdown(data: dict) -> str:
    env = data.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    prof = data["settings"]
    sft, ppo = prof["sft"], prof["ppo"]
    unit = "GiB (CUDA allocated)" if data["mode"] != "cpu-smoke" else "GiB (CPU RSS increase; smoke run, not a GPU figure)"
    lines = [
        "# Fit on one GPU: SFT-QLoRA and PPO, measured vs `align plan`", "",
        f"Measured {data['date']} by `python benchmarks/bench_gpu.py{data['flags']}` ({data['mode']}) on "
        f"**{env.get('device', '?')}** (CUDA {env.get('cuda')}); {versions}; Python {env.get('python')}.", "",
        f"Models: random-init, built from align's architecture table (`align.model_configs`), "
        f"{'4-bit NF4 (double quant) base, bf16 compute' if prof['quantization'] == '4bit' else 'no quantization'}; "
        f"tiny-llama's tokenizer. LoRA r={LORA['r']}, alpha {LORA['alpha']}, dropout {LORA['dropout']}, all linear layers.",
        f"SFT: batch {sft['batch_size']} x {sft['max_length']} tokens (no padding), {sft['steps']} steps "
        f"(tokens/s over the steps after the first {sft['warmup_steps']}), AdamW, lr {LR}, "
        f"gradient checkpointing {'on' if sft['checkpointing'] else 'off'}.",
        f"PPO: {ppo['batch_size']} rollouts per step, minibatches of {ppo['mini_batch_size']}, {ppo['ppo_epochs']} PPO "
        f"epochs, up to {ppo['max_new_tokens']} new tokens after ~{ppo['prompt_tokens']}-token prompts, a reward "
        f"function, {ppo['steps']} steps (means skip the first {ppo['warmup_steps']}).",
        "", f"Memory in {unit}: peak during training (reset after loading); plan = `align plan` for the same settings; "
        "error = plan / measured - 1.", "",
        *(["**CPU smoke run**: these numbers only show that the code path works (the RSS includes imports and "
           "allocator slack); they say nothing about a GPU.", ""] if data["mode"] == "cpu-smoke" else []),
        "## SFT", "",
        "| model | path | tokens/s | s/step | loaded | peak | plan | plan error |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"sft_align": "align (TRL SFTTrainer)", "sft_plain": "plain Trainer + peft"}
    for model, cases in data["cases"].items():
        for case in ("sft_align", "sft_plain"):
            c = cases.get(case, {})
            if c.get("status") == "ok":
                lines.append(f"| {model} | {labels[case]} | {c['tokens_per_s']:,.0f} | {c['sec_per_step']:.3f} | "
                             f"{fmt_gib(c['loaded_bytes'])} | {fmt_gib(c['peak_bytes'])} | "
                             f"{fmt_gib(c.get('plan', {}).get('total_bytes'))} | {fmt_pct(c.get('plan', {}).get('error_pct'))} |")
            else:
                lines.append(f"| {model} | {labels[case]} | {c.get('status', 'not run')} | | | | "
                             f"{fmt_gib(c.get('plan', {}).get('total_bytes'))} | |")
    lines.append("")
    for model, ratio in data.get("ratios", {}).items():
        lines.append(f"- {model}: align / plain = {ratio['tokens_per_s']:.2f}x the tokens/s, "
                     f"{ratio['peak_bytes']:.2f}x the peak memory.")
    lines += ["", "## PPO (align's loop)", "",
              "| model | s/step | generate | score | log-probs | update | response tokens | peak rollout (plan) | "
              "peak update (plan) | peak | plan | plan error |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, cases in data["cases"].items():
        c = cases.get("ppo", {})
        plan = c.get("plan", {})
        if c.get("status") == "ok":
            lines.append(
                f"| {model} | {c['step_s']:.2f} | {c['generate_s']:.2f} | {c['score_s']:.3f} | {c['logprobs_s']:.2f} | "
                f"{c['update_s']:.2f} | {c['response_len_mean']:.0f} | {fmt_gib(c['peak_rollout_bytes'])} "
                f"({fmt_gib(plan.get('rollout_bytes'))}) | {fmt_gib(c['peak_update_bytes'])} "
                f"({fmt_gib(plan.get('update_bytes'))}) | {fmt_gib(c['peak_bytes'])} | "
                f"{fmt_gib(plan.get('total_bytes'))} | {fmt_pct(plan.get('error_pct'))} |")
        else:
            lines.append(f"| {model} | {c.get('status', 'not run')} | | | | | | | | | {fmt_gib(plan.get('total_bytes'))} | |")
    failures = [(f"{m}/{k}", c) for m, cases in data["cases"].items() for k, c in cases.items()
                if c.get("status") != "ok"]
    failures += [(f"{m}/plan:{k}", {"status": "error", "error": c["plan_error"]})
                 for m, cases in data["cases"].items() for k, c in cases.items() if c.get("plan_error")]
    if failures:
        lines += ["", "## Not measured", ""]
        lines += [f"- {name}: {c.get('status')}: {c.get('error', '')}".rstrip() for name, c in failures]
    lines += ["", f"Benchmark wall time {data.get('benchmark_seconds', 0):.0f} s. Raw numbers (per step, plan terms): "
              "gpu.json.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.5B model only, shorter runs (~2-3 min)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU, no 4-bit, 2 steps (tests the code)")
    parser.add_argument("--out", help="folder for gpu.json / gpu.md (default benchmarks/results; --cpu-smoke: a temp dir)")
    parser.add_argument("--work", help="folder for the saved models and run outputs (default benchmarks/.cache/bench-gpu)")
    parser.add_argument("--budget-s", type=float, help="stop starting new cases after this many seconds")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker_main(args.worker, args.job)
        return 0
    mode = "cpu-smoke" if args.cpu_smoke else "quick" if args.quick else "full"
    if mode != "cpu-smoke" and not cuda_available():
        print("no CUDA device: nothing measured (run with --cpu-smoke to exercise the code path on CPU)")
        return 0
    prof = PROFILES[mode]
    out = Path(args.out) if args.out else RESULTS if mode != "cpu-smoke" else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    work = Path(args.work) if args.work else WORK if mode != "cpu-smoke" else out / "work"
    budget = args.budget_s or prof["budget_s"]
    device = "cpu" if mode == "cpu-smoke" else "cuda"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.setdefault("ALIGN_CACHE", str(work / "align-cache"))
    if mode == "cpu-smoke":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU machine
    reward = f"{Path(__file__).resolve()}:length_reward"
    started = time.perf_counter()
    flags = "".join(f" {f}" for f, on in (("--quick", args.quick), ("--cpu-smoke", args.cpu_smoke)) if on)
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": mode, "flags": flags,
        "settings": {k: v for k, v in prof.items() if k not in ("budget_s", "case_timeout_s")},
        "lora": LORA, "lr": LR, "budget_s": budget, "environment": None, "models": {}, "cases": {}, "ratios": {},
    }
    print(f"bench_gpu ({mode}): results -> {out}", flush=True)
    for model_key in prof["models"]:
        model_dir = work / "models" / model_key
        base_job = {"model_dir": str(model_dir), "data": str(work / f"sft-{prof['sft']['max_length']}.jsonl"),
                    "quantization": prof["quantization"], "sft": prof["sft"], "ppo": prof["ppo"], "reward": reward}
        cases: dict[str, dict] = data["cases"].setdefault(model_key, {})
        left = budget - (time.perf_counter() - started)
        try:
            spec = arch_spec(model_key)
        except Exception as exc:
            spec, assets = {}, {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        else:
            assets = (run_job("assets", {**base_job, "arch": spec, "result": str(work / "jobs" / f"{model_key}-assets.json")},
                              min(prof["case_timeout_s"], left), env) if left > 0
                      else {"status": "skipped", "error": "time budget used up"})
        if assets.get("environment") and data["environment"] is None:
            data["environment"] = assets["environment"]
        data["models"][model_key] = {"arch": spec, **{k: v for k, v in assets.items() if k != "environment"}}
        print(f"[{model_key}] assets: {assets['status']} {assets.get('error', '')}", flush=True)
        for case in CASES:
            left = budget - (time.perf_counter() - started)
            if assets["status"] != "ok":
                result = {"status": "skipped", "error": f"no model ({assets.get('error', '')})"}
            elif left <= 10:
                result = {"status": "skipped", "error": f"time budget of {budget:.0f} s used up"}
            else:
                job = {**base_job, "case_dir": str(work / "runs" / model_key / case),
                       "result": str(work / "jobs" / f"{model_key}-{case}.json")}
                result = run_job(case, job, min(prof["case_timeout_s"], left), env)
            try:
                if case == "ppo":
                    prompt = int(result.get("prompt_tokens_max") or prof["ppo"]["prompt_tokens"])
                    plan = plan_ppo(str(model_dir), prof["quantization"], prof["ppo"], prompt, reward, device)
                else:
                    plan = plan_sft(str(model_dir), prof["quantization"], prof["sft"], device, case == "sft_plain")
                result["plan"] = with_error(plan, result.get("peak_bytes") if result["status"] == "ok" else None)
            except Exception as exc:  # e.g. the model folder was never written
                result["plan_error"] = f"{type(exc).__name__}: {exc}"
            cases[case] = result
            a, b = cases.get("sft_align", {}), cases.get("sft_plain", {})
            if a.get("status") == "ok" and b.get("status") == "ok":
                data["ratios"][model_key] = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                                             "peak_bytes": a["peak_bytes"] / b["peak_bytes"]}
            data["benchmark_seconds"] = time.perf_counter() - started
            write_results("gpu", data, render_markdown(data), out, echo=False)
            summary = (f"peak {fmt_gib(result.get('peak_bytes'))} GiB, plan error "
                       f"{fmt_pct(result.get('plan', {}).get('error_pct'))}")
            print(f"[{model_key}] {case}: {result['status']} {result.get('error', summary)} "
                  f"({result.get('wall_s', 0):.0f} s)", flush=True)
    data["benchmark_seconds"] = time.perf_counter() - started
    write_results("gpu", data, render_markdown(data), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
