"""Eval's KL on sampled responses, model settings and one shared base for LoRA policies (tiny-llama)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from align.errors import AlignError
from align.eval.kl import kl_estimate, sample_responses, sequence_logprobs
from align.eval.loading import ModelView, describe_model, load_reward, load_views
from align.generation import sampling_config
from align.models import ModelSettings
from align.stages import StageContext
from align.stages.eval import Config, run
from tests.conftest import make_reward_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATIONS = [[{"role": "user", "content": "Name a color."}],
                 [{"role": "user", "content": "Write a short poem about the sea, please."}],
                 [{"role": "user", "content": "Why is the sky blue?"}]]


def view_of(ref: str) -> ModelView:
    from align.models import load_for_generation

    return ModelView(*load_for_generation(ref))


def save_lora(base_dir: str, out: Path, seed: int) -> Path:
    """A LoRA adapter on tiny-llama whose B matrices are non-zero (it changes the model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    model.save_pretrained(str(out))
    load_tokenizer(base_dir).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("eval-adapters")
    return str(save_lora(tiny_model_dir, root / "a", 1)), str(save_lora(tiny_model_dir, root / "b", 2))


@pytest.fixture(scope="module")
def sharp_dir(tiny_model_dir, tmp_path_factory) -> str:
    """tiny-llama with a 16x sharper LM head: a full model (its own base), far from tiny-llama in KL."""
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer

    out = tmp_path_factory.mktemp("sharp")
    sharp = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        sharp.lm_head.weight.mul_(16.0)
    sharp.save_pretrained(str(out))
    load_tokenizer(tiny_model_dir).save_pretrained(str(out))
    return str(out)


def test_sampling_ignores_the_checkpoints_generation_defaults(tiny_model_dir):
    """Samples must come from π itself: top-k, min-p, repetition penalties in generation_config.json are off."""
    view = view_of("tiny-llama")
    cfg = view.model.generation_config
    cfg.top_k, cfg.top_p, cfg.min_p, cfg.repetition_penalty, cfg.no_repeat_ngram_size, cfg.temperature = (
        3, 0.5, 0.4, 2.0, 2, 0.3)
    enc = view.tokenizer(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt",
                         add_special_tokens=False)
    config = sampling_config(max_new_tokens=6, temperature=1.0, num_return_sequences=4,
                             eos_token_id=[view.tokenizer.eos_token_id], pad_token_id=view.tokenizer.pad_token_id)
    config.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        out = view.model.generate(**enc, generation_config=config)
    assert view.model.generation_config.top_k == 3  # the model's own config is left alone
    for scores, logits in zip(out.scores, out.logits):
        assert torch.equal(scores, logits)  # no logits processor touched the distribution


def test_sequence_logprobs_match_unpadded_single_row_forwards(tiny_model_dir):
    view = view_of("tiny-llama")
    stops = sorted({view.tokenizer.eos_token_id, *range(100, 300)})  # EOS ids from the generation config count too
    view.model.generation_config.eos_token_id = stops  # (and make early stops likely in a random model)
    batches = sample_responses(view.model, view.tokenizer, CONVERSATIONS, 2, 10, 8, seed=3)
    got = sequence_logprobs(view.model, batches)
    expected = []
    for b in batches:
        width = b.response_mask.shape[1]
        for ids, mask, keep in zip(b.input_ids, b.attention_mask, b.response_mask):
            prompt = ids[:-width][mask[:-width].bool()]
            response = ids[-width:][keep]
            row = torch.cat([prompt, response])[None]
            with torch.no_grad():
                logp = torch.log_softmax(view.model(input_ids=row).logits[0, :-1].float(), -1)
            targets = row[0, 1:]
            expected.append(float(logp[-len(response):].gather(-1, targets[-len(response):, None]).sum()))
    assert len(got) == 6 and got == pytest.approx(expected, abs=1e-4)
    # the log-probs recorded while sampling are the same numbers (the policy needs no second forward)
    recorded = [float(x) for b in batches for x in b.logprobs.where(b.response_mask, 0.0).sum(-1)]
    assert recorded == pytest.approx(expected, abs=1e-4)
    # a response counts up to and including its first EOS, and nothing after it
    ended = 0
    for b in batches:
        for r, k in zip(b.input_ids[:, -b.response_mask.shape[1]:].tolist(), b.response_mask.tolist()):
            first = next((i for i, t in enumerate(r) if t in stops), None)
            stop = len(r) if first is None else first + 1
            ended += first is not None and first < len(r) - 1
            assert k == [True] * stop + [False] * (len(r) - stop)
    assert ended > 0  # some samples stopped early (seeded), so the cut is exercised


def test_kl_is_the_sampled_estimate_of_the_exact_first_token_kl(sharp_dir):
    """One new token: KL(π‖π_ref) = Σ_v π(v)(log π(v) − log π_ref(v)) at the prompt's end, computable exactly.
    π = tiny-llama with a 16x sharper LM head; the estimate over 3 x 100 samples lands within 4 standard
    errors (~20%) of it."""
    from align.generation import chat_prompt

    policy, reference = view_of(sharp_dir), view_of("tiny-llama")
    exact, likely = [], set()
    for conv in CONVERSATIONS:
        ids = policy.tokenizer(chat_prompt(policy.tokenizer, conv), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            lp = torch.log_softmax(policy.model(**ids).logits[0, -1], -1)
            lq = torch.log_softmax(reference.model(**ids).logits[0, -1], -1)
        exact.append(float((lp.exp() * (lp - lq)).sum()))
        likely |= set(lp.topk(2).indices.tolist())
    truth = sum(exact) / len(exact)
    # checkpoint defaults that would change π's samples must be ignored
    policy.model.generation_config.suppress_tokens = sorted(likely)
    policy.model.generation_config.min_p = 0.2
    est = kl_estimate(policy, reference, CONVERSATIONS, 100, 1, 200, seed=0)
    assert truth > 1.0 and est["kl_samples"] == 300 and est["kl_response_tokens_mean"] == 1.0
    assert abs(est["kl"] - truth) < 4 * est["kl_stderr"] < 0.25 * truth, (est, truth)


def test_eval_reports_sampled_kl_and_skips_it_at_zero_samples(tmp_path, tiny_model_dir, adapters):
    base = {"policies": {"base": "tiny-llama", "lora": adapters[0]}, "num_prompts": 4, "max_new_tokens": 8,
            "reference": "tiny-llama"}
    result = run(Config.model_validate({**base, "kl_samples": 2}), StageContext("eval", tmp_path, tmp_path, 0, {}))
    pol = result.metrics["policies"]
    assert pol["base"]["kl"] == 0.0 and pol["base"]["kl_samples"] == 0  # the reference itself: 0, not sampled
    assert pol["lora"]["kl_samples"] == 8  # 4 prompts x 2 samples
    assert pol["lora"]["kl"] > 0 and pol["lora"]["kl_stderr"] > 0 and result.metrics["kl"] == pol["lora"]["kl"]
    assert result.metrics["model_loads"] == 1  # the adapter and the plain base (policy and reference) share one copy
    off = run(Config.model_validate({**base, "kl_samples": 0}), StageContext("eval", tmp_path, tmp_path, 0, {}))
    assert "kl" not in off.metrics["policies"]["lora"] and "kl" not in off.metrics
    assert off.metrics["policies"]["lora"]["gold_score"] == pol["lora"]["gold_score"]  # greedy metrics unchanged


def test_policies_on_another_base_get_a_separate_reference(tmp_path, adapters, sharp_dir):
    cfg = Config.model_validate({"policies": {"sharp": sharp_dir, "lora": adapters[0]}, "num_prompts": 3,
                                 "max_new_tokens": 4, "reference": "tiny-llama", "kl_samples": 2})
    result = run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))
    pol = result.metrics["policies"]
    assert list(pol) == ["sharp", "lora"]  # reported in the recipe's order, whatever the loading order
    assert pol["sharp"]["kl_samples"] == pol["lora"]["kl_samples"] == 6 and pol["sharp"]["kl"] > pol["lora"]["kl"]
    assert result.metrics["model_loads"] == 3  # tiny-llama (+ adapter + reference), sharp, a copy of the reference


def test_adapters_on_one_base_give_the_same_results_as_separate_loads(tiny_model_dir, adapters):
    from align.generation import generate_chat

    specs = [describe_model(a) for a in (adapters[0], adapters[1], "tiny-llama")]
    assert len({s.group for s in specs}) == 1 and specs[2].adapter is None
    views = load_views(specs, None)
    shared = {id(v.model) for v in views.values()}
    assert len(shared) == 1  # one base in memory
    for spec, ref in zip(specs, (adapters[0], adapters[1], "tiny-llama")):
        alone = view_of(ref)
        view = views[spec.identity]
        with view.active() as model:
            got = generate_chat(model, view.tokenizer, CONVERSATIONS, max_new_tokens=8, temperature=0.0)
        want = generate_chat(alone.model, alone.tokenizer, CONVERSATIONS, max_new_tokens=8, temperature=0.0)
        assert got == want, ref
        kl_shared = kl_estimate(view, views[specs[2].identity], CONVERSATIONS, 2, 6, 8, seed=1)
        kl_alone = kl_estimate(alone, view_of("tiny-llama"), CONVERSATIONS, 2, 6, 8, seed=1)
        assert kl_shared["kl"] == pytest.approx(kl_alone["kl"], abs=1e-5)
    # switching really switches: the two adapters score the same samples differently
    batches = sample_responses(views[specs[2].identity].model, views[specs[2].identity].tokenizer, CONVERSATIONS,
                               1, 6, 8, seed=0)
    scored = []
    for spec in specs:
        with views[spec.identity].active() as model:
            scored.append(sequence_logprobs(model, batches))
    assert scored[0] != scored[1] and scored[0] != scored[2]


def test_4bit_settings_quantize_the_shared_base(tiny_model_dir, adapters):
    bnb = pytest.importorskip("bitsandbytes")
    specs = [describe_model(adapters[0]), describe_model("tiny-llama")]
    views = load_views(specs, ModelSettings(quantization="4bit"))
    model = views[specs[0].identity].model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    kl = kl_estimate(views[specs[0].identity], views[specs[1].identity], CONVERSATIONS, 2, 6, 8, seed=0)
    assert math.isfinite(kl["kl"]) and kl["kl"] > 0


def test_reward_model_follows_eval_model_settings(tiny_model_dir, tmp_path):
    folder = make_reward_adapter(tmp_path / "rm", tiny_model_dir)
    prompts, responses = ["Name a color.", "Why is the sky blue?"], ["Blue.", "Light scatters."]
    as_trained = load_reward(str(folder), None).score(prompts, responses)
    explicit = load_reward(str(folder), ModelSettings(precision="fp32")).score(prompts, responses)
    assert explicit == pytest.approx(as_trained, abs=1e-6) and as_trained[0] != as_trained[1]
    bnb = pytest.importorskip("bitsandbytes")
    rm = load_reward(str(folder), ModelSettings(quantization="4bit"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in rm.model.modules())
    assert all(math.isfinite(s) for s in rm.score(prompts, responses))


def test_eval_stage_runs_in_4bit(tmp_path, tiny_model_dir, adapters):
    pytest.importorskip("bitsandbytes")
    rm = make_reward_adapter(tmp_path / "rm", tiny_model_dir)
    cfg = Config.model_validate({
        "policies": {"lora": adapters[0], "other": adapters[1]}, "num_prompts": 3, "max_new_tokens": 6,
        "reference": "tiny-llama", "reward_model": str(rm), "model": {"quantization": "4bit"}})
    result = run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))
    pol = result.metrics["policies"]
    assert result.metrics["model_loads"] == 1 and pol["lora"]["kl_samples"] == 3
    assert all(math.isfinite(pol[n][k]) for n in pol for k in ("kl", "reward_score", "gold_score"))


def test_quantization_without_bitsandbytes_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    cfg = Config.model_validate({"policies": {"a": "tiny-llama"}, "model": {"quantization": "4bit"}})
    with pytest.raises(AlignError, match=r"eval\.model\.quantization: 4bit .*bitsandbytes"):
        run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is fine on a GPU")
def test_fp16_on_cpu_names_the_key(tmp_path):
    cfg = Config.model_validate({"policies": {"a": "tiny-llama"}, "model": {"precision": "fp16"}})
    with pytest.raises(AlignError, match=r"eval\.model\.precision: .*CUDA"):
        run(cfg, StageContext("eval", tmp_path, tmp_path, 0, {}))
