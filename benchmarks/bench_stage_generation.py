"""Generation speed of the rank and eval stages with a LoRA policy: unmerged adapter vs merged, one run.

The rank stage samples K responses per prompt from the SFT policy and the eval stage writes greedy
responses for every policy; both used to run the PEFT model as loaded (base + LoRA side path at every
decoding step). They now fold the adapter into the base weights while generating (align.lora_merge,
weights put back exactly after). Arms, each on the same prompts with the same seeds:

  unmerged adapter        the PeftModel as loaded (the stages before)
  merged (lora_merged)    what the stages do now
  plain merged copy       merge_and_unload() into a plain transformers model: the obvious alternative,
                          and the upper bound (no peft wrapper at all)

Workloads: rank (the quickstart's: 32 prompts x K 4 = 128 rows per generate() call, temperature 1.0,
48 new tokens) and eval (greedy, 75 prompts in one batch, 64 new tokens), prompts from the focus gold set.
Also: whether greedy responses are token-identical merged vs unmerged (fp32: they should be, up to
float-rounding ties). One intra-op thread; every duration is the process's CPU time (time.process_time),
so other work on the machine does not change the numbers.

    python benchmarks/bench_stage_generation.py                   # ~10 CPU-minutes
    python benchmarks/bench_stage_generation.py --adapter runs/quickstart/sft/model

Writes benchmarks/results/stage_generation.md and .json. Without --adapter the policy is a random small
LoRA (r 16 on the top 8 layers, as recipes/quickstart.yaml's SFT) built by bench_rollout.py's assets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

from _common import RESULTS, machine, write_results

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "rank (32 prompts x K 4, T 1.0, 48 tokens)": dict(prompts=32, k=4, temperature=1.0, max_new_tokens=48),
    "eval (75 prompts greedy, 64 tokens)": dict(prompts=75, k=1, temperature=0.0, max_new_tokens=64),
}


def timed_generate(model, context, tokenizer, conversations: list, workload: dict, seed: int) -> tuple[list, float]:
    """One generate_chat call of the workload inside `context`; its outputs and CPU seconds."""
    from align.generation import generate_chat

    start = time.process_time()
    with context():
        out = generate_chat(model, tokenizer, conversations, max_new_tokens=workload["max_new_tokens"],
                            temperature=workload["temperature"], num_return_sequences=workload["k"],
                            batch_size=len(conversations), seed=seed, progress=False)
    return out, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="A LoRA policy adapter dir (default: a random one on SmolLM2-135M).")
    parser.add_argument("--rounds", type=int, default=1, help="Timed repeats per arm (after one warm-up call).")
    parser.add_argument("--render", action="store_true", help="Only rewrite the .md from the .json (and --note).")
    parser.add_argument("--note", action="append", default=[], help="A line for the Notes section (repeatable).")
    args = parser.parse_args()
    if args.render:
        res = json.loads((RESULTS / "stage_generation.json").read_text())
        if args.note:
            res["notes"] = args.note
        write_results("stage_generation", res, render(res), echo=False)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_before = os.getloadavg()[0]
    import torch
    import transformers

    torch.set_num_threads(1)
    from align.eval.gold import load_prompt_set
    from align.lora_merge import lora_merge_blocker, lora_merged
    from align.models import ModelConfig, load_causal_lm, load_tokenizer

    if args.adapter:
        adapter, described = args.adapter, "a trained adapter (--adapter)"
    else:
        from bench_rollout import BASE, build_assets

        from align.models import resolve_model_ref

        adapter = build_assets(resolve_model_ref(BASE))["sft"]
        described = "a random LoRA r 16 on the top 8 of 30 layers (bench_rollout.py's policy)"
    model = load_causal_lm(ModelConfig(name=adapter)).eval()
    tokenizer = load_tokenizer(adapter)
    assert lora_merge_blocker(model) is None, lora_merge_blocker(model)
    plain = load_causal_lm(ModelConfig(name=adapter)).merge_and_unload().eval()
    prompts = [[{"role": "user", "content": p.prompt}] for p in load_prompt_set("gold:focus:heldout", 75)]

    arms = {
        "unmerged adapter (before)": (model, contextlib.nullcontext),
        "merged, align.lora_merge (now)": (model, lambda: lora_merged(model)),
        "plain merged copy (merge_and_unload)": (plain, contextlib.nullcontext),
    }
    for net, context in arms.values():  # warm-up: one-time costs stay out of every arm's numbers
        timed_generate(net, context, tokenizer, prompts[:4], {"max_new_tokens": 8, "temperature": 1.0, "k": 2}, 0)
    rows, greedy = [], {}
    for workload, w in WORKLOADS.items():
        batch = prompts[: w["prompts"]]
        for arm, (net, context) in arms.items():
            seconds, tokens = 0.0, 0
            for r in range(args.rounds):
                out, spent = timed_generate(net, context, tokenizer, batch, w, seed=1 + r)
                seconds += spent
                flat = [g for item in out for g in (item if isinstance(item, list) else [item])]
                tokens += sum(g.tokens for g in flat)
            if w["temperature"] == 0.0:
                greedy[arm] = [str(g) for g in flat]
            rows.append({"workload": workload, "arm": arm, "tokens": tokens, "seconds": round(seconds, 2),
                         "tokens_per_s": round(tokens / seconds, 1)})
            print(f"{workload} | {arm}: {tokens} tokens in {seconds:.1f} CPU s", flush=True)
    for workload in WORKLOADS:
        group = [r for r in rows if r["workload"] == workload]
        for r in group:
            r["vs_unmerged"] = round(r["tokens_per_s"] / group[0]["tokens_per_s"], 3)
    names = list(arms)
    same = sum(a == b for a, b in zip(greedy[names[0]], greedy[names[1]]))
    result = {
        "load_before": round(load_before, 1), "notes": args.note, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "env": f"torch {torch.__version__}, transformers {transformers.__version__}", "policy": described,
        "rows": rows, "greedy_identical": [same, len(greedy[names[0]])],
    }
    write_results("stage_generation", result, render(result), echo=False)


def render(res: dict) -> str:
    lines = [
        "# Rank and eval generation with a LoRA policy: unmerged vs merged (CPU)",
        "",
        f"Measured {res['date']} by `python benchmarks/bench_stage_generation.py` on {res['machine']}, {res['env']}, "
        f"1 intra-op thread, load average {res.get('load_before', '?')} before the run; seconds are the process's CPU "
        "seconds (time.process_time). Model: SmolLM2-135M-Instruct "
        f"(fp32) with {res['policy']}. Same prompts (focus gold set) and seeds in every arm.",
        "",
        "| workload | arm | response tokens | CPU seconds | tokens/s | vs unmerged |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(f"| {r['workload']} | {r['arm']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} | "
                     f"{r['vs_unmerged']:.2f}x |")
    same, total = res["greedy_identical"]
    lines += ["", f"Greedy eval responses identical merged vs unmerged: {same} of {total} (fp32; a difference would be "
              "a float-rounding tie between two tokens).", ""]
    if res.get("notes"):
        lines += ["## Notes", "", *res["notes"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
