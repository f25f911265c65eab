"""The reward stage's frozen-layer cache on the quickstart's base: time with and without, same result.

SmolLM2-135M-Instruct (the quickstart's base) with the quickstart's reward adapter (LoRA r 16 on the top 8
of 30 blocks, a fresh score head), synthetic rankings (K = 4 responses of 40-90 words per prompt), the
reward stage's own trainer (`align.stages.reward.build_trainer`), 3 epochs: once with
`cache_frozen_layers_gib` on (the bottom 22 blocks run in epoch 1 only) and once off. Same seed, so both
see the same batches; reports the training's CPU seconds (one intra-op thread: on a shared machine wall
time measures the scheduler) and the largest difference between the two trained adapters.

    OMP_NUM_THREADS=1 python benchmarks/bench_reward_cache.py            # ~6 CPU-minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_reward_cache.py --prompts 8 --epochs 2

Writes benchmarks/results/reward_cache.md and reward_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch
from _common import write_results

WORDS = ["the", "a", "river", "stone", "quietly", "bread", "warm", "fire", "tree", "apple", "milk", "near", "went",
         "sleep", "cat", "mat", "blue", "green", "because", "however", "answer", "question", "simple", "clear"]


def rankings(n_prompts: int, k: int, seed: int):
    from align.preferences.rankings import PromptGroup

    rng = random.Random(seed)
    groups = []
    for i in range(n_prompts):
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90))) for _ in range(k)]
        order = list(range(k))
        rng.shuffle(order)
        pairs = [(order[a], order[b]) for a in range(k) for b in range(a + 1, k)]
        groups.append(PromptGroup(prompt=[{"role": "user", "content": f"Write about topic {i} in a few sentences."}], responses=responses,
                                  pairs=pairs, k=k))
    return groups


def train_once(groups, epochs: float, cache_gib: float, work: Path) -> dict:
    from peft import get_peft_model

    from align.models import (
        AdapterConfig,
        ModelConfig,
        load_sequence_classifier,
        load_tokenizer,
        peft_config,
        pick_precision,
        resolve_model_ref,
    )
    from align.stages.reward import build_trainer
    from align.training import TrainConfig

    base = resolve_model_ref("smollm2-135m-instruct")
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    torch.manual_seed(0)
    model = load_sequence_classifier(ModelConfig(name=base), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    lora = peft_config(AdapterConfig(type="lora", r=16, alpha=32, dropout=0.0, top_layers=8), task_type="SEQ_CLS",
                       model=model)
    lora.modules_to_save = ["score"]
    model = get_peft_model(model, lora)
    train = TrainConfig(lr=1e-3, epochs=epochs, batch_size=4, max_length=256, logging_steps=1, save_steps=10_000,
                        warmup_ratio=0.0, report_to=["none"])
    trainer = build_trainer(model, tokenizer, groups, train, work, pick_precision("auto"), 0,
                            cache_frozen_layers_gib=cache_gib)
    start = time.process_time()
    trainer.train()
    seconds = time.process_time() - start
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cache = trainer.trunk_cache
    return {"cpu_seconds": round(seconds, 1), "steps": trainer.state.global_step,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "cache": None if cache is None else {"layers": cache.layers, "replayed_batches": cache.hits,
                                                 "computed_batches": cache.misses},
            "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--epochs", type=float, default=3)
    args = parser.parse_args()
    import transformers

    groups = rankings(args.prompts, 4, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        on = train_once(groups, args.epochs, 2.0, Path(tmp) / "on")
        off = train_once(groups, args.epochs, 0.0, Path(tmp) / "off")
    max_diff = max((on["weights"][n] - off["weights"][n]).abs().max().item() for n in on["weights"])
    loss_diff = max(abs(a - b) for a, b in zip(on["losses"], off["losses"], strict=True))
    res = {
        "prompts": args.prompts, "k": 4, "epochs": args.epochs, "steps": on["steps"],
        "cache_on_cpu_s": on["cpu_seconds"], "cache_off_cpu_s": off["cpu_seconds"],
        "ratio": round(on["cpu_seconds"] / off["cpu_seconds"], 3), "cache": on["cache"],
        "max_weight_diff": max_diff, "max_loss_diff": loss_diff,
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "env": f"{platform.machine()}, torch {torch.__version__}, transformers {transformers.__version__}",
    }
    write_results("reward_cache", res, f"""# Reward stage: the frozen-layer cache

SmolLM2-135M-Instruct, LoRA r 16 on the top 8 of 30 blocks + a fresh score head, {args.prompts} prompts x K = 4
synthetic responses (40-90 words), batch 4 prompts, lr 1e-3, {args.epochs:g} epochs ({on["steps"]} steps), fp32,
{res["threads"]} intra-op thread(s), CPU seconds of `trainer.train()` ({res["date"]}, {res["env"]}).

| | CPU seconds | ratio |
|---|---:|---:|
| every block every epoch (`cache_frozen_layers_gib: 0`) | {off["cpu_seconds"]} | 1.00 |
| bottom 22 blocks in epoch 1 only (default) | {on["cpu_seconds"]} | {res["ratio"]:.2f} |

Cache: {on["cache"]}. Largest difference between the two trained adapters' weights: {max_diff:.2e}; between
their per-step losses: {loss_diff:.2e} (float rounding: a batch's padding differs between the epoch that
computed a row and the one that replays it).

    OMP_NUM_THREADS=1 python benchmarks/bench_reward_cache.py --prompts {args.prompts} --epochs {args.epochs:g}
""", echo=False)
    print(json.dumps({k: v for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()
