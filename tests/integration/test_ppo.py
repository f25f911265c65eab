"""The ppo stage end to end on tiny-llama: reward rises, KL stays bounded, outputs load in plain peft.

The policy starts from an SFT-like LoRA adapter (trained here in a few seconds to answer with a few
words from a small vocabulary), so that a programmatic reward, the fraction of the word "blue",
starts near 0.2 and has room to rise. With the update's sign flipped the score falls instead.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from align.stages import StageContext
from align.stages.ppo import Config, run
from tests.conftest import merged

WORDS = ["red", "blue", "green", "cat", "dog"]
PROMPTS = ["Tell me about the sea.", "Write a short poem.", "Name a color.", "Describe a cat.",
           "How do plants grow?", "Why is the sky blue?", "Give three tips.", "Say something."]


pytestmark = pytest.mark.usefixtures("one_thread")


def train_sft_like_adapter(base_dir: str, out: Path, steps: int = 200) -> Path:
    """LoRA (lm_head included) taught to reply with 3-6 random words from WORDS, then EOS."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer

    rng = random.Random(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped one_thread fixture
    tok = load_tokenizer(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        rows = []
        for _ in range(16):
            prompt = [{"role": "user", "content": rng.choice(PROMPTS)}]
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
            prompt_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
            full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
            rows.append((tok(full, add_special_tokens=False)["input_ids"], n_prompt))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (seq, n_prompt) in enumerate(rows):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.set_num_threads(threads)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return train_sft_like_adapter(tiny_model_dir, tmp_path_factory.mktemp("sft") / "model")


@pytest.fixture()
def files(tmp_path) -> dict[str, str]:
    (tmp_path / "toy_reward.py").write_text(
        "def frac_blue(prompt, response):\n"
        "    words = response.split()\n"
        "    return sum(w == 'blue' for w in words) / len(words) if words else 0.0\n"
        "\n"
        "def frac_red(prompt, response):\n"
        "    words = response.split()\n"
        "    return sum(w == 'red' for w in words) / len(words) if words else 0.0\n"
    )
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"reward": f"{tmp_path / 'toy_reward.py'}:frac_blue", "gold": f"{tmp_path / 'toy_reward.py'}:frac_red",
            "prompts": str(tmp_path / "prompts.jsonl")}


def ppo_config(policy: str, files: dict[str, str], **train) -> Config:
    """The ppo stage's Config; `train` changes ppo.train keys (sections as dicts: kl={"adaptive": True})."""
    settings = dict(steps=30, mini_batch_size=8, ppo_epochs=4, lr=2e-4, max_approxkl=0.2, save_steps=15,
                    rollout={"batch_size": 16, "temperature": 1.0, "max_new_tokens": 12}, kl={"init_coef": 0.1},
                    report_to=["tensorboard"],
                    log={"sample_every": 10, "num_samples": 2, "gold_fn": files["gold"], "progress": False})
    return Config.model_validate({"policy": policy, "reward": files["reward"], "prompts": files["prompts"],
                                  "train": merged(settings, train)})


def test_reward_rises_and_kl_stays_bounded(sft_adapter, files, tmp_path):
    out = tmp_path / "ppo"
    out.mkdir()
    result = run(ppo_config(str(sft_adapter), files), StageContext("ppo", out, tmp_path, seed=0, upstream={}))
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    scores = [s["objective/scores"] for s in stats]
    first, last = sum(scores[:3]) / 3, sum(scores[-5:]) / 5
    # Margins from the spread: over seeds 0-3 and 1 or 2 threads the score rose from 0.11-0.15 to 0.31-0.33
    # (gain 0.16-0.21, sd 0.02); with the update's sign flipped it falls. 0.1 is the mean minus 4 sd.
    assert first < 0.4 and last > first + 0.1, scores
    assert max(s["objective/kl"] for s in stats) < 20, [round(s["objective/kl"], 2) for s in stats]
    # the gold function (fraction of "red") is logged next to the reward, to make over-optimisation visible
    assert all(0.0 <= s["objective/gold"] <= 1.0 for s in stats)

    m = result.metrics
    assert m["steps"] == 30 and m["ref_policy"] == "ref_adapter" and m["reward"] == "function"
    assert m["last_score"] == scores[-1] and m["first_score"] == scores[0]
    names = {"objective/kl", "objective/kl_coef", "objective/rlhf_reward", "objective/scores", "objective/entropy",
             "loss/policy", "loss/value", "loss/total", "policy/clipfrac", "val/clipfrac", "policy/approxkl",
             "policy/entropy", "tokens/response_len_mean", "eos/fraction", "time/step_s", "objective/gold"}
    assert names <= set(stats[0])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 10, 20, 30}
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-15", "step-30"]

    # model/ is a plain PEFT adapter: it loads without align and answers "blue" more than the SFT adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def blue_rate(adapter_dir: str, samples_per_prompt: int = 8) -> float:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
            json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]),
            adapter_dir).eval()
        tok = AutoTokenizer.from_pretrained(adapter_dir)
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                 for p in PROMPTS]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        torch.manual_seed(0)
        out_ids = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                                 num_return_sequences=samples_per_prompt)
        words = " ".join(tok.batch_decode(out_ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)).split()
        return sum(w == "blue" for w in words) / max(len(words), 1)

    # ~250 sampled words per model: SFT 0.11, PPO 0.29-0.44 over seeds 0-3 (diff >= 0.18)
    assert blue_rate(result.outputs["model"]) > blue_rate(str(sft_adapter)) + 0.1
    assert Path(result.outputs["value_head"]).exists()


def test_adaptive_kl_controller_moves_the_coefficient(sft_adapter, files, tmp_path):
    out = tmp_path / "ppo"
    out.mkdir()
    cfg = ppo_config(str(sft_adapter), files, steps=5, kl={"adaptive": True, "target": 0.01, "horizon": 100,
                                                           "init_coef": 0.2},
                     lr=1e-3, report_to=["none"], log={"gold_fn": None})
    run(cfg, StageContext("ppo", out, tmp_path, seed=0, upstream={}))
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    coefs = [s["objective/kl_coef"] for s in stats]
    assert coefs[0] == 0.2
    assert abs(stats[0]["objective/kl"]) < 0.05 and coefs[1] < coefs[0]  # policy == ref_policy at step 1: beta shrinks
    assert stats[-2]["objective/kl"] > 0.01 and coefs[-1] > coefs[-2]  # KL above the tiny target: beta grows


def test_ppo_tiny_recipe_runs_through_the_cli(tmp_path, monkeypatch, align_cache):
    """sft -> rank -> reward -> ppo (shrunk): @sft / @reward resolve and the reward adapter shares the base."""
    from align.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the recipe's data paths are relative to the repo
    out = tmp_path / "run"
    code = main(["run", "recipes/ppo-tiny.yaml", "sft.train.max_steps=2",
                 "rank.prompts={path: examples/data/alpaca_tiny.json, max_samples: 8}", "reward.train.max_steps=2",
                 "ppo.train.steps=2", "ppo.train.rollout.max_new_tokens=8", "ppo.train.report_to=[none]", "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "ppo" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["reward"] == "reward_adapter_on_shared_base"
    assert metrics["ref_policy"] == "ref_adapter" and "gold_score" in metrics
    assert (out / "ppo" / "model" / "adapter_model.safetensors").exists() and (out / "ppo" / "COMPLETE").exists()
