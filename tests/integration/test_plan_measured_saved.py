"""The per-layer activation formula against the bytes autograd really saves.

`torch.autograd.graph.saved_tensors_hooks` sees every tensor a forward keeps for backward; summing
their distinct storages (parameters excluded) for a 3-layer and a 2-layer model and subtracting
gives exactly one decoder layer's saved bytes, for any mode (full fine-tuning, LoRA, dropout,
padding, GQA, bf16 autocast as on a GPU). Tiny models; a few seconds.
"""

from __future__ import annotations

import pytest

from align.model_configs import Arch
from align.plan import TrainSetup, autocast_weight_copies, layer_activation_bytes

torch = pytest.importorskip("torch")

H, INTER, HEADS, KV, V, B, S = 256, 512, 8, 2, 512, 2, 64


def saved_bytes(layers: int, adapter: dict, padded: bool, bf16: bool) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=INTER, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=KV, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16 if bf16 else torch.float32)
    if adapter["type"] == "lora":  # peft keeps adapters in fp32 (autocast_adapter_dtype), as on a GPU
        model = get_peft_model(model, LoraConfig(r=adapter["r"], target_modules=adapter["target_modules"],
                                                 lora_dropout=adapter["dropout"]))
    model.train()
    ids = torch.randint(0, V, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    if padded:
        mask[0, :5] = 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    return sum(seen.values())


LORA = {"type": "lora", "r": 8, "dropout": 0.0, "target_modules": "all-linear"}
CASES = {
    "full fp32": ({"type": "full"}, False, False),
    "full fp32 padded": ({"type": "full"}, True, False),
    "lora fp32": (LORA, False, False),
    "lora fp32 padded": (LORA, True, False),
    "lora fp32 dropout": ({**LORA, "dropout": 0.1}, False, False),
    "lora q,v only": ({**LORA, "target_modules": ["q_proj", "v_proj"]}, False, False),
    "full bf16 (GPU-like)": ({"type": "full"}, True, True),
    "lora bf16 autocast (GPU-like)": (LORA, True, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_layer_formula_matches_saved_tensors(name):
    adapter, padded, bf16 = CASES[name]
    measured = (saved_bytes(3, adapter, padded, bf16) - saved_bytes(2, adapter, padded, bf16)) / (B * S)
    arch = Arch("probe", H, INTER, 1, HEADS, KV, V, tie_embeddings=False)
    setup = TrainSetup(arch=arch, device="cuda" if bf16 else "cpu", precision="bf16" if bf16 else "fp32",
                       adapter=adapter, padded=padded, batch_size=B, seq_len=S, trainer="own")
    # autocast's bf16 copies of fp32 LoRA weights are per layer, not per token
    predicted = layer_activation_bytes(setup, S) + autocast_weight_copies(setup) / (B * S)
    assert predicted == pytest.approx(measured, rel=0.01), (name, predicted, measured)
