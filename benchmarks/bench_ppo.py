"""PPO step time and peak memory on CPU: align (one shared base) vs TRL 1.12's PPOTrainer.

TRL removed its PPO trainer in 1.13, so the reference runs in its own venv
(benchmarks/.cache/venv-trl112: torch 2.13, trl 1.12.0, transformers 4.x), created on first use
with `python -m venv` + pip. Both sides get the same random-init Llama (bigger than tiny-llama,
saved once), the same prompts, batch shape, response length and PPO settings:

- align: LoRA policy; ref_policy = adapters disabled; value = a head on the policy trunk; reward =
  a LoRA reward adapter (SEQ_CLS, score head in modules_to_save) on the SAME base weights.
- TRL 1.12: LoRA policy via peft_config (ref = adapters disabled, as ours); value_model = a separate
  full sequence classifier that trains all its weights; reward_model = a separate full sequence
  classifier (the same reward adapter, merged into its own copy of the base).

Each side runs in a fresh process, one intra-op thread (the machine has 2 shared cores), and reports
seconds per PPO step (wall time of the training loop / steps) and peak RSS (ru_maxrss).

    python benchmarks/bench_ppo.py            # ~5-8 minutes the first time (venv), then ~3
    python benchmarks/bench_ppo.py --steps 4  # quicker

Writes benchmarks/results/ppo.md and ppo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, peak_rss_mb, print_result, run_worker, write_results

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
VENV = CACHE / "venv-trl112"
WORK = CACHE / "bench-ppo"
TRL_REQUIREMENTS = ["torch==2.13.0", "trl==1.12.0", "transformers>=4.56,<5", "peft", "accelerate", "datasets"]

# shared settings (both sides)
MODEL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
BATCH, MINI_BATCH, EPOCHS, RESPONSE_LEN, LR, KL_COEF = 16, 4, 2, 32, 1e-5, 0.05
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- setup (main venv)


def ensure_trl_venv() -> Path:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import trl, transformers; from trl.experimental.ppo import PPOTrainer; "
             "print(trl.__version__, transformers.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} (torch 2.13 + trl 1.12.0; about 1-2 minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_REQUIREMENTS], check=True)
    subprocess.run(probe, check=True)
    return python


def build_assets() -> dict[str, str]:
    """Random-init Llama (tiny-llama's tokenizer), a LoRA reward adapter on it, its merged copy, prompts."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from align.models import load_tokenizer, resolve_model_ref

    paths = {k: str(WORK / k) for k in ("base", "reward_adapter", "reward_merged")}
    paths["prompts"] = str(WORK / "prompts.jsonl")
    if (WORK / "DONE").exists():
        return paths
    WORK.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(resolve_model_ref("tiny-llama"))
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                         **MODEL)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(paths["base"])
    tok.save_pretrained(paths["base"])

    seq = AutoModelForSequenceClassification.from_pretrained(paths["base"], num_labels=1)
    seq.config.pad_token_id = tok.pad_token_id
    rm = get_peft_model(seq, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="SEQ_CLS",
                                        init_lora_weights=False))
    rm.save_pretrained(paths["reward_adapter"])
    tok.save_pretrained(paths["reward_adapter"])
    Path(paths["reward_adapter"], "align_reward.json").write_text(
        json.dumps({"base": paths["base"], "adapter": True, "max_length": 512, "format": "chat"}))
    Path(paths["reward_adapter"], "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "n": 1}))
    seq = AutoModelForSequenceClassification.from_pretrained(paths["base"], num_labels=1)
    seq.config.pad_token_id = tok.pad_token_id
    merged = PeftModel.from_pretrained(seq, paths["reward_adapter"]).merge_and_unload()
    merged.save_pretrained(paths["reward_merged"])
    tok.save_pretrained(paths["reward_merged"])

    records = json.loads((HERE.parent / "examples" / "data" / "alpaca_tiny.json").read_text())
    with open(paths["prompts"], "w") as f:
        for rec in records:
            text = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
            f.write(json.dumps({"prompt": text}) + "\n")
    (WORK / "DONE").write_text("ok")
    return paths


# --------------------------------------------------------------------------- workers


def worker_align(paths: dict[str, str], steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from align.ppo.stats import read_stats
    from align.stages import StageContext
    from align.stages.ppo import Config, run

    out = WORK / "align-run"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir()
    cfg = Config.model_validate({
        "policy": paths["base"], "reward": paths["reward_adapter"], "prompts": paths["prompts"],
        "adapter": {"type": "lora", "r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": 0.0},
        "train": {"steps": steps, "mini_batch_size": MINI_BATCH, "grad_accum": 1, "ppo_epochs": EPOCHS, "lr": LR,
                  "save_steps": 10_000, "kl": {"init_coef": KL_COEF},
                  "rollout": {"batch_size": BATCH, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": RESPONSE_LEN},
                  "report_to": ["none"], "log": {"progress": False}},
    })
    result = run(cfg, StageContext("ppo", out, WORK, seed=0, upstream={}))
    stats = read_stats(out / "stats.jsonl")
    return {
        "name": "align (shared base)", "steps": len(stats),
        "sec_per_step": sum(s["time/step_s"] for s in stats) / len(stats),  # rollout + update, no loading
        "sec_per_step_after_first": sum(s["time/step_s"] for s in stats[1:]) / max(len(stats) - 1, 1),
        "peak_rss_mb": peak_rss_mb(), "response_len_mean": sum(s["tokens/response_len_mean"] for s in stats) / len(stats),
        "roles": [note.replace(str(WORK) + "/", "") for note in result.metrics["roles"]],
        "reward": result.metrics["reward"],
        "trainable_params": result.metrics["trainable_params"],
    }


def worker_trl(paths: dict[str, str], steps: int) -> dict:
    """Runs inside the trl 1.12 venv: no align imports here."""
    import torch

    torch.set_num_threads(1)
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    # the tokenizer was saved by transformers 5 (tokenizer_class TokenizersBackend, unknown to 4.x)
    base = Path(paths["base"])
    special = {k: v for k, v in json.loads((base / "tokenizer_config.json").read_text()).items() if k.endswith("_token")}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(base / "tokenizer.json"), padding_side="left", **special)
    tok.chat_template = (base / "chat_template.jinja").read_text()
    prompts = [json.loads(line)["prompt"] for line in Path(paths["prompts"]).read_text().splitlines()]
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for p in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    policy = AutoModelForCausalLM.from_pretrained(paths["base"])
    value = AutoModelForSequenceClassification.from_pretrained(paths["base"], num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward_merged"], num_labels=1)
    for m in (value, reward):
        m.config.pad_token_id = tok.pad_token_id
    args = PPOConfig(
        output_dir=str(WORK / "trl-run"), per_device_train_batch_size=MINI_BATCH,
        gradient_accumulation_steps=BATCH // MINI_BATCH, num_mini_batches=BATCH // MINI_BATCH,
        num_ppo_epochs=EPOCHS, total_episodes=BATCH * steps, response_length=RESPONSE_LEN, temperature=1.0,
        learning_rate=LR, kl_coef=KL_COEF, stop_token="eos", local_rollout_forward_batch_size=BATCH,
        num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=1, seed=0,
        bf16=False, use_cpu=True, lr_scheduler_type="constant", gradient_checkpointing=False,
    )
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=dataset, value_model=value, peft_config=LoraConfig(**LORA))
    rss_loaded = rss_now_mb()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "name": f"trl {trl.__version__} PPOTrainer", "steps": steps, "sec_per_step": seconds / steps,
        "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded, "trainable_params": trainable,
        "transformers": transformers.__version__,
        "roles": ["policy = LoRA on the base (ref = adapters disabled)",
                  "value_model = separate full model (all weights train)", "reward_model = separate full model"],
    }


def run_ppo_worker(python: str, which: str, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return run_worker([python, __file__, "--worker", which, "--steps", str(steps)], env, f"{which} worker")


def report(ours: dict, theirs: dict, steps: int, seconds: float) -> None:
    import torch

    n_params = None
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(str(WORK / "base"))).parameters())
    except Exception:  # meta-device init is a nicety for the table
        pass
    data = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{machine()} (shared), CPU only",
        "threads": 1, "model": {**MODEL, "vocab_size": 1024, "params": n_params},
        "settings": {"batch_size": BATCH, "mini_batch_size": MINI_BATCH, "ppo_epochs": EPOCHS,
                     "response_length": RESPONSE_LEN, "lora": LORA, "steps": steps},
        "align": ours, "trl": theirs, "benchmark_seconds": round(seconds, 1),
    }
    ratio_t = theirs["sec_per_step"] / ours["sec_per_step"]
    ratio_m = theirs["peak_rss_mb"] / ours["peak_rss_mb"]
    md = f"""# PPO: align vs TRL 1.12 PPOTrainer (CPU)

Measured {data['date']} by `python benchmarks/bench_ppo.py --steps {steps}` on {data['machine']}, one
intra-op thread per process, each side in a fresh process. Other jobs shared the machine, so
seconds are indicative; memory is not affected.

Model: random-init Llama, {MODEL['num_hidden_layers']} layers, width {MODEL['hidden_size']}, vocab 1024
({n_params / 1e6 if n_params else float('nan'):.1f}M parameters, fp32). Same prompts (examples/data/alpaca_tiny.json),
{BATCH} rollouts per step, minibatches of {MINI_BATCH}, {EPOCHS} PPO epochs, responses up to {RESPONSE_LEN} tokens
(sampled at temperature 1, top_k off), LoRA r={LORA['r']} on all linear layers for the policy.

| | s / PPO step | peak RSS (MB) | trainable params | model roles |
|---|---:|---:|---:|---|
| align (this repo) | {ours['sec_per_step']:.2f} | {ours['peak_rss_mb']:.0f} | {ours['trainable_params']:,} | {'; '.join(ours['roles'])} |
| {theirs['name']} | {theirs['sec_per_step']:.2f} | {theirs['peak_rss_mb']:.0f} | {theirs['trainable_params']:,} | {'; '.join(theirs['roles'])} |

TRL / align: {ratio_t:.2f}x the time per step, {ratio_m:.2f}x the peak memory.

Why: TRL's PPOTrainer keeps the value model and the reward model as separate full models (with
LoRA, only its ref_policy shares the policy's weights), and trains every weight of the value model
(with Adam state for each). align runs all four roles on one copy of the base: the value model is a
scalar head on the policy trunk (computed in the policy's own forward pass: one forward fewer per
minibatch), and the reward model is a second, frozen LoRA adapter on the same base.
Loss details differ slightly (TRL adds the score one position after the last response token and
bootstraps values there; align puts it on the last token), so this compares cost, not learning curves.
"""
    write_results("ppo", data, md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="PPO steps per side")
    parser.add_argument("--worker", choices=["align", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    paths = {k: str(WORK / k) for k in ("base", "reward_adapter", "reward_merged")}
    paths["prompts"] = str(WORK / "prompts.jsonl")
    if args.worker:
        result = worker_align(paths, args.steps) if args.worker == "align" else worker_trl(paths, args.steps)
        print_result(result)
        return
    started = time.perf_counter()
    trl_python = ensure_trl_venv()
    os.environ.setdefault("ALIGN_CACHE", str(CACHE / "align-cache"))
    build_assets()
    ours = run_ppo_worker(sys.executable, "align", args.steps)
    print(f"align: {ours['sec_per_step']:.2f} s/step, peak RSS {ours['peak_rss_mb']:.0f} MB", flush=True)
    theirs = run_ppo_worker(str(trl_python), "trl", args.steps)
    print(f"trl:   {theirs['sec_per_step']:.2f} s/step, peak RSS {theirs['peak_rss_mb']:.0f} MB", flush=True)
    report(ours, theirs, args.steps, time.perf_counter() - started)


if __name__ == "__main__":
    main()
