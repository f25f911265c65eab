"""Reward-model training: our per-prompt Trainer vs TRL's RewardTrainer, and per-prompt batching vs pair expansion.

Same randomly initialised Llama (4 layers, width 256, the tiny-llama tokenizer), same data, same
optimiser settings, full fine-tuning, fp32 on CPU, fixed torch threads.

1. K = 2 pairs: `align` (transformers.Trainer + our collator/loss, as in the reward stage) vs
   TRL 1.16 `RewardTrainer`: training steps/s and held-out pairwise accuracy (both scored by the same code).
2. K = 4 rankings: one batch element per prompt (4 forward rows, 6 pairs) vs the ranking expanded into
   6 independent pairs (12 forward rows), run through our Trainer and through TRL's RewardTrainer:
   forward rows and wall time per epoch, held-out accuracy.

The toy preference: responses are random words; the better response has more "positive" words
(good/great/excellent/nice/happy), never tied. Run: `python benchmarks/bench_reward.py` (~3-5 min on 2 cores);
writes benchmarks/results/reward.{md,json}.

`python benchmarks/bench_reward.py --losses` compares the two reward losses instead (`bench_losses`):
InstructGPT's pairwise loss vs listwise Plackett–Luce on the same rankings (K = 4 without ties, K = 8
with ties), same init, batches and steps, over several data seeds: held-out pairwise accuracy and time;
writes benchmarks/results/reward_losses.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "went", "to", "sleep", "near", "warm", "fire",
         "with", "some", "milk", "bread", "apple", "tree", "river", "blue", "stone", "quietly"]
POSITIVE = ["good", "great", "excellent", "nice", "happy"]


# --------------------------------------------------------------------------- data


def response(rng: random.Random, positives: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    for _ in range(positives):
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE))
    return " ".join(words)


def make_rankings(n_prompts: int, k: int, seed: int) -> list[dict]:
    """K responses with distinct positive-word counts 0..K-1 (shuffled); ranking = more positive words first."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        counts = rng.sample(range(k), k)
        responses = [response(rng, c) for c in counts]
        ranking = sorted(range(k), key=lambda j: -counts[j])
        rows.append({"prompt": f"Describe scene number {i} in a few words.", "responses": responses,
                     "ranking": ranking})
    return rows


def to_groups(rows: list[dict]):
    from align.rankings import group_by_prompt, parse_record

    return group_by_prompt([parse_record(r, f"row {i}") for i, r in enumerate(rows)])


def expand_to_pair_groups(groups):
    """Each ranking → K·(K−1)/2 independent (chosen, rejected) elements, as pair-based trainers see it."""
    from align.rankings import PromptGroup

    return [PromptGroup(g.prompt, [g.responses[b], g.responses[w]], [(0, 1)], 2) for g in groups for b, w in g.pairs]


# --------------------------------------------------------------------------- model


def build_model_dir(root: Path) -> str:
    """A random 4-layer, 256-wide Llama with the tiny-llama tokenizer (so timings are not all overhead)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.models import load_tokenizer, resolve_model_ref

    tokenizer = load_tokenizer(resolve_model_ref("tiny-llama"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    out = root / "llama-4x256"
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def fresh_classifier(model_dir: str):
    from align.models import load_sequence_classifier, load_tokenizer

    torch.manual_seed(0)  # the same score-head init for every contender
    model = load_sequence_classifier(model_dir, num_labels=1)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model, tokenizer


class RowCounter:
    """Counts forward calls and rows seen in training (grad enabled) through a forward pre-hook."""

    def __init__(self, model):
        self.calls = self.rows = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if torch.is_grad_enabled():
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.calls += 1
            self.rows += int(ids.shape[0])


def step_timer():
    """A TrainerCallback recording each optimizer step's wall time (the median resists other jobs' bursts)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.durations: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.durations.append(time.perf_counter() - self.start)

        def summary(self, seconds: float, steps: int) -> dict:
            median = statistics.median(self.durations)
            return {"steps": steps, "train_seconds": round(seconds, 2),
                    "median_step_seconds": round(median, 4), "steps_per_second": round(1 / median, 2)}

    return StepTimer()


def heldout_accuracy(model, tokenizer, groups, max_length: int) -> float:
    from align.reward_model import RewardModel, pair_metrics

    rm = RewardModel(model, tokenizer, "chat", max_length)
    return pair_metrics(rm.score_groups(groups, 32), groups)["accuracy"]


# --------------------------------------------------------------------------- contenders


def train_align(model_dir, groups, heldout, train_cfg, work: Path) -> dict:
    from align.models import pick_precision
    from align.stages.reward import build_trainer

    model, tokenizer = fresh_classifier(model_dir)
    counter = RowCounter(model)
    trainer = build_trainer(model, tokenizer, groups, train_cfg, work / "ckpt", pick_precision("fp32"), 0)
    timer = step_timer()
    trainer.add_callback(timer)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {**timer.summary(seconds, trainer.state.global_step), "train_loss": round(output.training_loss, 4),
            "forward_calls": counter.calls, "forward_rows": counter.rows,
            "heldout_accuracy": heldout_accuracy(trainer.model, tokenizer, heldout, train_cfg.max_length)}


def train_trl(model_dir, pair_groups, heldout, train_cfg, work: Path) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from align.models import pick_precision
    from align.training import trainer_args

    model, tokenizer = fresh_classifier(model_dir)
    counter = RowCounter(model)
    rows = [{"prompt": g.prompt, "chosen": [{"role": "assistant", "content": g.responses[b]}],
             "rejected": [{"role": "assistant", "content": g.responses[w]}]} for g in pair_groups for b, w in g.pairs]
    args = trainer_args(RewardConfig, train_cfg, work / "ckpt", pick_precision("fp32"), 0,
                        max_length=train_cfg.max_length, dataset_num_proc=None, disable_dropout=True)
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(rows))
    timer = step_timer()
    trainer.add_callback(timer)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {**timer.summary(seconds, trainer.state.global_step), "train_loss": round(output.training_loss, 4),
            "forward_calls": counter.calls, "forward_rows": counter.rows,
            "heldout_accuracy": heldout_accuracy(trainer.model, tokenizer, heldout, train_cfg.max_length)}


# --------------------------------------------------------------------------- pairwise vs Plackett–Luce


def make_tied_rankings(n_prompts: int, k: int, levels: int, seed: int) -> list[dict]:
    """K responses with 0..levels-1 positive words drawn with replacement: rankings with tie groups."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        counts = [rng.randrange(levels) for _ in range(k)]
        responses = [response(rng, c) for c in counts]
        ranking = [[j for j in range(k) if counts[j] == c] for c in sorted(set(counts), reverse=True)]
        rows.append({"prompt": f"Describe scene number {i} in a few words.", "responses": responses,
                     "ranking": ranking})
    return rows


def train_with_loss(model_dir, groups, heldout, train_cfg, work: Path, loss: str) -> dict:
    """The reward stage's Trainer with `loss` ("pairwise" | "plackett_luce"); held-out accuracy and time."""
    from align.models import pick_precision
    from align.stages.reward import build_trainer

    model, tokenizer = fresh_classifier(model_dir)
    trainer = build_trainer(model, tokenizer, groups, train_cfg, work / "ckpt", pick_precision("fp32"), 0, loss=loss)
    timer = step_timer()
    trainer.add_callback(timer)
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {**timer.summary(seconds, trainer.state.global_step), "train_loss": round(output.training_loss, 4),
            "heldout_accuracy": heldout_accuracy(trainer.model, tokenizer, heldout, train_cfg.max_length)}


def time_loss_alone(k: int = 8, prompts: int = 4, repeats: int = 300) -> dict:
    """Microseconds per forward + backward of each loss alone on one batch (4 prompts, K = 8, no ties)."""
    from align.reward_model import plackett_luce_loss, ranking_loss

    better, worse, pair_prompt = [], [], []
    for b in range(prompts):
        for i in range(k):
            for j in range(i + 1, k):
                better.append(b * k + i)
                worse.append(b * k + j)
                pair_prompt.append(b)
    args = torch.tensor(better), torch.tensor(worse), torch.tensor(pair_prompt)
    out = {}
    for name, fn in (("pairwise", ranking_loss), ("plackett_luce", plackett_luce_loss)):
        times = []
        for _ in range(5):
            rewards = torch.randn(prompts * k, requires_grad=True)
            started = time.perf_counter()
            for _ in range(repeats):
                fn(rewards, *args).backward()
            times.append((time.perf_counter() - started) / repeats * 1e6)
        out[name] = round(min(times), 1)
    return out


def bench_losses(model_dir: str, work: Path, common: dict, n_train: int, seeds: int) -> dict:
    """Pairwise vs Plackett–Luce on the same rankings, init, batches and steps, for `seeds` data seeds."""
    from align.config import TrainConfig

    cases = {
        "k4_no_ties": lambda n, seed: make_rankings(n, 4, seed),
        "k8_tied_4_levels": lambda n, seed: make_tied_rankings(n, 8, 4, seed),
    }
    cfg = TrainConfig(epochs=2, batch_size=4, **common)
    out: dict = {"loss_alone_us": time_loss_alone()}
    for case, make in cases.items():
        out[case] = {"pairwise": [], "plackett_luce": []}
        for seed in range(seeds):
            train, held = to_groups(make(n_train, 100 + seed)), to_groups(make(96, 200 + seed))
            for loss in ("pairwise", "plackett_luce"):  # alternated, so load drifts hit both alike
                out[case][loss].append(train_with_loss(model_dir, train, held, cfg, work / f"{case}-{seed}-{loss}", loss))
        out[case]["pairs_per_prompt"] = round(statistics.mean(len(g.pairs) for g in train), 2)
    return out


def render_losses(r: dict) -> str:
    m = r["meta"]
    lines = [
        "# Reward loss: pairwise (InstructGPT) vs listwise Plackett–Luce", "",
        f"Model: {m['model']}; torch {m['torch']}, transformers {m['transformers']}; CPU ({m['machine']}, "
        f"{m['cpu_count']} cores shared with other jobs; 1-min load {m['load_average_1min'][0]} at start, "
        f"{m['load_average_1min'][1]} at end), torch threads = {m['threads']} per process. Each row: the reward "
        f"stage's Trainer, same init, data, batches (4 prompts) and steps (2 epochs, lr 5e-4 constant, max_length "
        f"96); {m['train_prompts']} train / 96 held-out prompts per data seed, {m['seeds']} data seeds. Held-out "
        "accuracy: fraction of held-out (better, worse) pairs ordered correctly (tied pairs are not scored). "
        "Produced by `benchmarks/bench_reward.py --losses`.", "",
        "| rankings | loss | held-out accuracy, mean (per seed) | train s, mean | median step s |",
        "|---|---|---|---|---|",
    ]
    labels = {"k4_no_ties": "K = 4, no ties", "k8_tied_4_levels": "K = 8, 4 levels (ties)"}
    for case, label in labels.items():
        for loss in ("pairwise", "plackett_luce"):
            runs = r["losses"][case][loss]
            acc = [x["heldout_accuracy"] for x in runs]
            lines.append(f"| {label} ({r['losses'][case]['pairs_per_prompt']} pairs/prompt) | {loss} | "
                         f"{statistics.mean(acc):.3f} ({', '.join(f'{a:.3f}' for a in acc)}) | "
                         f"{statistics.mean(x['train_seconds'] for x in runs):.1f} | "
                         f"{statistics.mean(x['median_step_seconds'] for x in runs):.3f} |")
    alone = r["losses"]["loss_alone_us"]
    lines += ["", f"The loss itself (forward + backward on one batch of 4 prompts, K = 8, 28 pairs each): pairwise "
              f"{alone['pairwise']} µs, Plackett–Luce {alone['plackett_luce']} µs per step, against seconds per step "
              "for the model: both losses cost the same forward and backward passes, so differences in the time "
              "columns are load from other jobs on the shared machine, not the loss."]
    return "\n".join(lines) + "\n"


def main_losses(args) -> None:
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("ALIGN_CACHE", str(Path(tempfile.gettempdir()) / "align-bench-cache"))
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-reward-losses-"))
    try:
        model_dir = build_model_dir(work)
        n_params = sum(p.numel() for p in fresh_classifier(model_dir)[0].parameters())
        common = {"lr": 5e-4, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 96,
                  "logging_steps": 1000, "save_steps": 100000, "report_to": ["none"]}
        losses = bench_losses(model_dir, work, common, args.loss_prompts, args.seeds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "model": f"LlamaForSequenceClassification 4 layers x 256, {n_params / 1e6:.2f}M params, fp32, full FT",
            "train_prompts": args.loss_prompts, "seeds": args.seeds}
    results = {"meta": meta, "losses": losses}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reward_losses.json").write_text(json.dumps(results, indent=2))
    (args.out / "reward_losses.md").write_text(render_losses(results))
    print(render_losses(results))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared 2-core box)")
    parser.add_argument("--pairs", type=int, default=128, help="K=2 training prompts")
    parser.add_argument("--rankings", type=int, default=96, help="K=4 training prompts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--losses", action="store_true", help="compare the pairwise and Plackett-Luce losses instead")
    parser.add_argument("--loss-prompts", type=int, default=48, help="--losses: training prompts per data seed")
    parser.add_argument("--seeds", type=int, default=3, help="--losses: data seeds")
    args = parser.parse_args()
    if args.losses:
        return main_losses(args)

    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    from align.config import TrainConfig

    hf_logging.set_verbosity_error()
    os.environ.setdefault("ALIGN_CACHE", str(Path(tempfile.gettempdir()) / "align-bench-cache"))
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    try:
        model_dir = build_model_dir(work)
        n_params = sum(p.numel() for p in fresh_classifier(model_dir)[0].parameters())
        common = {"lr": 5e-4, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 96,
                  "logging_steps": 1000, "save_steps": 100000, "report_to": ["none"]}

        # 1. K = 2: the same pairs, batch 8 pairs (16 rows) for both, 2 epochs
        pairs_train, pairs_held = to_groups(make_rankings(args.pairs, 2, 1)), to_groups(make_rankings(96, 2, 2))
        cfg2 = TrainConfig(epochs=2, batch_size=8, **common)
        # alternate the two twice and keep each one's faster run: other jobs on the machine add noise
        runs: dict[str, list[dict]] = {"align": [], "trl": []}
        for rep in range(2):
            runs["align"].append(train_align(model_dir, pairs_train, pairs_held, cfg2, work / f"a2-{rep}"))
            runs["trl"].append(train_trl(model_dir, pairs_train, pairs_held, cfg2, work / f"t2-{rep}"))
        k2 = {name: {**min(rs, key=lambda x: x["median_step_seconds"]),
                     "steps_per_second_runs": [x["steps_per_second"] for x in rs]} for name, rs in runs.items()}

        # 2. K = 4: per prompt (batch 4 prompts = 16 rows) vs 6 expanded pairs (batch 8 pairs = 16 rows), 1 epoch
        rank_train, rank_held = to_groups(make_rankings(args.rankings, 4, 3)), to_groups(make_rankings(48, 4, 4))
        expanded = expand_to_pair_groups(rank_train)
        k4 = {
            "per_prompt": train_align(model_dir, rank_train, rank_held, TrainConfig(epochs=1, batch_size=4, **common),
                                      work / "a4"),
            "per_prompt_3_epochs": train_align(model_dir, rank_train, rank_held,
                                               TrainConfig(epochs=3, batch_size=4, **common), work / "a4x3"),
            "expanded_align": train_align(model_dir, expanded, rank_held, TrainConfig(epochs=1, batch_size=8, **common),
                                          work / "e4"),
            "expanded_trl": train_trl(model_dir, expanded, rank_held, TrainConfig(epochs=1, batch_size=8, **common),
                                      work / "t4"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "model": f"LlamaForSequenceClassification 4 layers x 256, {n_params / 1e6:.2f}M params, fp32, full FT",
            "k2_train_prompts": len(pairs_train), "k2_heldout_prompts": len(pairs_held),
            "k4_train_prompts": len(rank_train), "k4_heldout_prompts": len(rank_held),
            "k4_responses": sum(len(g.responses) for g in rank_train), "k4_pairs": len(expanded)}
    results = {"meta": meta, "k2_pairs": k2, "k4_rankings": k4}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reward.json").write_text(json.dumps(results, indent=2))
    (args.out / "reward.md").write_text(render(results))
    print(render(results))


def render(r: dict) -> str:
    m, k2, k4 = r["meta"], r["k2_pairs"], r["k4_rankings"]
    lines = [
        "# Reward-model training benchmark", "",
        f"Model: {m['model']}; torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}; "
        f"CPU ({m['machine']}, {m['cpu_count']} cores shared with other jobs; 1-min load average "
        f"{m['load_average_1min'][0]} at start, {m['load_average_1min'][1]} at end), torch threads = {m['threads']}. "
        "Same init, data, lr (5e-4 constant), max_length 96 for every row. Held-out accuracy: fraction of held-out "
        "pairs ordered correctly, scored by the same code for every model. Produced by `benchmarks/bench_reward.py`.",
        "",
        f"## K = 2 pairs ({m['k2_train_prompts']} train / {m['k2_heldout_prompts']} held-out prompts, "
        "batch 8 pairs = 16 rows, 2 epochs)", "",
        "| trainer | steps | steps/s (median step; best of 2 runs) | steps/s of each run | total train s | train loss "
        "| forward rows | held-out accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (("align", "align (Trainer + per-prompt collator)"), ("trl", "TRL RewardTrainer")):
        x = k2[name]
        lines.append(f"| {label} | {x['steps']} | {x['steps_per_second']} | {x['steps_per_second_runs']} | "
                     f"{x['train_seconds']} | "
                     f"{x['train_loss']} | {x['forward_rows']} | {x['heldout_accuracy']:.3f} |")
    lines += [
        "", f"## K = 4 rankings ({m['k4_train_prompts']} train prompts = {m['k4_responses']} responses = "
        f"{m['k4_pairs']} pairs; {m['k4_heldout_prompts']} held-out prompts; 1 epoch, 16 rows per step)", "",
        "| batching | steps | forward rows | wall s (total) | wall s (steps x median step) | held-out accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("per_prompt", "align: one element per prompt (4 rows, 6 pairs)"),
                        ("per_prompt_3_epochs", "align: one element per prompt, 3 epochs (= rows of 1 expanded epoch)"),
                        ("expanded_align", "align Trainer on 6 expanded pairs (12 rows)"),
                        ("expanded_trl", "TRL RewardTrainer on 6 expanded pairs")):
        x = k4[name]
        lines.append(f"| {label} | {x['steps']} | {x['forward_rows']} | {x['train_seconds']} | "
                     f"{x['steps'] * x['median_step_seconds']:.1f} | {x['heldout_accuracy']:.3f} |")
    per, exp = k4["per_prompt"], k4["expanded_align"]
    per_s, exp_s = (x["steps"] * x["median_step_seconds"] for x in (per, exp))
    lines += ["", f"Per epoch, per-prompt batching forwards {exp['forward_rows'] / per['forward_rows']:.1f}x fewer rows "
              f"and takes {exp_s / per_s:.1f}x less wall time (steps x median step) than the expanded pairs: "
              "each response is scored once instead of K−1 = 3 times, and every pair of the prompt still gets its "
              "gradient. At equal forward rows (3 per-prompt epochs vs 1 expanded epoch) compare the accuracy "
              "column; one per-prompt step also uses 6 pairs per prompt from 4 rows.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
