"""Model cards from a run directory's files alone (no model loads): front matter, method, data, license."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from align.sharing.model_card import (
    describe_model,
    find_key,
    front_matter,
    is_hub_id,
    render_card,
    write_stage_cards,
)


def fake_stage(run: Path, stage: str, config: dict, metrics: dict, adapter: dict | None = None) -> Path:
    """A finished stage folder with a model/ holding only config files (enough for a card)."""
    stage_dir = run / stage
    (stage_dir / "model").mkdir(parents=True)
    (stage_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (stage_dir / "metrics.json").write_text(json.dumps(metrics))
    (stage_dir / "COMPLETE").write_text("feedc0ffee123456")
    if adapter is not None:
        (stage_dir / "model" / "adapter_config.json").write_text(json.dumps(adapter))
    else:
        (stage_dir / "model" / "config.json").write_text("{}")
    (run / "recipe.yaml").write_text("name: demo\n")
    return stage_dir


LORA = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "org/base-1b"}


def test_hub_base_license_and_datasets_go_into_the_front_matter(tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    stage_dir = fake_stage(tmp_path / "run", "sft", {
        "model": {"name": "org/base-1b", "quantization": "4bit"}, "data": {"path": "tatsu-lab/alpaca"}},
        {"train_loss": 1.25, "steps": 7}, {**LORA, "base_model_name_or_path": str(base)})
    info = describe_model(stage_dir / "model", stage_dir)
    text = render_card(info, location="me/demo-sft")
    meta = front_matter(text)
    assert meta["base_model"] == "org/base-1b" and meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["tatsu-lab/alpaca"] and meta["library_name"] == "peft"
    assert meta["tags"] == ["align", "sft", "lora", "qlora"]
    assert "r=16, alpha=32, on q_proj, v_proj" in text and "| train_loss | 1.25 |" in text
    assert "feedc0ffee123456" in text and 'model_id = "me/demo-sft"' in text and "4bit base weights" in text


def test_local_bases_and_paths_stay_out_of_the_front_matter(tmp_path):
    stage_dir = fake_stage(tmp_path / "run", "sft", {"model": {"name": str(tmp_path)}, "data": "data/my.jsonl"},
                           {}, {**LORA, "base_model_name_or_path": str(tmp_path)})
    meta = front_matter(render_card(describe_model(stage_dir / "model", stage_dir)))
    assert "base_model" not in meta and "datasets" not in meta and "license" not in meta


def test_ppo_card_follows_stage_references_and_names_the_estimator(tmp_path):
    run = tmp_path / "run"
    fake_stage(run, "sft", {"model": {"name": "smollm2-135m-instruct"}, "data": "x.json"}, {}, LORA)
    ppo = fake_stage(run, "ppo", {"policy": {"name": "@sft"}, "reward": {"source": "@reward"},
                                  "prompts": {"path": "gold:focus:train"},
                                  "train": {"advantage": {"estimator": "rloo"}, "rollout": {"group_size": 4},
                                            "kl": {"init_coef": 0.05}}},
                     {"first_score": 0.1, "last_score": 0.4, "final_kl": 0.02, "steps": 20}, LORA)
    text = render_card(describe_model(ppo / "model", ppo))
    meta = front_matter(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the alias's Hub original
    assert {"rloo", "rlhf", "ppo"} <= set(meta["tags"]) and "RLOO" in text and "4 samples per prompt" in text
    assert "KL penalty to the starting policy (beta=0.05)" in text
    assert "this run's `reward` stage" in text and "this run's `sft` stage output" in text
    assert "| last_score | 0.4 |" in text


def test_dpo_and_reward_cards(tmp_path):
    run = tmp_path / "run"
    fake_stage(run, "rank", {"prompts": {"path": "p.json"}, "k": 4, "judge": {"type": "gold", "function": "m:f"}}, {})
    dpo = fake_stage(run, "dpo", {"model": {"name": "org/m"}, "data": "@rank", "method": {"type": "kto", "beta": 0.2}},
                     {}, None)
    text = render_card(describe_model(dpo / "model", dpo))
    assert "preference optimisation with KTO, beta=0.2" in text and "rankings of K=4" in text and "judge m:f" in text
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and "kto" in meta["tags"]
    assert "AutoModelForCausalLM.from_pretrained(model_id" in text and "PeftModel" not in text

    reward = fake_stage(run, "reward", {"model": {"name": "org/m"}, "data": "@rank", "loss": "plackett_luce"}, {},
                        {**LORA, "base_model_name_or_path": "org/m"})
    (reward / "model" / "align_reward.json").write_text(json.dumps({"base": "org/m", "adapter": True,
                                                                    "max_length": 128, "format": "pair"}))
    (reward / "model" / "reward_normalization.json").write_text(json.dumps({"mean": 0.5}))
    text = render_card(describe_model(reward / "model", reward))
    assert front_matter(text)["pipeline_tag"] == "text-classification" and "Plackett-Luce" in text
    assert "AutoModelForSequenceClassification.from_pretrained(base_id, num_labels=1" in text
    assert "tokenizer(prompt, response" in text and "raw - (0.5)" in text  # encoder pair format, normalised


def test_write_stage_cards_writes_only_model_folders(tmp_path):
    stage_dir = fake_stage(tmp_path / "run", "sft", {"model": "org/m"}, {}, LORA)
    (stage_dir / "rankings.jsonl").write_text("")
    written = write_stage_cards(stage_dir, {"model": str(stage_dir / "model"),
                                            "rankings": str(stage_dir / "rankings.jsonl")})
    assert written == [stage_dir / "model" / "README.md"]


def test_sfts_merged_folder_is_described_as_the_adapter_merged(tmp_path):
    stage_dir = fake_stage(tmp_path / "run", "sft", {"model": {"name": "org/m", "quantization": "4bit"}}, {}, LORA)
    (stage_dir / "merged").mkdir()
    (stage_dir / "merged" / "config.json").write_text("{}")
    write_stage_cards(stage_dir, {"model": str(stage_dir / "model"), "merged": str(stage_dir / "merged")})
    text = (stage_dir / "merged" / "README.md").read_text()
    assert "LoRA adapter (r=16" in text and "merged into the base weights (the original float weights" in text
    assert front_matter(text)["library_name"] == "transformers"


def test_an_adapter_on_a_base_this_run_wrote_says_so(tmp_path):
    run = tmp_path / "run"
    reward = fake_stage(run, "reward", {"model": {"name": "@sft"}, "data": "r.jsonl"}, {},
                        {**LORA, "base_model_name_or_path": str(run / "reward" / "base")})
    text = render_card(describe_model(reward / "model", reward))
    assert "written by this run" in text and "align export --merge" in text


def test_helpers():
    assert is_hub_id("org/name") and not is_hub_id("./org/name") and not is_hub_id("data/x.jsonl")
    assert not is_hub_id("tiny-llama") and not is_hub_id("m:f")
    assert find_key({"a": {"b": {"advantage": "grpo"}}}, "advantage") == "grpo"
    assert front_matter("no card") == {} and front_matter("---\nlicense: mit\n---\nbody") == {"license": "mit"}
