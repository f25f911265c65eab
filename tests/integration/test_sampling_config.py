"""One neutral sampling config at every sampling site: a checkpoint's generation_config.json never leaks in.

transformers 5 completes a GenerationConfig passed to generate() from the checkpoint's generation_config.json
for every field the config leaves unset. The checkpoint here sets min_p, no_repeat_ngram_size, bad_words_ids,
top_k, repetition_penalty, typical_p and suppress_tokens; each site must sample from the model's own
(temperature-scaled) softmax regardless.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

LEAKY = {"min_p": 0.5, "no_repeat_ngram_size": 1, "bad_words_ids": [[10], [11]], "top_k": 3,
         "repetition_penalty": 3.0, "typical_p": 0.5, "suppress_tokens": [12], "do_sample": True,
         "temperature": 0.3}
FORBIDDEN = ("MinP", "NoRepeatNGram", "NoBadWords", "TopK", "RepetitionPenalty", "Typical", "SuppressTokens")


@pytest.fixture(scope="module")
def leaky_dir(tiny_model_dir, tmp_path_factory) -> str:
    """tiny-llama with a generation_config.json full of sampler-changing defaults."""
    out = tmp_path_factory.mktemp("leaky") / "model"
    shutil.copytree(tiny_model_dir, out)
    path = out / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **LEAKY}))
    return str(out)


def load(ref: str):
    from align.models import load_for_generation

    return load_for_generation(ref)


def spy_processors(model) -> list[list[str]]:
    """Record the class names of the logits processors each generate() call builds."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: list[list[str]] = []
    original = inner._get_logits_processor

    def wrapped(*args, **kwargs):
        processors = original(*args, **kwargs)
        seen.append([type(p).__name__ for p in processors])
        return processors

    inner._get_logits_processor = wrapped
    return seen


def assert_clean(seen: list[list[str]], allowed: set[str]) -> None:
    assert seen, "generate() was not called"
    for names in seen:
        assert not [n for n in names if n.startswith(FORBIDDEN)], names
        assert set(names) <= allowed, names


def test_the_checkpoint_would_leak_into_a_plain_generation_config(leaky_dir):
    """The case the sites guard against is real: transformers 5 merges the checkpoint into a passed config."""
    from transformers import GenerationConfig

    model, tok = load(leaky_dir)
    assert model.generation_config.min_p == 0.5 and model.generation_config.no_repeat_ngram_size == 1
    seen = spy_processors(model)
    enc = tok(["Hello there"], return_tensors="pt")
    model.generate(**enc, generation_config=GenerationConfig(do_sample=True, top_k=0, max_new_tokens=2,
                                                             pad_token_id=tok.pad_token_id))
    assert any(n.startswith("MinP") for n in seen[0]) and any(n.startswith("NoRepeatNGram") for n in seen[0])


def test_generate_texts_greedy_repeats_what_no_repeat_ngram_size_would_forbid(leaky_dir, tiny_model_dir):
    """rank and eval sample through generate_texts: same tokens as the clean checkpoint, repeats allowed."""
    from align.generation import generate_texts

    model, tok = load(leaky_dir)
    clean, _ = load(tiny_model_dir)
    seen = spy_processors(model)
    prompts = ["a a a a a a", "Write a poem about the sea"]
    got = generate_texts(model, tok, prompts, max_new_tokens=24, temperature=0.0, progress=False)
    expected = generate_texts(clean, tok, prompts, max_new_tokens=24, temperature=0.0, progress=False)
    assert got == expected
    ids = [tok(t[0], add_special_tokens=False)["input_ids"] for t in got]
    assert any(len(set(row)) < len(row) for row in ids)  # a repeated token: no_repeat_ngram_size=1 would forbid it
    assert_clean(seen, set())
    seen.clear()
    generate_texts(model, tok, prompts, max_new_tokens=4, temperature=0.7, top_p=0.9, progress=False)
    assert_clean(seen, {"TemperatureLogitsWarper", "TopPLogitsWarper"})


def test_local_teacher_ignores_the_checkpoint_defaults(leaky_dir):
    from align.teachers import make_teacher

    teacher = make_teacher({"model": leaky_dir, "top_p": 0.95})
    model, _ = teacher._load()
    seen = spy_processors(model)
    texts = teacher.complete(["Come up with a series of tasks:\n1."], max_tokens=6, temperature=0.7, stop=["\n\n"])
    assert len(texts) == 1
    assert_clean(seen, {"TemperatureLogitsWarper", "TopPLogitsWarper"})


def test_eval_kl_sampling_is_pure(leaky_dir):
    """Eval's KL samples must come from π itself: only its own log-prob recorder sees the logits."""
    from align.eval.kl import sample_responses

    model, tok = load(leaky_dir)
    seen = spy_processors(model)
    batches = sample_responses(model, tok, [[{"role": "user", "content": "hi"}]], n=2, max_new_tokens=5,
                               batch_size=4, seed=0)
    assert batches and batches[0].logprobs.shape[0] == 2
    assert_clean(seen, {"Recorder"})


def test_ppo_rollout_sampling_is_pure(leaky_dir):
    from align.ppo.config import PPOSettings
    from align.ppo.rollout import generate, left_pad

    model, tok = load(leaky_dir)
    seen = spy_processors(model)
    roles = SimpleNamespace(model=model, tokenizer=tok, device=torch.device("cpu"), is_peft=False, quantization="none",
                            autocast=lambda no_grad=False: torch.autocast("cpu", enabled=False))
    ids, mask = left_pad(tok(["Hello", "Tell me a story"], add_special_tokens=False)["input_ids"], tok.pad_token_id)
    out = generate(roles, ids, mask, PPOSettings(rollout={"max_new_tokens": 5, "temperature": 0.7,
                                                                 "merge_for_sampling": False}))
    assert out.shape[0] == 2
    # temperature, the one EOS-free first token the rollout asks for (min_new_tokens=1, which generate()
    # also turns into min_length = prompt + 1) and the NaN/inf check; nothing from the checkpoint
    assert_clean(seen, {"TemperatureLogitsWarper", "MinNewTokensLengthLogitsProcessor", "MinLengthLogitsProcessor",
                        "FiniteLogits"})


def test_the_checkpoint_file_is_left_alone(leaky_dir):
    """The merge is stopped in the config, not by rewriting the model's own generation_config."""
    from align.generation import generate_texts

    model, tok = load(leaky_dir)
    generate_texts(model, tok, ["Hi"], max_new_tokens=2, temperature=0.5, progress=False)
    assert model.generation_config.min_p == 0.5 and model.generation_config.top_k == 3
    assert json.loads((Path(leaky_dir) / "generation_config.json").read_text())["no_repeat_ngram_size"] == 1
