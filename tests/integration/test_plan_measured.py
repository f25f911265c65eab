"""The plan's estimate against measured peak memory of real SFT steps on CPU.

CPU-adapted measurement: one worker process imports torch/transformers/TRL/peft, then forks one
child per case (no compute before forking, so no thread pools are copied). The child records its
anonymous resident memory (RssAnon) as the baseline, builds a random-init Llama (25-50M
parameters, so the model dominates) or loads a saved one in 4-bit, resets the kernel's high-water
mark (/proc/self/clear_refs), runs two optimizer steps through TRL's SFTTrainer as
`align.stages.sft` sets it up, and reports VmHWM - RssFile - baseline (file-backed pages, such as
the safetensors mmap a 4-bit load leaves behind, are not model memory). glibc is told to serve
every block over 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave RSS, as they
leave PyTorch's "allocated" count on a GPU; otherwise the heap keeps them and RSS drifts upward.

Run as a script (``python test_plan_measured.py CASES_JSON``) it is the worker. The results are
recorded in docs/memory.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

TOLERANCE = 0.15
# Peak RSS is not one number per case: the same QLoRA case read 87 MiB on one 2-core machine and 79 MiB on
# another of the same kind (allocator, oneDNN/MKL scratch, first-step caches), an 8 MiB spread. Those
# runtime allocations are not modelled (docs/memory.md: ~10-30 MiB), so a case passes when the estimate is
# within TOLERANCE of the measurement or within RUNTIME_SLACK of it in absolute terms. Large cases are judged
# by the relative tolerance; the small QLoRA case (~80-90 MiB) by the slack, which still fails when its
# largest term (the 4-bit weights, ~43 MiB) is missing or counted twice.
RUNTIME_SLACK = 24 * 2**20
pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or not hasattr(os, "fork"),
                                reason="measures RSS through Linux /proc and os.fork")
# Every example is longer than max_length, so batches are never padded (no attention mask).
CASES = {
    "full-fp32": dict(layers=6, hidden=512, inter=1408, heads=8, kv=4, vocab=8192, adapter="full",
                      quantization="none", batch=1, seq=64, optim="adamw_torch"),
    "lora-fp32": dict(layers=6, hidden=768, inter=2048, heads=12, kv=4, vocab=8192, adapter="lora",
                      quantization="none", batch=2, seq=64, optim="adamw_torch"),
    "qlora-cpu": dict(layers=6, hidden=768, inter=2048, heads=12, kv=4, vocab=4096, adapter="lora",
                      quantization="4bit", batch=1, seq=64, optim="adamw_torch"),
}


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _llama_config(case: dict, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=case["vocab"], hidden_size=case["hidden"], intermediate_size=case["inter"],
        num_hidden_layers=case["layers"], num_attention_heads=case["heads"], num_key_value_heads=case["kv"],
        max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def measure(case: dict, tokenizer) -> dict:
    """Baseline, model, two SFT steps, peak; in the worker process."""
    import gc

    import torch

    torch.set_num_threads(2)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from align.models import (
        AdapterConfig,
        ModelConfig,
        guard_4bit_cpu_gradients,
        load_causal_lm,
        peft_config,
        pick_precision,
    )
    from align.training import TrainConfig, trainer_args

    torch.manual_seed(0)
    words = ["the", "model", "learns", "to", "answer", "questions", "about", "memory", "and", "planning", "in",
             "short", "clear", "sentences"]
    examples = [{"prompt": [{"role": "user", "content": f"Question {i}: say something."}],
                 "completion": [{"role": "assistant", "content": " ".join(words[(i + j) % len(words)]
                                                                         for j in range(400))}]}
                for i in range(8)]
    dataset = Dataset.from_list(examples)
    train = TrainConfig(lr=1e-4, max_steps=2, batch_size=case["batch"], max_length=case["seq"],
                        optim=case["optim"], logging_steps=1, save_steps=1000, report_to=["none"],
                        gradient_checkpointing=case.get("checkpointing", False))
    args = trainer_args(SFTConfig, train, Path(case["out"]), pick_precision("fp32"), 0, max_length=case["seq"],
                        packing=False, completion_only_loss=True, dataset_num_proc=None, save_strategy="no")
    adapter = AdapterConfig(type=case["adapter"], r=16, alpha=32, dropout=0.0)
    gc.collect()
    started = time.perf_counter()
    baseline_anon = _status("RssAnon")
    if case["quantization"] == "none":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(_llama_config(case, tokenizer))
    else:
        model = load_causal_lm(ModelConfig(name=case["checkpoint"], precision="fp32", quantization="4bit"),
                               for_training=True)
    loaded = _status("RssAnon")
    load_seconds = time.perf_counter() - started
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: loading transients are not training memory
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset,
                         peft_config=peft_config(adapter))
    guard_4bit_cpu_gradients(trainer.model)
    trainer.train()
    result = {"baseline_anon": baseline_anon, "loaded_anon": loaded, "peak": _status("VmHWM"),
              "file_pages": _status("RssFile"), "steps": trainer.state.global_step,
              "load_seconds": round(load_seconds, 1), "train_seconds": round(time.perf_counter() - started, 1)}
    result["increment"] = result["peak"] - result["file_pages"] - baseline_anon
    del trainer, model
    gc.collect()
    return result


def save_checkpoint(case: dict, tokenizer) -> dict:
    """4-bit loading goes through from_pretrained: write the random-init model once."""
    import torch
    from transformers import LlamaForCausalLM

    if not Path(case["checkpoint"], "config.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(_llama_config(case, tokenizer)).save_pretrained(case["checkpoint"])
    return {}


def in_child(fn, *args) -> dict:
    """Run fn in a forked child: it starts from the parent's imports but has its own RSS high-water mark."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            payload = json.dumps(fn(*args))
        except BaseException:
            payload = json.dumps({"error": traceback.format_exc()})
        with os.fdopen(write_end, "w") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        payload = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(payload or '{"error": "child died"}')
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def worker(cases: dict[str, dict]) -> dict[str, dict]:
    """Import once, then measure each case in its own forked process (no compute in the parent,
    so no thread pools exist when it forks)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from align.models import load_tokenizer

    if any(c["quantization"] != "none" for c in cases.values()):
        import bitsandbytes  # noqa: F401
    tokenizer = load_tokenizer(next(iter(cases.values()))["tokenizer"])
    results = {}
    for name, case in cases.items():
        if case["quantization"] != "none":
            in_child(save_checkpoint, case, tokenizer)
        results[name] = in_child(measure, case, tokenizer)
    return results


def run_worker(cases: dict[str, dict]) -> dict[str, dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "OMP_NUM_THREADS": "2",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, __file__, json.dumps(cases)], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate(case: dict) -> float:
    from align.model_configs import Arch
    from align.plan import StageEstimate, TrainSetup, training_terms, trl_tiled_head

    arch = Arch("measured", case["hidden"], case["inter"], case["layers"], case["heads"], case["kv"],
                case["vocab"], tie_embeddings=False)
    setup = TrainSetup(arch=arch, device="cpu", precision="fp32", quantization=case["quantization"],
                       adapter={"type": case["adapter"], "r": 16, "dropout": 0.0, "target_modules": "all-linear"},
                       batch_size=case["batch"], seq_len=case["seq"], optim=case["optim"], padded=False,
                       checkpointing=case.get("checkpointing", False),
                       head="lm-fused" if trl_tiled_head() else "lm-full", trainer="trl")
    return StageEstimate("sft", "training", training_terms(setup)).total


@pytest.fixture(scope="module")
def measured(tiny_model_dir, tmp_path_factory) -> tuple[dict, dict]:
    root = tmp_path_factory.mktemp("plan-measured")
    cases = {name: {**case, "tokenizer": tiny_model_dir, "out": str(root / name), "checkpoint": str(root / "ckpt")}
             for name, case in CASES.items()}
    if importlib.util.find_spec("bitsandbytes") is None:
        cases = {k: v for k, v in cases.items() if v["quantization"] == "none"}
    return cases, run_worker(cases)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_estimate_within_15_percent_or_runtime_slack_of_measured_cpu_peak(name, measured):
    cases, results = measured
    if name not in results:
        pytest.skip("bitsandbytes not installed")
    result = results[name]
    assert result["steps"] == 2
    predicted = estimate(cases[name])
    error = predicted / result["increment"] - 1
    print(f"{name}: measured {result['increment'] / 2**20:.0f} MiB, estimated {predicted / 2**20:.0f} MiB "
          f"({error:+.1%})")
    assert abs(predicted - result["increment"]) <= max(TOLERANCE * result["increment"], RUNTIME_SLACK), (
        name, result, predicted)


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
