"""Benchmark: SimilarityPool vs the straightforward rouge_score loop for Self-Instruct's ROUGE-L filter.

The reference is what yizhongw/self-instruct does per candidate: ``RougeScorer(['rougeL']).score`` against
every instruction in the pool, keep the candidate if the maximum F-measure is <= 0.7. Both start from our
seed instructions and see the same deterministic stream of synthetic instructions (templated from varied
verbs, objects, topics and modifiers, so near-duplicates really occur).

Timing:
- ours: always the full run over N candidates (median of 3 runs);
- reference: the full run when N <= --full-ref-max (measured); above that, every k-th candidate is
  scored against the exact pool our run had at that moment (measured), and the total is extrapolated
  with a ratio estimator: sum(sampled times) / sum(sampled pool sizes) * sum(all pool sizes).
Agreement: keep/drop decisions compared on every candidate the reference ran on; on the same
candidates, our exact max score (``max_similarity``) is compared with the reference's max for equality.

    python benchmarks/bench_rouge_filter.py --sizes 1000 5000 10000
    python benchmarks/bench_rouge_filter.py --quick      # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from _common import RESULTS, write_results
from rouge_score import rouge_scorer

from align.data_gen.rouge_filter import DEFAULT_THRESHOLD, SimilarityPool
from align.data_gen.seeds import load_seed_tasks

# ---------------------------------------------------------------------------------------------------------
# Synthetic instructions
# ---------------------------------------------------------------------------------------------------------

WRITE_VERBS = ["Write", "Compose", "Draft", "Create", "Generate", "Produce", "Craft", "Prepare"]
WRITE_OBJECTS = [
    "a short poem", "a blog post", "a persuasive essay", "a product description", "a news headline",
    "a tweet", "a short story", "a limerick", "a speech", "a cover letter", "a haiku", "a marketing email",
    "a dialogue between two friends", "a lesson plan", "a FAQ section", "a song chorus", "a movie pitch",
    "a restaurant review", "a motivational message", "a press release", "a riddle", "a thank-you note",
    "an opening paragraph", "a social media caption", "a one-paragraph summary", "a job advertisement",
]
TOPICS = [
    "climate change", "remote work", "the history of tea", "electric cars", "urban gardening", "time management",
    "the ocean", "artificial intelligence", "learning a new language", "healthy breakfast habits",
    "a rainy afternoon", "friendship", "the first day of school", "saving money", "space exploration",
    "recycling", "public libraries", "a small coffee shop", "mountain hiking", "online privacy", "chess",
    "the Roman Empire", "volcanoes", "honeybees", "jazz music", "a lost umbrella", "winter holidays",
    "meditation", "video game design", "the water cycle", "renewable energy", "a new smartphone",
    "street food in Bangkok", "marathon training", "the printing press", "houseplants", "cybersecurity",
    "a village bakery", "black holes", "the importance of sleep", "minimalism", "a robot learning to paint",
    "public transportation", "dinosaurs", "the stock market", "a haunted lighthouse", "vegan cooking",
    "ancient Egypt", "social media addiction", "a city at night", "teamwork", "bird migration",
    "the invention of the telephone", "desert survival", "solar panels", "a job interview", "coral reefs",
    "board games", "the Olympic Games", "a forgotten birthday", "quantum computing", "kindness",
]
AUDIENCES = [
    "for children", "for a ten-year-old", "for busy parents", "for high school students", "for beginners",
    "for a company newsletter", "for retirees", "for software engineers", "for a local newspaper",
    "for first-time travelers", "for small business owners", "",
]
MODIFIERS = [
    "in under 100 words", "using a humorous tone", "in a formal style", "with three concrete examples",
    "in the style of a fairy tale", "using simple words", "in exactly five sentences", "with a surprising ending",
    "from the point of view of a cat", "without using the letter e", "that rhymes", "in the second person", "",
    "", "",
]
QA_TEMPLATES = [
    "What are {n} practical ways to {goal}?", "How can I {goal} {mod}?", "Give me {n} tips to {goal}.",
    "Suggest {n} ideas to {goal} {aud}.", "List {n} mistakes people make when they try to {goal}.",
    "Explain why it is hard to {goal} and how to get better at it.",
]
GOALS = [
    "save money on groceries", "sleep better", "learn to play the guitar", "stay focused while studying",
    "reduce food waste", "prepare for a job interview", "make new friends in a new city", "start running",
    "keep houseplants alive", "write a clear email", "speak in public with confidence", "organize a small office",
    "improve my handwriting", "plan a road trip", "cook healthy meals quickly", "learn a programming language",
    "reduce screen time", "take better photos with a phone", "read more books", "negotiate a higher salary",
    "teach a child to swim", "grow tomatoes on a balcony", "manage stress at work", "remember names",
]
NUMBERS = ["three", "four", "five", "six", "seven", "ten", "a few", "some"]
CLASSIFY = [
    ("Classify the sentiment of the {thing} as positive, negative, or neutral.", ["review", "tweet", "comment", "headline", "customer message", "movie review"]),
    ("Decide whether the {thing} is spam or not spam.", ["email", "text message", "comment", "social media post"]),
    ("Label the {thing} as formal or informal.", ["sentence", "email", "paragraph", "message", "letter"]),
    ("Identify whether the {thing} is a fact or an opinion.", ["statement", "sentence", "claim", "tweet"]),
    ("Tell me if the {thing} is grammatically correct.", ["sentence", "paragraph", "question", "phrase"]),
]
COMPARE = [
    ("the difference between {a} and {b}", [("weather", "climate"), ("a virus", "a bacterium"), ("TCP", "UDP"),
     ("stocks", "bonds"), ("a simile", "a metaphor"), ("mitosis", "meiosis"), ("RAM", "storage"),
     ("an acid", "a base"), ("a democracy", "a monarchy"), ("speed", "velocity"), ("a lake", "a pond")]),
]
CODE = [
    "Write a {lang} function that {task}.", "Implement {task_ing} in {lang}.", "Show how to {task_inf} in {lang}.",
    "Fix the bug in this {lang} code that should {task_inf}.",
]
LANGS = ["Python", "JavaScript", "Java", "C++", "Go", "Rust", "SQL", "TypeScript"]
CODE_TASKS = [
    ("reverses a string", "reversing a string", "reverse a string"),
    ("checks whether a number is prime", "a primality check", "check whether a number is prime"),
    ("sorts a list of names alphabetically", "alphabetical sorting of names", "sort a list of names"),
    ("counts the vowels in a sentence", "a vowel counter", "count the vowels in a sentence"),
    ("merges two sorted lists", "merging two sorted lists", "merge two sorted lists"),
    ("finds the largest number in an array", "a maximum search", "find the largest number in an array"),
    ("removes duplicates from a list", "duplicate removal", "remove duplicates from a list"),
    ("computes the factorial of n", "a factorial function", "compute the factorial of n"),
    ("parses a date string", "date parsing", "parse a date string"),
    ("validates an email address", "email validation", "validate an email address"),
]


def _zipf_choice(rng: random.Random, items: list, s: float = 1.1):
    """Skewed pick: popular items recur, as topics do in real teacher output."""
    weights = [1.0 / (i + 1) ** s for i in range(len(items))]
    return rng.choices(items, weights=weights, k=1)[0]


ASPECTS = [
    "", "", "", "the history of", "the future of", "the science behind", "common myths about", "the benefits of",
    "the risks of", "the economics of", "recent trends in", "the ethics of", "a beginner's guide to",
]
PLACES = [
    "", "", "", "", "in Lisbon", "in rural Kenya", "in Tokyo", "in a small town", "in the Arctic", "on Mars",
    "in medieval Europe", "in a hospital", "at a music festival", "in a classroom", "in the year 2200",
]
EXTRA_TEMPLATES = [
    "Describe {aspect} {base} {place} in {n} sentences.",
    "Summarize the following article about {topic} {aud}.",
    "Rewrite this paragraph about {topic} so that it sounds {tone}.",
    "Translate the following sentence about {topic} into {language}.",
    "Extract the names of all the people mentioned in this story about {topic}.",
    "Come up with {n} questions a journalist might ask an expert on {topic}.",
    "Compare {topic} and {topic2} in a short table of pros and cons.",
    "If you could change one thing about {topic}, what would it be and why?",
    "Argue for and against {aspect} {base} {place}.",
    "Create a {n}-day plan for someone who wants to learn about {topic}.",
    "Give a one-sentence definition of {topic} that a {age}-year-old would understand.",
    "Invent a name and a slogan for a startup working on {topic} {place}.",
]
FOLLOW_UPS = [
    "Mention {topic2} at least once.", "End with a question for the reader.", "Include {n} statistics.",
    "Avoid jargon.", "Use a metaphor involving {topic2}.", "Keep it light-hearted.", "Add a catchy title.",
    "Address the reader directly.", "Include a short quote from an imaginary expert.",
]
TONES = ["more polite", "more confident", "friendlier", "more concise", "more formal", "less technical", "funnier"]
LANGUAGES = ["French", "Spanish", "German", "Japanese", "Portuguese", "Italian", "Korean", "Dutch"]


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    """A deterministic stream of n instruction-like strings with realistic near-duplicate rates."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        base = _zipf_choice(rng, TOPICS, 0.3)
        topic = f"{rng.choice(ASPECTS)} {base} {rng.choice(PLACES)}"
        if kind < 0.30:
            text = f"{rng.choice(WRITE_VERBS)} {_zipf_choice(rng, WRITE_OBJECTS, 0.5)} about {topic}"
            extra = " ".join(x for x in (rng.choice(AUDIENCES), rng.choice(MODIFIERS)) if x)
            text = f"{text} {extra}".strip() + "."
            if rng.random() < 0.3:
                text += f" {rng.choice(FOLLOW_UPS).format(topic2=rng.choice(TOPICS), n=rng.choice(NUMBERS))}"
        elif kind < 0.45:
            text = rng.choice(QA_TEMPLATES).format(
                n=rng.choice(NUMBERS), goal=_zipf_choice(rng, GOALS, 0.7), mod=rng.choice(MODIFIERS), aud=rng.choice(AUDIENCES)
            )
        elif kind < 0.53:
            template, things = rng.choice(CLASSIFY)
            text = template.format(thing=rng.choice(things))
            if rng.random() < 0.6:
                text += f" The text is about {topic}."
        elif kind < 0.60:
            template, pairs = COMPARE[0]
            a, b = rng.choice(pairs)
            lead = rng.choice(["Explain", "Describe", "Summarize", "What is", "Tell me"])
            text = f"{lead} {template.format(a=a, b=b)} {rng.choice(AUDIENCES)} {rng.choice(MODIFIERS)}".strip()
            text += "?" if lead == "What is" else "."
        elif kind < 0.70:
            task, task_ing, task_inf = rng.choice(CODE_TASKS)
            text = rng.choice(CODE).format(lang=rng.choice(LANGS), task=task, task_ing=task_ing, task_inf=task_inf)
        else:
            text = rng.choice(EXTRA_TEMPLATES).format(
                aspect=rng.choice(ASPECTS), topic=topic, base=base, topic2=rng.choice(TOPICS), place=rng.choice(PLACES),
                n=rng.choice(["two", "three", "five", "seven"]), aud=rng.choice(AUDIENCES), tone=rng.choice(TONES),
                language=rng.choice(LANGUAGES), age=rng.choice(["five", "seven", "ten", "twelve"]),
            )
        text = " ".join(text.split()).replace(" ?", "?").replace(" .", ".").replace(" ,", ",")
        out.append(text[0].upper() + text[1:])
    return out


# ---------------------------------------------------------------------------------------------------------
# The two filters
# ---------------------------------------------------------------------------------------------------------


def run_ours(seed_instructions: list[str], candidates: list[str]) -> tuple[float, list[bool], list[int]]:
    """Time our filter over all candidates; return (seconds, kept flags, pool size before each candidate)."""
    start = time.perf_counter()
    pool = SimilarityPool(seed_instructions)
    kept, pool_sizes = [], []
    for cand in candidates:
        pool_sizes.append(len(pool))
        keep = not pool.is_near_duplicate(cand)
        if keep:
            pool.add(cand)
        kept.append(keep)
    return time.perf_counter() - start, kept, pool_sizes


def reference_max(scorer: rouge_scorer.RougeScorer, pool: list[str], cand: str) -> float:
    """The straightforward loop: score against every pool member (as self-instruct does), take the max."""
    return max((scorer.score(p, cand)["rougeL"].fmeasure for p in pool), default=0.0)


def reference_max_pretokenized(scorer: rouge_scorer.RougeScorer, pool_tokens: list[list[str]], cand: str) -> float:
    """stanford_alpaca's variant: pool tokens cached, candidate tokenized once, ``_score_lcs`` per member."""
    tokens = scorer._tokenizer.tokenize(cand)
    return max((rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool_tokens), default=0.0)


def run_reference_full(seed_instructions: list[str], candidates: list[str]) -> tuple[list[float], list[bool], list[float]]:
    """The whole reference run with its own pool; returns (seconds per candidate, kept flags, max scores)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = list(seed_instructions)
    kept, scores, times = [], [], []
    for cand in candidates:
        start = time.perf_counter()
        score = reference_max(scorer, pool, cand)
        keep = not score > DEFAULT_THRESHOLD
        if keep:
            pool.append(cand)
        times.append(time.perf_counter() - start)
        kept.append(keep)
        scores.append(score)
    return times, kept, scores


def run_pretokenized_full(seed_instructions: list[str], candidates: list[str]) -> tuple[float, list[bool]]:
    """The whole stanford_alpaca-style run with its own pool; returns (seconds, kept flags)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    pool_tokens = [scorer._tokenizer.tokenize(t) for t in seed_instructions]
    kept = []
    for cand in candidates:
        keep = not reference_max_pretokenized(scorer, pool_tokens, cand) > DEFAULT_THRESHOLD
        if keep:
            pool_tokens.append(scorer._tokenizer.tokenize(cand))
        kept.append(keep)
    return time.perf_counter() - start, kept


def check_scores(seed_instructions: list[str], candidates: list[str], kept: list[bool], indices: set[int],
                 ref_scores: dict[int, float]) -> int:
    """How many sampled candidates get a max_similarity score bit-identical to the reference's (untimed)."""
    pool = SimilarityPool(seed_instructions)
    equal = 0
    for i, cand in enumerate(candidates):
        if i in indices and pool.max_similarity(cand)[0] == ref_scores[i]:
            equal += 1
        if kept[i]:
            pool.add(cand)
    return equal


def _ratio_estimate(times: list[float], pools: list[int], all_pools: list[int]) -> float:
    """Total time over all candidates from sampled ones: time per pool member x total pool members."""
    return sum(times) / sum(pools) * sum(all_pools)


def bench_size(seed_instructions: list[str], stream: list[str], n: int, full_ref_max: int, samples: int) -> dict:
    candidates = stream[:n]
    runs = [run_ours(seed_instructions, candidates) for _ in range(3)]
    ours_s = sorted(r[0] for r in runs)[1]  # median of 3: sub-second timings are noisy
    _, kept, pool_sizes = runs[0]
    result = {
        "candidates": n,
        "kept": sum(kept),
        "dropped": n - sum(kept),
        "final_pool": len(seed_instructions) + sum(kept),
        "ours_s": round(ours_s, 3),
    }
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    step = max(1, n // samples)
    if n <= full_ref_max:
        times, ref_kept, scores = run_reference_full(seed_instructions, candidates)
        pre_s, pre_kept = run_pretokenized_full(seed_instructions, candidates)
        indices = list(range(n))
        agree = sum(a == b for a, b in zip(ref_kept, kept, strict=True))
        agree_pre = sum(a == b for a, b in zip(pre_kept, kept, strict=True))
        ref_scores = dict(enumerate(scores))
        sample = list(range(0, n, step))
        result.update(
            reference_s=round(sum(times), 3),
            reference_mode="measured (full run)",
            pretokenized_s=round(pre_s, 3),
            # Calibrates the extrapolation used for larger N: the same estimator on every step-th candidate.
            estimator_check_s=round(_ratio_estimate([times[i] for i in sample], [pool_sizes[i] for i in sample], pool_sizes), 1),
            estimator_check_step=step,
        )
    else:
        indices = list(range(0, n, step))
        kept_texts = [c for c, k in zip(candidates, kept, strict=True) if k]
        kept_tokens = [scorer._tokenizer.tokenize(c) for c in kept_texts]
        seed_tokens = [scorer._tokenizer.tokenize(c) for c in seed_instructions]
        kept_before = [size - len(seed_instructions) for size in pool_sizes]
        times, pre_times, pools, agree, agree_pre, ref_scores = [], [], [], 0, 0, {}
        for i in indices:
            pool = seed_instructions + kept_texts[: kept_before[i]]  # the exact pool our run had at step i
            pool_tokens = seed_tokens + kept_tokens[: kept_before[i]]
            start = time.perf_counter()
            score = reference_max(scorer, pool, candidates[i])
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            score_pre = reference_max_pretokenized(scorer, pool_tokens, candidates[i])
            pre_times.append(time.perf_counter() - start)
            pools.append(len(pool))
            ref_scores[i] = score
            agree += (not score > DEFAULT_THRESHOLD) == kept[i]
            agree_pre += (not score_pre > DEFAULT_THRESHOLD) == kept[i]
        result.update(
            reference_s=round(_ratio_estimate(times, pools, pool_sizes), 1),
            reference_mode=f"extrapolated from {len(indices)} sampled candidates (every {step}-th)",
            pretokenized_s=round(_ratio_estimate(pre_times, pools, pool_sizes), 1),
            reference_sampled_s=round(sum(times), 3),
            pretokenized_sampled_s=round(sum(pre_times), 3),
            reference_naive_estimate_s=round(sum(times) / len(indices) * n, 1),
        )
    score_equal = check_scores(seed_instructions, candidates, kept, set(indices), ref_scores)
    result.update(
        speedup=round(result["reference_s"] / ours_s, 1),
        speedup_vs_pretokenized=round(result["pretokenized_s"] / ours_s, 1),
        reference_checked=len(indices),
        decisions_agree=agree,
        decisions_agree_pretokenized=agree_pre,
        agreement=min(agree, agree_pre) / len(indices),
        max_score_identical=score_equal,
    )
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(results: list[dict], meta: dict) -> str:
    lines = [
        "# ROUGE-L near-duplicate filter: SimilarityPool vs rouge_score loop",
        "",
        f"Machine: {meta['machine']}; Python {meta['python']}; rouge_score {meta['rouge_score']}; "
        f"numpy {meta['numpy']}. Single process, one thread.",
        "",
        f"Pool starts with the {meta['seed_instructions']} seed instructions of `data_gen/seed_tasks.jsonl`; "
        f"candidates are the first N of one deterministic synthetic stream (seed {meta['stream_seed']}). "
        f"Threshold {DEFAULT_THRESHOLD}: drop when F > {DEFAULT_THRESHOLD}.",
        "",
        "Reference = `RougeScorer(['rougeL'], use_stemmer=False).score(p, c)` against every pool member, "
        "max F (the self-instruct loop). Ours = `SimilarityPool.is_near_duplicate` + `add` (median of 3 runs).",
        "",
        "| candidates | kept | dropped | ours (s) | reference (s) | speed-up | alpaca-style reference (s) | speed-up | reference timing | decisions agree (ref / alpaca-style) | max score bit-identical |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        checked = r["reference_checked"]
        lines.append(
            f"| {r['candidates']} | {r['kept']} | {r['dropped']} | {r['ours_s']:.3f} | {r['reference_s']} | "
            f"{r['speedup']}x | {r['pretokenized_s']} | {r['speedup_vs_pretokenized']}x | {r['reference_mode']} | "
            f"{r['decisions_agree']}/{checked} / {r['decisions_agree_pretokenized']}/{checked} "
            f"({100 * r['agreement']:.1f}%) | {r['max_score_identical']}/{checked} |"
        )
    lines += [
        "",
        "Ours is always measured over all N candidates. Where the references are extrapolated, each was run "
        "(and timed) on every k-th candidate against the exact pool at that step, and the total is "
        "`sum(sampled times) / sum(sampled pool sizes) * sum(pool sizes over all candidates)`; the speed-ups "
        "in those rows use these estimates. Agreement counts only candidates the references actually ran on.",
        "",
        "The alpaca-style reference is stanford_alpaca's loop: pool tokens cached, the candidate tokenized "
        "once, `rouge_scorer._score_lcs` per member (without its multiprocessing pool).",
    ]
    for r in results:
        if "estimator_check_s" in r:
            lines.append(
                f"- N={r['candidates']} (estimator calibration): the extrapolation formula applied to every "
                f"{r['estimator_check_step']}-th candidate of the measured full run gives {r['estimator_check_s']} s "
                f"vs {r['reference_s']} s measured."
            )
    for r in results:
        if "reference_sampled_s" in r:
            lines.append(
                f"- N={r['candidates']}: measured on the sample: reference {r['reference_sampled_s']} s, "
                f"alpaca-style {r['pretokenized_sampled_s']} s; naive reference estimate (mean time per "
                f"sampled candidate x N) {r['reference_naive_estimate_s']} s."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000], help="Candidate counts.")
    parser.add_argument("--full-ref-max", type=int, default=1000, help="Run the whole reference up to this N.")
    parser.add_argument("--samples", type=int, default=500, help="Reference samples per extrapolated size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic instruction stream.")
    parser.add_argument("--quick", action="store_true", help="Smoke test: sizes 200 and 600, few samples.")
    parser.add_argument("--out-dir", default=None, help="Where to write rouge_filter.{md,json} (default "
                        "benchmarks/results; a temporary folder with --quick).")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.full_ref_max, args.samples = [200, 600], 200, 40
    out_dir = Path(args.out_dir) if args.out_dir else (Path(tempfile.mkdtemp()) if args.quick else RESULTS)

    seed_instructions = [t.instruction for t in load_seed_tasks()]
    stream = synthetic_instructions(max(args.sizes), seed=args.seed)
    meta = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "rouge_score": metadata.version("rouge_score"),
        "numpy": metadata.version("numpy"),
        "seed_instructions": len(seed_instructions),
        "stream_seed": args.seed,
        "full_ref_max": args.full_ref_max,
        "samples": args.samples,
    }
    results = []
    for n in sorted(args.sizes):
        r = bench_size(seed_instructions, stream, n, args.full_ref_max, args.samples)
        print(json.dumps(r), flush=True)
        results.append(r)
    md_path = write_results("rouge_filter", {"meta": meta, "results": results}, render(results, meta), out_dir,
                            echo=False)
    print(f"wrote {md_path} and {md_path.with_suffix('.json')}")
    return 0 if all(r["agreement"] == 1.0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
