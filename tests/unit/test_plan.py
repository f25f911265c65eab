"""`align.plan` arithmetic against values computed by hand for one small config.

The config: hidden 64, intermediate 128, 2 layers, 4 heads (head_dim 16), 2 KV heads, vocab 1000,
untied embeddings. Per layer the projections are q 64x64=4096, k 64x32=2048, v 2048, o 4096,
gate/up/down 64x128=8192 each: 36,864 weights. Whole model: 2 x 36,864 + embedding 64,000 +
lm_head 64,000 + norms (2*2+1) x 64 = 320  ->  202,048 parameters.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from align.errors import AlignError
from align.model_configs import Arch
from align.plan import (
    StageEstimate,
    Term,
    TrainSetup,
    adapter_tensors,
    base_weight_bytes,
    dtypes_for,
    format_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    numel,
    optimizer_bytes,
    parse_size,
    training_terms,
)

ARCH = Arch("hand", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            vocab_size=1000, tie_embeddings=False)
LORA8 = {"type": "lora", "r": 8, "dropout": 0.0, "target_modules": "all-linear"}


def test_parameter_count():
    assert ARCH.linear_params_per_layer() == 36_864
    assert ARCH.total_params() == 2 * 36_864 + 64_000 + 64_000 + 320 == 202_048


def test_weights_at_each_precision():
    assert base_weight_bytes(ARCH, 4, "none") == 202_048 * 4 == 808_192
    assert base_weight_bytes(ARCH, 2, "none") == 404_096
    # Unquantized part in bf16: embeddings + lm_head + norms = 128,320 params x 2 B = 256,640 B.
    # 8-bit: 1 B/weight + an fp32 scale per output row.
    #   q 4096+4*64=4352, k 2048+4*32=2176, v 2176, o 4352, gate 8192+4*128=8704, up 8704, down 8192+4*64=8448
    #   = 38,912 per layer, 77,824 for two.
    assert base_weight_bytes(ARCH, 2, "8bit") == 256_640 + 77_824
    # NF4 + double quant, per matrix of n weights: n/2 + ceil(n/64) 8-bit absmax + 4*ceil(blocks/256) fp32
    # absmax of the absmax + 2 code tables of 256 fp32 (2048 B).
    #   q: 2048 + 64 + 4 + 2048 = 4164; k, v: 1024 + 32 + 4 + 2048 = 3108; o 4164;
    #   gate/up/down: 4096 + 128 + 4 + 2048 = 6276  ->  per layer 2*4164 + 2*3108 + 3*6276 = 33,372.
    assert base_weight_bytes(ARCH, 2, "4bit") == 256_640 + 2 * 33_372


def test_lora_parameters():
    # r * (in + out) per wrapped projection: q 8*128, k 8*96, v 8*96, o 8*128, gate/up/down 8*192 each
    # = 1024 + 768 + 768 + 1024 + 3 * 1536 = 8192 per layer.
    assert numel(adapter_tensors(ARCH, LORA8)) == 2 * 8192
    # q and v only: (1024 + 768) per layer.
    assert numel(adapter_tensors(ARCH, {**LORA8, "target_modules": ["q_proj", "v_proj"]})) == 2 * 1792
    # DoRA adds a magnitude per output feature: 64+32+32+64+128+128+64 = 512 per layer.
    assert numel(adapter_tensors(ARCH, {**LORA8, "type": "dora"})) == 2 * (8192 + 512)
    assert numel(adapter_tensors(ARCH, {"type": "full"})) == 202_048


def test_optimizer_state():
    lora = adapter_tensors(ARCH, LORA8)
    # AdamW (torch): two states in the parameter dtype (fp32 LoRA): 2 * 4 B * 16,384.
    states, _, _ = optimizer_bytes("adamw_torch", lora, 4, "cuda")
    assert states == 131_072
    # bitsandbytes 8-bit keeps tensors under 4096 values in 32-bit: every LoRA matrix here is small.
    states, step, note = optimizer_bytes("paged_adamw_8bit", lora, 4, "cuda")
    assert states == 131_072 and step == 0 and "paged" in note
    # Full fine-tuning with adamw_8bit: q, o (4096) and gate/up/down (8192) go 8-bit at 2 * (1 + 4/256) B,
    # k, v (2048) and the norms (64) stay 32-bit (8 B), embedding/lm_head (64,000) go 8-bit:
    #   per layer 2*8320 + 2*16384 + 3*16640 = 99,328; x2 = 198,656; norms 8*320 = 2560; 2*130,000 = 260,000.
    states, _, _ = optimizer_bytes("adamw_8bit", adapter_tensors(ARCH, {"type": "full"}), 2, "cuda")
    assert states == pytest.approx(198_656 + 2_560 + 260_000)
    # torch's foreach AdamW on a GPU allocates one state-sized temporary in step().
    assert optimizer_bytes("adamw_torch", lora, 4, "cuda")[1] == 16_384 * 4


def test_kv_cache():
    # 2 (K and V) x 2 layers x 2 kv heads x 16 head_dim x 100 tokens x batch 3 x 2 B
    assert kv_cache_bytes(ARCH, batch=3, tokens=100, act_bytes=2) == 2 * 2 * 2 * 16 * 100 * 3 * 2 == 76_800


def setup(**kw) -> TrainSetup:
    base = dict(arch=ARCH, device="cpu", precision="fp32", adapter=LORA8, batch_size=2, seq_len=32, padded=False,
                trainer="own")
    return TrainSetup(**{**base, **kw})


def test_layer_activations_lora_fp32():
    # Per token, fp32 (4 B), LoRA without dropout (lora_A keeps the shared input):
    #   2 RMSNorms: fp32 input 4*64 + rsqrt 4         = 2 * 260 = 520
    #   norm outputs kept by lora_A (q/k/v, gate/up)  = 2 * 4*64 = 512
    #   rotated q, k, v (GQA, no repeat), SDPA out    = 4 * (64 + 32 + 32 + 64) = 768; log-sum-exp 4*4 = 16
    #   gate, silu(gate), up + their product          = 4 * (3*128 + 128) = 2048
    #   lora_A outputs: 7 modules x r=8 x 4 B         = 224
    assert layer_activation_bytes(setup(), 32) == 520 + 512 + 784 + 2048 + 224 == 4088


def test_layer_activations_padding_repeats_kv_and_adds_mask():
    # + k, v repeated to 4 heads: 4 * 2 * (64 - 32) = 256; + the float mask per layer: 4 B x seq 32 = 128
    assert layer_activation_bytes(setup(padded=True), 32) == 4088 + 256 + 128


def test_layer_activations_full_finetuning():
    # Norm weights train: + the normalized value 4*64 per norm; no LoRA outputs.
    assert layer_activation_bytes(setup(adapter={"type": "full"}), 32) == 520 + 2 * 256 + 512 + 784 + 2048 == 4376


def test_layer_activations_gpu_bf16_lora():
    # bf16 activations (2 B) and fp32 LoRA weights: each wrapped layer keeps a bf16 copy of its input.
    #   norms 2 * (4*64 + 4) = 520 (their fp32 input copy); norm outputs not kept
    #   attention 2 * (64 + 32 + 32 + 64) + 16 = 400; MLP 2 * 3*128 = 768 (product not kept)
    #   LoRA: q/k/v/o/gate/up: 2*8 + 2*64 = 144 each; down: 2*8 + 2*128 = 272  -> 6*144 + 272 = 1136
    gpu = setup(device="cuda", precision="bf16")
    assert layer_activation_bytes(gpu, 32) == 520 + 400 + 768 + 1136 == 2824


def test_training_total_cpu_lora():
    terms = training_terms(setup(head="lm-fused"))
    est = StageEstimate("sft", "training", terms)
    # resident: weights 808,192 + adapter 65,536 + AdamW 131,072
    resident = 808_192 + 65_536 + 131_072
    # activations: 64 tokens x (2 layers x 4088 + final norm 4*64 + the head's input copy 4*64)
    activations = 64 * (2 * 4088 + 256 + 256)
    # TRL's tiled head on CPU: 64 x 1000 tile x (4 B + 33 B of fp32 temporaries) + fp32 grad of the
    # hidden states and its cast (4 + 4) x 64 x 64
    head = 64 * 1000 * 37 + 8 * 64 * 64
    assert est.term("activations") == activations
    assert est.term("logits") == head
    assert est.peak_phase == "forward/backward"
    assert est.total == resident + activations + head == 3_961_600


def test_grad_accumulation_keeps_gradients_resident():
    one = StageEstimate("s", "training", training_terms(setup()))
    four = StageEstimate("s", "training", training_terms(setup(grad_accum=4)))
    assert four.total - one.total == 16_384 * 4  # the fp32 LoRA gradients now stay through the forward


def test_checkpointing_keeps_layer_inputs_plus_one_layer():
    est = StageEstimate("s", "training", training_terms(setup(checkpointing=True)))
    # 64 tokens x (2 layers x 4*64 inputs + final 512) and one layer recomputed: 64 x 4088
    assert est.term("activations (checkpointed") == 64 * (2 * 256 + 512)
    assert est.term("activations (one layer") == 64 * 4088


def test_qlora_lora_dtype_follows_trainer():
    trl = setup(quantization="4bit", trainer="trl")
    own = replace(trl, trainer="own")
    assert trl.adapter_param_bytes() == 2  # TRL casts LoRA weights to bf16 on quantized bases
    assert own.adapter_param_bytes() == 4  # peft upcasts adapters to fp32


def test_dtypes():
    assert dtypes_for("cuda", "auto").weight == 2
    assert dtypes_for("cpu", "auto").weight == 4
    with pytest.raises(AlignError, match="fp16 needs a CUDA GPU"):
        dtypes_for("cpu", "fp16")


def test_phases_take_the_largest():
    est = StageEstimate("s", "x", [Term("w", 10), Term("a", 5, "one"), Term("b", 7, "two"), Term("c", 3, "one")])
    assert est.total == 10 + 8 and est.peak_phase == "one"


@pytest.mark.parametrize("text,expected", [("8GiB", 8 * 2**30), ("8G", 8 * 2**30), ("8", 8 * 2**30),
                                           ("24GB", 24e9), ("16000MiB", 16000 * 2**20), ("1.5 TiB", 1.5 * 2**40)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(AlignError, match="--gpu-memory"):
        parse_size("lots")


def test_format_bytes():
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(5 * 2**20) == "5 MiB"


def test_top_layers_counts_adapters_and_activations_of_the_adapted_blocks_only():
    top = {**LORA8, "top_layers": 1}
    assert numel(adapter_tensors(ARCH, top)) == 8192  # one of the two layers
    est = StageEstimate("s", "training", training_terms(setup(adapter=top, head="lm-fused")))
    # 64 tokens x (1 layer x 4088 + final norm 256 + the head's input copy 256): the frozen block keeps nothing
    assert est.term("activations") == 64 * (4088 + 256 + 256)
