"""Model cards in every stage's model folder, `align export` (copy or merged) and `align push` (upload faked).

All on one tiny finished run (`tiny_pipeline_run`: sft, rank, reward, dpo and ppo on tiny-llama). The Hub
upload itself is not exercised (no network): push is tested up to the HfApi calls, with a stand-in API that
copies the uploaded folder to a local directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.errors import AlignError
from align.sharing.export import export_model
from align.sharing.push import push_model

MODEL_STAGES = ("sft", "reward", "dpo", "ppo")
PROMPTS = ["Give three tips for staying healthy.", "What is the capital of France?", "Write a haiku about rain."]


def card_code(card_path: Path) -> str:
    return re.search(r"```python\n(.*?)```", card_path.read_text(), re.S).group(1)


def run_snippet(code: str) -> tuple[dict, str]:
    """exec a card's code block; returns its namespace and what it printed."""
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<model card>", "exec"), namespace)
    return namespace, out.getvalue().strip()


def greedy(model, tokenizer, prompts: list[str], new_tokens: int = 16) -> list[list[int]]:
    import torch

    rows = []
    for prompt in prompts:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        rows.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    return rows


# --------------------------------------------------------------------------- model cards


def test_every_stage_model_has_a_hub_model_card(tiny_pipeline_run):
    from huggingface_hub import ModelCard

    run = tiny_pipeline_run
    for stage in MODEL_STAGES:
        path = run / stage / "model" / "README.md"
        assert path.exists(), stage
        card = ModelCard.load(path)  # the Hub's own parser: front matter and body
        meta = card.data.to_dict()
        assert meta["library_name"] == "peft"  # every stage here saved a LoRA adapter
        assert {"align", stage, "lora"} <= set(meta["tags"])
        assert "base_model" not in meta  # tiny-llama is no Hub model; a local path never goes into base_model
        assert meta["pipeline_tag"] == ("text-classification" if stage == "reward" else "text-generation")
        text = card.text
        assert (run / stage / "COMPLETE").read_text().strip() in text and "`ppo-tiny`" in text
        assert "r=8" in text  # the adapter's own rank (ppo's `adapter:` section says 16; it continued SFT's r=8)
        metrics = json.loads((run / stage / "metrics.json").read_text())
        assert f"| steps | {metrics['steps']} |" in text
    assert "PPO with GAE" in (run / "ppo" / "model" / "README.md").read_text()
    assert "rlhf" in ModelCard.load(run / "dpo" / "model" / "README.md").data.tags
    assert "rankings of K=2" in (run / "reward" / "model" / "README.md").read_text()


def test_card_code_loads_the_trained_models(tiny_pipeline_run):
    """Each card's snippet runs as written and loads THIS model: the same greedy text as align's own loader,
    the same reward as align's reward model."""
    from peft import PeftModel

    from align.generation import generate_chat
    from align.models import load_for_generation
    from align.preferences.reward_model import load_reward_model

    run = tiny_pipeline_run
    for stage in ("sft", "dpo", "ppo"):
        code = card_code(run / stage / "model" / "README.md").replace("max_new_tokens=64", "max_new_tokens=12")
        namespace, printed = run_snippet(code)
        assert isinstance(namespace["model"], PeftModel)
        model, tokenizer = load_for_generation(str(run / stage / "model"))
        messages = [[{"role": "user", "content": "Give me three tips for a good night's sleep."}]]
        expected = generate_chat(model, tokenizer, messages, max_new_tokens=12, temperature=0.0)[0]
        assert printed == expected.strip(), stage

    namespace, printed = run_snippet(card_code(run / "reward" / "model" / "README.md"))
    expected = load_reward_model(run / "reward").score([[{"role": "user", "content": "Name a colour."}]], ["Blue."])[0]
    assert float(printed) == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- export


def test_export_merge_gives_a_plain_transformers_model_with_the_adapters_outputs(tiny_pipeline_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tiny_pipeline_run
    assert main(["export", str(run / "ppo"), "--merge", "--out", str(tmp_path / "merged")]) == 0
    out = tmp_path / "merged"
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)

    adapter_dir = run / "ppo" / "model"
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                        adapter_dir).eval()
    assert greedy(merged, tokenizer, PROMPTS) == greedy(adapted, tokenizer, PROMPTS)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, adapted(**ids).logits, atol=1e-4, rtol=1e-4)
    bare = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():  # the merge carried the adapter: the base alone answers differently
        assert not torch.allclose(bare(**ids).logits, merged(**ids).logits, atol=1e-4)

    from huggingface_hub import ModelCard

    meta = ModelCard.load(out / "README.md").data.to_dict()
    assert meta["library_name"] == "transformers" and "ppo" in meta["tags"]
    namespace, printed = run_snippet(card_code(out / "README.md").replace("max_new_tokens=64", "max_new_tokens=4"))
    assert type(namespace["model"]).__name__ == "LlamaForCausalLM" and isinstance(printed, str)


def test_export_merge_of_a_reward_model_is_a_sequence_classifier(tiny_pipeline_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from align.preferences.reward_model import load_reward_model

    run = tiny_pipeline_run
    out = export_model(run / "reward", tmp_path / "rm", merge=True)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and type(model).__name__ == "LlamaForSequenceClassification"
    assert json.loads((out / "align_reward.json").read_text())["adapter"] is False
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    responses = ["Sleep, eat well, walk.", "Paris.", "Drops on the window"]
    merged_scores = load_reward_model(out).score(prompts, responses)
    adapter_scores = load_reward_model(run / "reward").score(prompts, responses)
    assert merged_scores == pytest.approx(adapter_scores, abs=1e-4)
    assert len(set(round(s, 4) for s in merged_scores)) > 1  # a trained head, not a constant
    _, printed = run_snippet(card_code(out / "README.md"))  # the card's snippet for the merged model
    colour = [[{"role": "user", "content": "Name a colour."}]]
    assert float(printed) == pytest.approx(load_reward_model(out).score(colour, ["Blue."])[0], abs=1e-5)


def test_export_merge_dequantizes_a_4bit_base(tiny_model_dir, tmp_path):
    """A QLoRA adapter is merged into the 4-bit base's dequantized weights: the merged model computes what the
    adapter on the 4-bit base computes (merging into the original float weights would not)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.models import load_causal_lm

    pytest.importorskip("bitsandbytes")
    try:
        load_causal_lm({"name": tiny_model_dir, "quantization": "4bit"})
    except Exception as exc:  # bitsandbytes without a backend for this machine
        pytest.skip(f"bitsandbytes cannot load a 4-bit model here: {type(exc).__name__}: {exc}")
    stage = tmp_path / "run" / "sft"
    torch.manual_seed(0)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(stage / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(stage / "model")
    (stage / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "tiny-llama", "quantization": "4bit"}}))
    (stage / "result.json").write_text(json.dumps({"outputs": {"model": str(stage / "model")}}))
    (stage / "COMPLETE").write_text("0123456789abcdef")

    out = export_model(stage, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert getattr(merged.config, "quantization_config", None) is None  # a plain float checkpoint
    on_4bit = load_causal_lm({"name": str(stage / "model"), "quantization": "4bit"}).eval()
    on_float = load_causal_lm({"name": str(stage / "model")}).eval()
    ids = AutoTokenizer.from_pretrained(out)(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        logits = merged(**ids).logits
        torch.testing.assert_close(logits, on_4bit(**ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(logits, on_float(**ids).logits, atol=1e-3)
    assert "dequantized from 4bit" in (out / "README.md").read_text()


def test_export_without_merge_copies_the_adapter_with_its_card(tiny_pipeline_run, tmp_path):
    out = export_model(tiny_pipeline_run / "dpo", tmp_path / "dpo")
    assert (out / "adapter_config.json").exists() and (out / "README.md").exists()
    assert f'model_id = "{out.resolve()}"' in (out / "README.md").read_text()


def test_export_errors_are_clear(tiny_pipeline_run, tmp_path):
    run = tiny_pipeline_run
    with pytest.raises(AlignError, match="rank stage wrote no model .*outputs: rankings"):
        export_model(run / "rank", tmp_path / "x")
    with pytest.raises(AlignError, match="no such stage folder"):
        export_model(run / "nope", tmp_path / "x")
    unfinished = tmp_path / "run" / "dpo"
    shutil.copytree(run / "dpo", unfinished, ignore=shutil.ignore_patterns("checkpoints"))
    (unfinished / "COMPLETE").unlink()
    (unfinished / "IN_PROGRESS").write_text("abc")
    with pytest.raises(AlignError, match="dpo stage did not finish .*running or was interrupted"):
        export_model(unfinished, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(AlignError, match="not empty"):
        export_model(run / "dpo", tmp_path / "full")
    assert main(["export", str(run / "rank"), "--out", str(tmp_path / "y")]) == 2  # one line on stderr, no traceback


# --------------------------------------------------------------------------- push


class FolderHub:
    """Stands in for huggingface_hub.HfApi: records create_repo, copies upload_folder into a local dir."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok, repo_type))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
        self.calls.append(("upload_folder", repo_id, repo_type))
        shutil.copytree(folder_path, self.root / repo_id)


def test_push_merged_uploads_a_loadable_model_with_its_card(tiny_pipeline_run, tmp_path):
    from huggingface_hub import ModelCard

    hub = FolderHub(tmp_path / "hub")
    url = push_model(tiny_pipeline_run / "ppo", "me/tiny-ppo", private=True, merge=True, api=hub)
    assert url == "https://huggingface.co/me/tiny-ppo"
    assert hub.calls[0] == ("create_repo", "me/tiny-ppo", True, True, "model")
    assert hub.calls[1] == ("upload_folder", "me/tiny-ppo", "model")
    repo = tmp_path / "hub" / "me" / "tiny-ppo"
    files = {p.name for p in repo.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not files & {"adapter_config.json", "checkpoints", "value_head.safetensors"}
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "transformers" and 'model_id = "me/tiny-ppo"' in card.text


def test_push_adapter_names_its_hub_base(tiny_pipeline_run, tmp_path):
    """An adapter on a Hub model goes up as an adapter whose config and card name the base's Hub id."""
    from huggingface_hub import ModelCard

    stage = tmp_path / "run" / "sft"
    shutil.copytree(tiny_pipeline_run / "sft", stage, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copy(tiny_pipeline_run / "recipe.yaml", stage.parent / "recipe.yaml")
    config = yaml.safe_load((stage / "config.yaml").read_text())
    config["model"]["name"] = "some-org/base-7b"
    (stage / "config.yaml").write_text(yaml.safe_dump(config))
    (stage / "result.json").write_text(json.dumps({"outputs": {"model": str(stage / "model")}, "metrics": {}}))
    adapter_cfg = stage / "model" / "adapter_config.json"
    adapter_cfg.write_text(json.dumps({**json.loads(adapter_cfg.read_text()),
                                       "base_model_name_or_path": "some-org/base-7b"}))
    hub = FolderHub(tmp_path / "hub")
    push_model(stage, "me/tiny-sft", api=hub)
    repo = tmp_path / "hub" / "me" / "tiny-sft"
    assert json.loads((repo / "adapter_config.json").read_text())["base_model_name_or_path"] == "some-org/base-7b"
    card = ModelCard.load(repo / "README.md")
    assert card.data.base_model == "some-org/base-7b" and card.data.library_name == "peft"
    assert 'base_id = "some-org/base-7b"' in card.text and 'model_id = "me/tiny-sft"' in card.text


def test_push_refuses_an_adapter_whose_base_is_not_on_the_hub(tiny_pipeline_run, tmp_path):
    hub = FolderHub(tmp_path / "hub")
    with pytest.raises(AlignError, match="not a Hugging Face Hub model.*--merge"):
        push_model(tiny_pipeline_run / "sft", "me/x", api=hub)
    with pytest.raises(AlignError, match="NAMESPACE/NAME"):
        push_model(tiny_pipeline_run / "sft", "no-namespace", merge=True, api=hub)
    assert hub.calls == []  # nothing reached the Hub
    assert main(["push", str(tiny_pipeline_run / "sft"), "--repo-id", "no-namespace", "--merge"]) == 2
