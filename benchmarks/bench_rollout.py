"""Rollout speed of the PPO loop on the quickstart model (SmolLM2-135M-Instruct), all in one run.

1. Sampling: tokens/s of the rollout's generate() (policy LoRA merged for sampling, and unmerged as
   before) against plain `model.generate` of a merged copy of the same model: same prompts, batch,
   sampling settings and seeds, so both sides sample the same tokens and the ratio is pure speed.
2. PPO step time at the earlier quickstart's PPO-GAE settings (batch 8, mini-batch 4, 2 epochs, 48 new tokens,
   temperature 0.8, LoRA r=16 on the top 8 layers, a LoRA reward adapter on the shared base):
   - before: merge_for_sampling off, forward_batch_size = mini_batch_size, reuse_frozen_layers off
     (the loop as it was);
   - after: the defaults; after + bf16: rollout.precision bf16; grpo: advantage.estimator grpo, 4 samples per
     query, no value head (same batch of 8 rollouts).
   Phase breakdown from stats.jsonl (generate, reward score, old/ref log-probs, update).
3. bf16 for the no-grad phases: old/ref log-probs of one batch of rollouts under bf16 autocast
   against fp32 (drift) and the time each takes.

The SFT adapter and reward adapter are random (small) LoRA weights on the real base: speed does not
depend on what they learned. One intra-op thread (OMP_NUM_THREADS=1), and every duration is the
process's CPU time (time.process_time, also for the loop's own phase timers): on a shared machine wall
time measures the scheduler, not the code. With one thread, CPU seconds are the wall seconds the same
work takes on an idle core.

    python benchmarks/bench_rollout.py             # ~15 CPU-minutes (one core)
    python benchmarks/bench_rollout.py --only ppo --steps 2 --variants before,after
    python benchmarks/bench_rollout.py --only ppo --variants "before,after,after + bf16 no-grad,grpo"

Writes benchmarks/results/rollout.md and rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import machine, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache" / "bench-rollout"
BASE = "smollm2-135m-instruct"
# the earlier recipes/quickstart.yaml's PPO-GAE settings (and its sft/reward adapters: r 16, alpha 32, top 8 layers)
QUICKSTART = dict(mini_batch_size=4, ppo_epochs=2, lr=1e-4, kl={"init_coef": 0.05},
                  rollout={"batch_size": 8, "temperature": 0.8, "max_new_tokens": 48})
VARIANTS = {  # changes to QUICKSTART, section by section
    "before": dict(rollout={"merge_for_sampling": False, "forward_batch_size": 4, "reuse_frozen_layers": False}),
    "after": {},
    "after + bf16 no-grad": dict(rollout={"precision": "bf16"}),
    "grpo (G=4, no value head)": dict(advantage={"estimator": "grpo"}, rollout={"group_size": 4}),
}


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied, section by section (a nested dict updates the section's keys)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def build_assets(base_dir: str) -> dict[str, str]:
    """A policy adapter (like @sft) and a reward adapter (like @reward), both LoRA on the top 8 layers."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from align.models import AdapterConfig, load_tokenizer, peft_config

    CACHE.mkdir(parents=True, exist_ok=True)
    sft, reward = CACHE / "sft", CACHE / "reward"
    tok = load_tokenizer(base_dir)
    torch.manual_seed(0)
    if not (sft / "adapter_config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        peft_model = get_peft_model(model, peft_config(AdapterConfig(r=16, alpha=32, dropout=0.05, top_layers=8),
                                                       model=model))
        with torch.no_grad():  # small nonzero LoRA: the merged model differs from the base, still talks
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 1e-3)
        peft_model.save_pretrained(str(sft))
        tok.save_pretrained(str(sft))
    if not (reward / "adapter_config.json").exists():
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
        model.config.pad_token_id = tok.pad_token_id
        peft_model = get_peft_model(model, peft_config(AdapterConfig(r=16, alpha=32, dropout=0.0, top_layers=8),
                                                       task_type="SEQ_CLS", model=model))
        peft_model.save_pretrained(str(reward))
        tok.save_pretrained(str(reward))
        (reward / "align_reward.json").write_text(json.dumps(
            {"base": base_dir, "adapter": True, "max_length": 256, "quantization": "none"}))
        (reward / "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "n": 1}))
    prompts = CACHE / "prompts.jsonl"
    if not prompts.exists():
        from align.ppo.queries import last_user_message, load_queries

        prompts.write_text("".join(json.dumps({"prompt": last_user_message(q)}) + "\n"
                                   for q in load_queries("gold:train")))
    return {"sft": str(sft), "reward": str(reward), "prompts": str(prompts)}


def response_tokens(generated, eos: list[int], pad_id: int) -> int:
    from align.rl import truncate_after_eos

    return int(truncate_after_eos(generated, eos, pad_id)[1].sum())


def bench_sampling(assets: dict[str, str], rounds: int) -> dict:
    """Our rollout generate() (merged / unmerged / bf16) vs plain generate of a merged copy, same seeds."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    from align.models import AdapterConfig, ModelConfig, resolve_model_ref
    from align.ppo.config import PPOSettings
    from align.ppo.policy import load_roles
    from align.ppo.queries import load_queries
    from align.ppo.rollout import encode_queries, eos_ids, generate, left_pad

    roles = load_roles(ModelConfig(name=assets["sft"]), AdapterConfig(), "head")
    tok = roles.tokenizer
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_ref(BASE)),
                                       assets["sft"]).merge_and_unload().eval()
    queries = load_queries(assets["prompts"])
    tokens = encode_queries(tok, queries)
    eos = eos_ids(tok, roles.model)
    s = PPOSettings(**QUICKSTART)
    config = GenerationConfig(  # the rollout's sampling settings
        do_sample=True, temperature=s.rollout.temperature, top_p=s.rollout.top_p, top_k=0,
        max_new_tokens=s.rollout.max_new_tokens,
        min_new_tokens=1, eos_token_id=eos, pad_token_id=tok.pad_token_id, use_cache=True, repetition_penalty=1.0)
    arms = {
        "plain generate (merged copy)": None,
        "rollout, LoRA merged (after)": PPOSettings(**QUICKSTART),
        "rollout, LoRA unmerged (before)": PPOSettings(**merged(QUICKSTART, {"rollout": {"merge_for_sampling": False}})),
        "rollout, merged + bf16": PPOSettings(**merged(QUICKSTART, {"rollout": {"precision": "bf16"}})),
    }
    totals = {name: [0, 0.0] for name in arms}
    B = QUICKSTART["rollout"]["batch_size"]
    for r in range(rounds + 1):  # round 0 warms up and is not counted
        batch = tokens[r * B : (r + 1) * B]
        ids, mask = left_pad(batch, tok.pad_token_id)
        for name, settings in arms.items():
            roles.rollout_bf16 = settings is not None and settings.rollout.precision == "bf16"
            torch.manual_seed(1000 + r)
            t0 = time.perf_counter()
            with torch.no_grad():
                if settings is None:
                    out = merged.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1]:]
                else:
                    out = generate(roles, ids, mask, settings)
            seconds = time.perf_counter() - t0
            if r > 0:
                totals[name][0] += response_tokens(out, eos, tok.pad_token_id)
                totals[name][1] += seconds
    roles.rollout_bf16 = False
    plain = totals["plain generate (merged copy)"]
    out = {}
    for name, (n, seconds) in totals.items():
        out[name] = {"tokens": n, "seconds": round(seconds, 2), "tokens_per_s": round(n / seconds, 1),
                     "vs_plain": round((n / seconds) / (plain[0] / plain[1]), 2)}
    return out


def bench_ppo(assets: dict[str, str], steps: int, variants: list[str]) -> dict:
    """Run the ppo stage for `steps` steps per variant; per-phase means over steps 2..N (step 1 warms up)."""
    from align.ppo.stats import read_stats
    from align.stages import StageContext
    from align.stages.ppo import Config, run

    out = {}
    for name, extra in VARIANTS.items():
        if name.split(" (")[0] not in variants:
            continue
        stage_dir = CACHE / "runs" / name.split()[0].replace("+", "") / f"{len(out)}"
        if stage_dir.exists():
            import shutil

            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True)
        cfg = Config.model_validate({
            "policy": assets["sft"], "reward": assets["reward"], "prompts": assets["prompts"],
            "train": merged(QUICKSTART, {**extra, "steps": steps, "save_steps": 10_000,
                                         "report_to": ["none"], "log": {"progress": False, "sample_every": 10_000}}),
        })
        result = run(cfg, StageContext("ppo", stage_dir, stage_dir.parent, seed=0, upstream={}))
        stats = read_stats(stage_dir / "stats.jsonl")
        timed = stats[1:] or stats
        keys = ("time/generate_s", "time/score_s", "time/logprobs_s", "time/update_s", "time/step_s")
        out[name] = {k.split("/")[1][:-2]: round(sum(s[k] for s in timed) / len(timed), 2) for k in keys}
        out[name]["response_tokens"] = round(sum(s["tokens/response_len_mean"] for s in timed) / len(timed), 1)
        out[name]["roles"] = [note.replace(f"{ROOT}/", "") for note in result.metrics["roles"]]
    return out


def bench_bf16_drift(assets: dict[str, str]) -> dict:
    """One batch of rollouts; old/ref log-probs (and values) in fp32 and under bf16 autocast."""
    import torch

    from align.models import AdapterConfig, ModelConfig
    from align.ppo.config import PPOSettings, RewardConfig
    from align.ppo.policy import find_frozen_layers, load_roles
    from align.ppo.queries import load_queries
    from align.ppo.rollout import encode_queries, rollout, score_logprobs_values
    from align.ppo.scoring import load_scorer

    roles = load_roles(ModelConfig(name=assets["sft"]), AdapterConfig(), "head")
    scorer = load_scorer(RewardConfig(source=assets["reward"]), assets["reward"], roles)
    roles.frozen_layers = find_frozen_layers(roles)
    s = PPOSettings(**QUICKSTART)
    queries = load_queries(assets["prompts"])[:8]
    torch.manual_seed(0)
    r = rollout(roles, scorer, queries, encode_queries(roles.tokenizer, queries), s)
    out: dict[str, dict] = {}
    for precision in ("fp32", "bf16", "fp32 ", "bf16 "):  # twice each, the second timing counts
        roles.rollout_bf16 = precision.strip() == "bf16"
        t0 = time.perf_counter()
        score_logprobs_values(roles, r, s.rollout.temperature, s.rollout.forward_batch_size)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores = torch.tensor(scorer.score(r.queries, r.responses))
        out[precision.strip()] = {"logprobs_s": round(seconds, 2), "score_s": round(time.perf_counter() - t1, 2),
                                  "logprobs": r.logprobs.clone(), "ref": r.ref_logprobs.clone(), "scores": scores}
    mask = r.response_mask
    d = (out["bf16"]["logprobs"] - out["fp32"]["logprobs"])[mask]
    d_ref = (out["bf16"]["ref"] - out["fp32"]["ref"])[mask]
    return {
        "tokens": int(mask.sum()),
        "fp32_logprobs_s": out["fp32"]["logprobs_s"], "bf16_logprobs_s": out["bf16"]["logprobs_s"],
        "fp32_score_s": out["fp32"]["score_s"], "bf16_score_s": out["bf16"]["score_s"],
        "logprob_abs_diff_mean": float(d.abs().mean()), "logprob_abs_diff_max": float(d.abs().max()),
        "ref_logprob_abs_diff_mean": float(d_ref.abs().mean()),
        "ratio_abs_dev_mean": float((d.exp() - 1).abs().mean()),
        "ratio_outside_clip_0.2": float(((d.exp() - 1).abs() > 0.2).float().mean()),
        "score_abs_diff_max": float((out["bf16"]["scores"] - out["fp32"]["scores"]).abs().max()),
    }


def render(res: dict) -> str:
    sampling, ppo, drift = res["sampling"], res["ppo"], res["bf16_drift"]
    lines = [
        "# Rollout speed: the PPO loop on the quickstart model (CPU)",
        "",
        f"Measured {res['date']} by `python benchmarks/bench_rollout.py --steps {res['steps']} --rounds "
        f"{res['rounds']}` on {res['machine']}, {res['threads']} intra-op thread, load average "
        f"{res['load_before']} before the run (a shared 2-core machine). Seconds are CPU seconds of the "
        "benchmark process (time.process_time), not wall time: with one thread they are what the work takes on "
        "an idle core, whatever else runs. Model: SmolLM2-135M-Instruct (fp32), policy = LoRA r=16 on the top 8 of 30 layers, "
        "reward = a LoRA reward adapter on the same base, ref_policy = a frozen copy of the policy adapter "
        "(as in recipes/quickstart.yaml). Prompts: the gold train prompts, batches of 8, sampling at temperature "
        "0.8, top_k off, 48 new tokens at most.",
        "",
        "## Sampling: rollout generate() vs plain `model.generate`",
        "",
        f"Same prompts, batch 8, same sampling settings and seeds ({res['rounds']} batches after one warm-up), so "
        "every arm samples the same responses; tokens counted up to and including EOS.",
        "",
        "| arm | response tokens | seconds | tokens/s | vs plain generate |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in sampling.items():
        lines.append(f"| {name} | {v['tokens']} | {v['seconds']} | {v['tokens_per_s']} | {v['vs_plain']}x |")
    before = ppo["before"]["step"]
    lines += [
        "",
        "## PPO step time at the earlier quickstart's PPO-GAE settings",
        "",
        f"Seconds per phase, mean over steps 2..{res['steps']} of one run per variant (step 1 warms up). "
        "before = merge_for_sampling off, forward_batch_size = mini_batch_size, reuse_frozen_layers off.",
        "",
        "| variant | generate | reward score | old/ref log-probs | update | step | vs before | response tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, v in ppo.items():
        lines.append(f"| {name} | {v['generate']} | {v['score']} | {v['logprobs']} | {v['update']} | {v['step']} | "
                     f"{v['step'] / before:.2f}x | {v['response_tokens']} |")
    lines += [
        "",
        "Responses are sampled, so their lengths differ between variants (last column); the phases scale with them.",
        "",
        "## bf16 autocast for the no-grad phases (`ppo.train.rollout.precision: bf16`)",
        "",
        f"One batch of 8 rollouts ({drift['tokens']} response tokens): old and ref log-probs recomputed under bf16 "
        "autocast vs fp32, same weights.",
        "",
        "| | fp32 | bf16 |",
        "|---|---:|---:|",
        f"| old + ref log-probs (s) | {drift['fp32_logprobs_s']} | {drift['bf16_logprobs_s']} |",
        f"| reward scores (s) | {drift['fp32_score_s']} | {drift['bf16_score_s']} |",
        "",
        f"- policy log-prob drift per token: mean |d| = {drift['logprob_abs_diff_mean']:.4f} nats, "
        f"max {drift['logprob_abs_diff_max']:.3f}; ref_policy: mean {drift['ref_logprob_abs_diff_mean']:.4f}",
        f"- as a PPO ratio exp(d): mean |ratio - 1| = {drift['ratio_abs_dev_mean']:.4f}; share of tokens outside "
        f"the 0.2 clip range before any update: {drift['ratio_outside_clip_0.2']:.3f}",
        f"- reward score drift: max |d| = {drift['score_abs_diff_max']:.4f}",
        "",
        "bf16 is opt-in: the update (fp32) then starts from old log-probs that were computed in bf16, so the "
        "first update's ratio is not exactly 1; the drift above is what that costs.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="PPO steps per variant (step 1 is a warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="sampling batches per arm (after a warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["sampling", "ppo", "bf16"], default=None)
    parser.add_argument("--variants", default="before,after,after + bf16 no-grad,grpo",
                        help="PPO variants to time, comma-separated: " + ", ".join(v.split(" (")[0] for v in VARIANTS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.threads == 1:  # CPU seconds of this process: immune to other jobs on a shared machine
        time.perf_counter = time.process_time
    sys.path.insert(0, str(ROOT))
    from align.models import resolve_model_ref

    meta = {"date": time.strftime("%Y-%m-%d"), "steps": args.steps, "rounds": args.rounds,
            "threads": args.threads, "load_before": round(os.getloadavg()[0], 1),
            "machine": f"{machine()}, torch {torch.__version__}"}
    assets = build_assets(resolve_model_ref(BASE))
    sections = {"sampling": lambda: bench_sampling(assets, args.rounds), "ppo": lambda: bench_ppo(assets, args.steps, args.variants.split(",")),
                "bf16_drift": lambda: bench_bf16_drift(assets)}
    for key, fn in sections.items():  # each section is saved on its own: --only runs them in parallel
        if args.only is None or key.startswith(args.only):
            value = {**meta, "result": fn()}
            (CACHE / f"section-{key}.json").write_text(json.dumps(value, indent=1))
            print(key, json.dumps(value["result"], indent=1), flush=True)
    saved = {key: json.loads((CACHE / f"section-{key}.json").read_text())
             for key in sections if (CACHE / f"section-{key}.json").exists()}
    if len(saved) < len(sections):
        print(f"sections so far: {sorted(saved)}; rollout.md is written once all three exist")
        return
    res = {**saved["ppo"], "load_before": max(v["load_before"] for v in saved.values()),
           "rounds": saved["sampling"]["rounds"], **{key: v["result"] for key, v in saved.items()}}
    write_results("rollout", res, render(res))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
