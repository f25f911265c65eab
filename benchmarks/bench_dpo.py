"""The dpo stage vs plain TRL DPOTrainer, and the shared-base reference vs a separate reference model.

Same model (a LoRA on SmolLM2-135M-Instruct by default, or tiny-llama), same pairs, same DPOConfig values,
fp32 on CPU, 1 torch thread per process, each configuration in its own process (peak RSS = that process's
ru_maxrss), one process at a time.

1. align `dpo` stage (rankings file -> pairs -> TRL DPOTrainer via align.training.trainer_args) vs plain
   TRL `DPOTrainer` built by hand on the same pairs: per-step loss and implicit-reward accuracy curves,
   setup time, median step time and total train time.
2. Peak memory: the reference as the base with adapters disabled (align's default, one copy of the weights)
   vs the same LoRA training with a separate reference model (a second full copy of the weights, what TRL
   builds when it is handed a non-PEFT policy or a `ref_model`).

The toy preference: random-word responses; the better one starts with "excellent" (as in tests/integration/
test_dpo.py). Run: `OMP_NUM_THREADS=1 python benchmarks/bench_dpo.py` (~5-10 min on 2 shared cores);
writes benchmarks/results/dpo.{md,json}. `--model tiny-llama --steps 4` for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine, peak_rss_mb, print_result, run_worker, train_timed, write_results

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "went", "to", "sleep", "near", "warm", "fire",
         "with", "some", "milk", "bread", "apple", "tree", "river"]
LORA = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def write_rankings(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))) for _ in range(2)]
        good = rng.randrange(2)
        responses[good] = "excellent " + responses[good]
        rows.append({"prompt": f"Tell me something about item {i}.", "responses": responses,
                     "ranking": [[good], [1 - good]]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def train_settings(args) -> dict:
    return {"lr": 1e-4, "max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
            "logging_steps": 1, "save_steps": 10_000, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "report_to": ["none"]}


def curves(log_history: list[dict]) -> dict[str, list[float]]:
    return {key: [e[key] for e in log_history if key in e and "train_runtime" not in e]
            for key in ("loss", "rewards/accuracies", "rewards/margins")}


# --------------------------------------------------------------------------- workers (one per process)


def worker_align(args, work: Path) -> dict:
    import datasets  # noqa: F401  imported before the clock starts, as in the plain-TRL worker
    import peft  # noqa: F401
    import trl  # noqa: F401

    from align.stages import StageContext
    from align.stages.dpo import Config, build_trainer

    cfg = Config.model_validate({"model": args.model, "data": str(work / "rankings.jsonl"), "eval_fraction": 0.0,
                                 "method": {"type": "dpo", "beta": 0.1}, "adapter": LORA, "train": train_settings(args)})
    stage_dir = work / "align"
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(name="dpo", stage_dir=stage_dir, run_dir=work, seed=0, upstream={})
    started = time.perf_counter()
    trainer, info = build_trainer(cfg, ctx)
    setup = time.perf_counter() - started
    _, train_s, timer = train_timed(trainer)
    return {"setup_s": setup, "train_s": train_s, "step_s": timer.durations,
            "reference": info["reference"], **curves(trainer.state.log_history)}


def worker_trl(args, work: Path, separate_reference: bool) -> dict:
    """Plain TRL, written as its docs show: load model + tokenizer, LoraConfig, DPOConfig, DPOTrainer."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from align.models import load_tokenizer, resolve_model_ref
    from align.preferences.rankings import preference_pairs, read_rankings

    started = time.perf_counter()
    path = resolve_model_ref(args.model)
    rows, _ = preference_pairs(read_rankings(work / "rankings.jsonl"))
    # align's chat template / pad token (tiny-llama and the GGUF-converted SmolLM2 ship without a template)
    tokenizer = load_tokenizer(args.model) if AutoTokenizer.from_pretrained(path).chat_template is None else \
        AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32) if separate_reference else None
    t = train_settings(args)
    config = DPOConfig(
        output_dir=str(work / "trl"), learning_rate=t["lr"], max_steps=t["max_steps"],
        per_device_train_batch_size=t["batch_size"], max_length=t["max_length"], logging_steps=1,
        logging_first_step=True, save_strategy="no", warmup_steps=0.0, lr_scheduler_type="constant",
        report_to="none", bf16=False, use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, beta=0.1,
        activation_checkpointing=False, remove_unused_columns=False, dataloader_num_workers=0,
        weight_decay=0.0, max_grad_norm=1.0, num_train_epochs=1.0,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows), peft_config=lora)
    setup = time.perf_counter() - started
    _, train_s, timer = train_timed(trainer)
    return {"setup_s": setup, "train_s": train_s, "step_s": timer.durations,
            **curves(trainer.state.log_history)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    if args.worker == "align":
        out = worker_align(args, work)
    else:
        out = worker_trl(args, work, separate_reference=args.worker == "trl-separate-ref")
    out["peak_rss_mib"] = peak_rss_mb()
    print_result(out)


# --------------------------------------------------------------------------- driver


def run_dpo_worker(name: str, args, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--work", str(work), "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    return run_worker(cmd, {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--worker", choices=["align", "trl", "trl-separate-ref"])
    p.add_argument("--work")
    p.add_argument("--out", default=str(RESULTS / "dpo"))
    args = p.parse_args()
    if args.worker:
        return worker(args)

    # warm the file cache (imports, model files) so that the first configuration measured is not the cold one
    subprocess.run([sys.executable, "-c", "import trl, peft, datasets, align.stages.dpo; from align.models import "
                    f"load_causal_lm; load_causal_lm({args.model!r})"], check=True, capture_output=True)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_rankings(work / "rankings.jsonl", n=args.steps * args.batch_size)
        results = {name: run_dpo_worker(name, args, work) for name in ("align", "trl", "trl-separate-ref")}
    load_end = os.getloadavg()[0]
    ours, plain, separate = results["align"], results["trl"], results["trl-separate-ref"]
    loss_diff = max(abs(a - b) for a, b in zip(ours["loss"], plain["loss"], strict=True))
    acc_diff = max(abs(a - b) for a, b in zip(ours["rewards/accuracies"], plain["rewards/accuracies"], strict=True))
    med = {k: statistics.median(v["step_s"]) for k, v in results.items()}
    import torch
    import transformers
    import trl

    summary = {
        "model": args.model, "steps": args.steps, "batch_size_pairs": args.batch_size, "max_length": args.max_length,
        "lora": LORA, "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "machine": f"{machine()} shared with other jobs",
        "load_average": [round(load_start, 2), round(load_end, 2)], "torch_threads": 1,
        "max_abs_loss_diff": loss_diff, "max_abs_accuracy_diff": acc_diff,
        "median_step_ratio": med["align"] / med["trl"],
        "train_time_ratio": ours["train_s"] / plain["train_s"],
        "peak_rss_ratio_shared_vs_separate": ours["peak_rss_mib"] / separate["peak_rss_mib"],
        "results": results,
    }
    out = Path(args.out)
    rows = [("align dpo stage (reference: base, adapters disabled)", ours),
            ("plain TRL DPOTrainer + peft_config (same reference)", plain),
            ("plain TRL DPOTrainer + peft_config + separate ref_model", separate)]
    md = [
        "# DPO benchmark: align's dpo stage vs plain TRL", "",
        f"Model: {args.model} with LoRA r={LORA['r']} on all linear layers, fp32 on CPU; {args.steps} steps x "
        f"{args.batch_size} pairs, max_length {args.max_length}, lr 1e-4 constant, beta 0.1, seed 0. torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
        f"{summary['machine']}, 1 torch thread per process (OMP_NUM_THREADS=1), each configuration in its own "
        f"process, one at a time; 1-min load average {load_start:.2f} at start, {load_end:.2f} at end. "
        "Produced by `benchmarks/bench_dpo.py`.", "",
        "Setup = reading the pairs, loading tokenizer and model, building the trainer (library imports excluded).",
        "",
        "| configuration | setup s | train s | median step s | final loss | final reward acc. | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        md.append(f"| {name} | {r['setup_s']:.1f} | {r['train_s']:.1f} | {statistics.median(r['step_s']):.2f} | "
                  f"{r['loss'][-1]:.4f} | {r['rewards/accuracies'][-1]:.2f} | {r['peak_rss_mib']:.0f} |")
    md += [
        "",
        f"- Same curves: the largest per-step difference between align and plain TRL is {loss_diff:.2e} in loss "
        f"and {acc_diff:.2e} in implicit-reward accuracy over {len(ours['loss'])} logged steps.",
        f"- Wall time, align / plain TRL: {summary['median_step_ratio']:.3f} by median step, "
        f"{summary['train_time_ratio']:.3f} by total train time (goal <= 1.05). On shared cores the median step "
        "is the steadier number.",
        f"- Peak RSS, shared-base reference / separate reference model: "
        f"{summary['peak_rss_ratio_shared_vs_separate']:.3f} (goal <= 0.6 for LoRA on SmolLM2). The difference "
        f"is the second copy of the weights ({separate['peak_rss_mib'] - ours['peak_rss_mib']:.0f} MiB); the rest "
        "of the peak (Python, torch, activations, the LM head's tiles) is shared by both.",
        "",
        "Per-step loss (align | TRL): " + ", ".join(f"{a:.4f}|{b:.4f}" for a, b in zip(ours["loss"], plain["loss"])),
    ]
    write_results(out.stem, summary, "\n".join(md), out.parent)


if __name__ == "__main__":
    main()
