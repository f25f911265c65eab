"""Critic-free RL on CPU: align's ppo stage (advantage grpo / rloo) vs TRL 1.16's GRPOTrainer / RLOOTrainer.

The same tiny task on both sides: tiny-llama with tests/integration/test_ppo.py's SFT-like LoRA merged
in (it replies with a few words from red/blue/green/cat/dog), a fresh LoRA (r 16, every linear layer
of the blocks) to train, ref_policy = adapters disabled, and the verifiable reward "fraction of the
words that are blue". Same settings: 4 prompts x 4 samples = 16 rollouts per step, 12 new tokens,
temperature 1, top_k off, one optimizer step per batch (one epoch), lr 1e-3 constant, Adam eps 1e-8, no KL (beta 0), GRPO: group std scaling, per-response
loss mean (TRL loss_type "grpo"); RLOO: no advantage normalisation.

Each arm runs in its own process (peak RSS = ru_maxrss of that process), one intra-op thread,
and reports seconds per step (the training's CPU time / steps: on a shared machine wall time
measures the scheduler) and the mean reward of every step.
Differences that remain: TRL's RLOO clips a sequence-level ratio (sum of token log-probs), align
clips per token; align also computes the ref_policy's log-probs (to log the KL) even at beta 0.

    python benchmarks/bench_grpo.py               # ~5 minutes on 2 shared cores
    python benchmarks/bench_grpo.py --steps 10

Writes benchmarks/results/grpo.md and grpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import machine, peak_rss_mb, print_result, run_worker, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "bench-grpo"
PROMPTS = ["Tell me about the sea.", "Write a short poem.", "Name a color.", "Describe a cat.",
           "How do plants grow?", "Why is the sky blue?", "Give three tips.", "Say something."]
G, QUERIES, NEW_TOKENS, LR = 4, 4, 12, 1e-3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARMS = ["align grpo", "trl GRPOTrainer", "align rloo", "trl RLOOTrainer"]


def frac_blue(prompt: str, response: str) -> float:
    words = response.split()
    return sum(w == "blue" for w in words) / len(words) if words else 0.0


def sft_model() -> Path:
    """tiny-llama with an SFT-like LoRA (replies with 3-6 random words from WORDS, then EOS) merged in:
    both sides then train a fresh LoRA on it, with the adapter-disabled model as ref_policy (TRL's
    GRPO/RLOO refuse an lm_head adapter, which this small model needs to learn the words)."""
    out = CACHE / "sft-merged"
    if (out / "config.json").exists():
        return out
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from align.models import resolve_model_ref
    from tests.integration.test_ppo import train_sft_like_adapter

    base = resolve_model_ref("tiny-llama")
    adapter = train_sft_like_adapter(base, CACHE / "sft-adapter")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(out))
    return out


def run_align(kind: str, steps: int) -> dict:
    import shutil

    from align.ppo.stats import read_stats
    from align.stages import StageContext
    from align.stages.ppo import Config, run

    stage_dir = CACHE / f"align-{kind}"
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    prompts = stage_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = Config.model_validate({
        "policy": str(sft_model()), "reward": f"{Path(__file__).resolve()}:frac_blue", "prompts": str(prompts),
        "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
        "train": {"steps": steps, "mini_batch_size": 8, "grad_accum": 2, "ppo_epochs": 1, "lr": LR, "adam_eps": 1e-8,
                  "loss_aggregation": "sequence", "save_steps": 10_000,
                  "rollout": {"batch_size": G * QUERIES, "group_size": G, "temperature": 1.0,
                              "max_new_tokens": NEW_TOKENS},
                  "advantage": {"estimator": kind, "whiten_advantages": False}, "kl": {"init_coef": 0.0},
                  "report_to": ["none"], "log": {"progress": False}},
    })
    result = run(cfg, StageContext("ppo", stage_dir, CACHE, seed=0, upstream={}))
    stats = read_stats(stage_dir / "stats.jsonl")
    return {"s_per_step": result.metrics["train_seconds"] / steps, "rewards": [s["objective/scores"] for s in stats],
            "trainable_params": result.metrics["trainable_params"]}


def run_trl(kind: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(sft_model()))
    tok = AutoTokenizer.from_pretrained(str(sft_model()))
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS] * (steps + 2))

    def reward(completions, **kwargs):
        return [frac_blue("", c[0]["content"] if isinstance(c, list) else c) for c in completions]

    common = dict(output_dir=str(CACHE / f"trl-{kind}"), per_device_train_batch_size=G * QUERIES,
                  gradient_accumulation_steps=1, num_generations=G, max_completion_length=NEW_TOKENS,
                  temperature=1.0, top_k=0, learning_rate=LR, lr_scheduler_type="constant", beta=0.0,
                  num_iterations=1, max_steps=steps, logging_steps=1, save_strategy="no", report_to="none",
                  use_cpu=True, bf16=False, seed=0, max_grad_norm=1.0, disable_dropout=True)
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(model=model, reward_funcs=reward, processing_class=tok, train_dataset=dataset,
                              peft_config=lora, args=GRPOConfig(**common, loss_type="grpo", scale_rewards="group"))
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(model=model, reward_funcs=reward, processing_class=tok, train_dataset=dataset,
                              peft_config=lora, args=RLOOConfig(**common, normalize_advantages=False))
    t0 = time.perf_counter()  # CPU time: see child()
    trainer.train()
    seconds = time.perf_counter() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"s_per_step": seconds / steps, "rewards": rewards,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def child(arm: str, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    time.perf_counter = time.process_time  # every timer (ours and this file's) counts this process's CPU time
    kind = "grpo" if "grpo" in arm.lower() else "rloo"
    out = run_align(kind, steps) if arm.startswith("align") else run_trl(kind, steps)
    out["peak_rss_mb"] = peak_rss_mb()
    print_result(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.arm:
        child(args.arm, args.steps)
        return
    sft_model()  # once, before the timed arms
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    load = round(os.getloadavg()[0], 1)
    results = {}
    for arm in ARMS:
        results[arm] = run_worker([sys.executable, __file__, "--arm", arm, "--steps", str(args.steps)], env, arm)
        print(arm, {k: v for k, v in results[arm].items() if k != "rewards"}, flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "load_before": load, "machine": machine()}
    lines = [
        "# Critic-free RL: align's ppo stage (grpo / rloo) vs TRL 1.16 GRPOTrainer / RLOOTrainer (CPU)",
        "",
        f"Measured {meta['date']} by `python benchmarks/bench_grpo.py --steps {args.steps}` on {meta['machine']}, "
        f"one intra-op thread per process, each arm in a fresh process, load average {load} before the run "
        "(a shared machine): seconds are CPU seconds of the arm's process per step, not wall time.",
        "",
        "Task: tiny-llama with an SFT-like LoRA merged in (answers with a few of red/blue/green/cat/dog), a fresh "
        f"LoRA r=16 to train, ref = adapters disabled; reward = the fraction of blue words. {QUERIES} prompts x "
        f"{G} samples = {G * QUERIES} rollouts per step, "
        f"{NEW_TOKENS} new tokens, temperature 1, lr {LR} constant, one epoch, no KL (beta 0).",
        "",
        "| arm | s / step | peak RSS (MB) | trainable params | reward, first 3 steps | reward, last 5 steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm, r in results.items():
        rw = r["rewards"]
        first, last = sum(rw[:3]) / max(len(rw[:3]), 1), sum(rw[-5:]) / max(len(rw[-5:]), 1)
        lines.append(f"| {arm} | {r['s_per_step']:.2f} | {r['peak_rss_mb']:.0f} | {r['trainable_params']:,} | "
                     f"{first:.3f} | {last:.3f} |")
    lines += ["", "Reading: on a model this small both loops spend most of a step sampling, so CPU time per step is "
              "close. The reward curves are short and noisy (16 rollouts a step, each side its own "
              "sampling stream): compare the rise from the first to the last steps, not the levels.",
              "", "Reward per step:", ""]
    for arm, r in results.items():
        lines.append(f"- {arm}: " + " ".join(f"{x:.2f}" for x in r["rewards"]))
    write_results("grpo", {**meta, "arms": results}, "\n".join(lines))


if __name__ == "__main__":
    main()
