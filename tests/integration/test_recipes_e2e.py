"""The GPU-scale recipes, shrunk to tiny-llama and run end to end on CPU.

`recipes/instructgpt.yaml` runs all six of its stages through `run_recipe` with dotted overrides only
(hub model and data swapped for local ones through `vars`, sizes cut), so a recipe edit that breaks the
loop fails here rather than hours into a GPU run. `recipes/alpaca.yaml` runs its Self-Instruct stage
against a real local OpenAI-compatible server (`align serve` with the scripted Alpaca backend) and then
SFT. The laptop recipes' memory claims are re-checked against `align plan`.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from test_self_instruct_scripted import ScriptedBackend

from align.config import load_recipe
from align.runner import run_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
STAGES = ["sft", "rank", "reward", "dpo", "ppo", "eval"]

# instructgpt.yaml on tiny-llama: one override per hub reference (through vars) plus the sizes.
# The recipe's own 4-bit base, paged optimizer (bitsandbytes falls back to unpaged on CPU) and activation
# checkpointing stay on: only the model, the data and the sizes change.
TINY_INSTRUCTGPT = [
    "vars.base=tiny-llama",
    f"vars.sft_data={REPO / 'examples/data/alpaca_tiny.json'}",
    f"vars.gold={REPO / 'eval/gold_prompts.jsonl'}",
    *[f"{stage}.train.{key}" for stage in ("sft", "reward", "dpo") for key in (
        "report_to=[none]", "max_length=192", "grad_accum=1", "logging_steps=1", "lr=3.0e-3")],
    "sft.data.eval_fraction=0.2", "sft.train.max_steps=4", "sft.train.batch_size=4", "sft.train.save_steps=2",
    "rank.prompts.max_samples=8", "rank.k=3", "rank.max_new_tokens=16", "rank.batch_size=8",
    "reward.train.max_steps=4", "reward.train.batch_size=2", "reward.eval_fraction=0.25",
    "dpo.train.max_steps=4", "dpo.train.batch_size=2", "dpo.eval_fraction=0.25",
    "ppo.prompts.max_samples=8",
    *[f"ppo.train.{key}" for key in (
        "steps=2", "rollout.batch_size=4", "mini_batch_size=2", "grad_accum=1", "rollout.max_new_tokens=12",
        "rollout.generation_batch_size=4", "kl.horizon=16", "report_to=[none]", "log.progress=false",
        "save_steps=1", "log.sample_every=1")],
    "eval.num_prompts=4", "eval.max_new_tokens=12", "eval.batch_size=4",
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_of(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


# --------------------------------------------------------------------------- instructgpt.yaml


def test_instructgpt_recipe_is_one_coherent_loop(monkeypatch):
    """As shipped: hub ids, QLoRA everywhere, one shared base, train prompts for RL, held-out prompts for eval."""
    monkeypatch.chdir(REPO)
    r = load_recipe(RECIPES / "instructgpt.yaml")
    base = r.sft.model.name
    assert base.count("/") == 1 and not Path(base).exists()  # a hub id
    for model in (r.sft.model, r.rank.policy, r.reward.model, r.ppo.policy, r.dpo.model):
        assert model.quantization == "4bit"
    assert r.reward.model.name == base and r.ppo.policy.name == "@sft"  # reward adapter on the policy's base
    assert r.ppo.reward.source == "@reward" and r.ppo.reward.share_base
    assert r.reward.data == "@rank" and r.rank.judge.type == "gold"
    assert r.rank.prompts.where == {"split": "train"} == r.ppo.prompts.where
    assert r.ppo.train.kl.adaptive and 4 <= r.rank.k <= 9
    assert r.eval.prompts == "gold:heldout" and r.eval.reference == "@sft" and r.eval.reward_model == "@reward"
    assert set(r.eval.policies.values()) == {"@sft", "@ppo", "@dpo"}
    assert r.dpo.model.name == "@sft" and r.dpo.data == "@rank"  # the offline arm on exactly the same rankings


def test_instructgpt_shrunken_end_to_end(tmp_path, align_cache):
    run = tmp_path / "run"
    records = run_recipe(RECIPES / "instructgpt.yaml", run, TINY_INSTRUCTGPT)
    assert [(r.name, r.status) for r in records] == [(s, "ran") for s in STAGES]
    assert all((run / s / "COMPLETE").exists() for s in STAGES)
    used = load_recipe(run / "recipe.yaml")  # the resolved recipe: tiny-llama everywhere
    assert {used.sft.model.name, used.reward.model.name} == {"tiny-llama"}

    sft = metrics_of(run, "sft")
    assert sft["steps"] == 4 and sft["quantization"] == "4bit" and sft["eval_examples"] > 0
    assert (run / "sft" / "model" / "adapter_config.json").exists()

    rankings = read_jsonl(run / "rank" / "rankings.jsonl")
    assert len(rankings) == 8 and all(len(r["responses"]) == 3 and len(r["scores"]) == 3 for r in rankings)
    assert all(sorted(i for g in r["ranking"] for i in (g if isinstance(g, list) else [g])) == [0, 1, 2]
               for r in rankings)
    gold_train = {json.loads(line)["prompt"] for line in (REPO / "eval/gold_prompts.jsonl").read_text().splitlines()
                  if json.loads(line)["split"] == "train"}
    assert {r["prompt"] for r in rankings} <= gold_train  # never a held-out prompt

    reward = metrics_of(run, "reward")
    # tiny-llama's samples mostly tie on the gold score; prompts whose K samples all tie teach nothing
    assert reward["prompts"] + reward["heldout_prompts"] + reward["skipped_all_tied"] == 8
    assert reward["steps"] == 4 and reward["train_pairs"] > 0 and 0 <= reward["accuracy"] <= 1
    meta = json.loads((run / "reward" / "model" / "align_reward.json").read_text())
    assert meta["adapter"] is True and meta["quantization"] == "4bit"  # a QLoRA reward adapter

    ppo = metrics_of(run, "ppo")
    assert ppo["steps"] == 2 and len(read_jsonl(run / "ppo" / "stats.jsonl")) == 2
    assert ppo["reward"] == "reward_adapter_on_shared_base"  # one copy of the base for every role
    assert ppo["ref_policy"] == "ref_adapter"  # KL against the SFT adapter, not the bare base
    assert "gold_score" in ppo and "final_kl_coef" in ppo  # gold_fn logged; adaptive KL ran
    assert (run / "ppo" / "model" / "adapter_config.json").exists() and read_jsonl(run / "ppo" / "samples.jsonl")

    dpo = metrics_of(run, "dpo")
    assert dpo["steps"] == 4 and dpo["quantization"] == "4bit" and dpo["policy"] == "continued adapter"
    assert dpo["reference"].startswith("the starting adapter")  # the frozen SFT adapter on the shared base
    assert (run / "dpo" / "model" / "adapter_config.json").exists()

    ev = metrics_of(run, "eval")
    assert ev["n_prompts"] == 4 and set(ev["policies"]) == {"sft", "ppo", "dpo"}
    for name in ("sft", "ppo", "dpo"):
        entry = ev["policies"][name]
        for key in ("gold_score", "strict_accuracy", "reward_score", "kl"):
            assert isinstance(entry[key], float), (name, key)
    assert abs(ev["policies"]["sft"]["kl"]) < 1e-4  # the SFT policy against itself
    assert "win_rate_vs_sft" in ev["policies"]["ppo"] and "win_rate" in ev
    rows = read_jsonl(run / "eval" / "responses.jsonl")
    assert len(rows) == 4 and all("sft" in row and "ppo" in row and "dpo" in row for row in rows)

    report = (run / "report.md").read_text()
    assert re.findall(r"^## (\w+)$", report, re.M) == STAGES  # after the result, one section per stage
    assert report.index("## Result: each policy against sft") < report.index("## sft")
    assert (run / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # 2-4 logged steps per stage: their curves are numbers, not lines; ppo's and dpo's gains over sft: a plot
    assert "- training loss: " in report.split("## sft")[1] and "- objective/scores: " in report.split("## ppo")[1]
    plots = {p.name for p in (run / "plots").glob("*.png")}
    assert "eval_gain.png" in plots and all(f"plots/{name}" in report for name in plots)


def test_instructgpt_reward_from_anthropic_hh_transcripts(tmp_path, align_cache):
    """The documented HH variant: rank=null, preferences = an HH file; the reward stage alone."""
    hh = tmp_path / "hh.jsonl"
    pairs = [
        ("What is the capital of France?", "The capital of France is Paris.", "idk lol"),
        ("Name a primary colour.", "Red is a primary colour.", "Bananas!!!"),
        ("How many legs does a spider have?", "A spider has eight legs.", "maybe 3???"),
        ("Say hello in Spanish.", "Hola.", "no"),
        ("What do bees make?", "Bees make honey and wax.", "cars"),
        ("Is ice cold?", "Yes, ice is cold.", "..."),
    ]
    lines = [json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}", "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
             for q, good, bad in pairs]
    # a multi-turn conversation: both transcripts share every turn before the last Assistant turn
    history = "\n\nHuman: Hi!\n\nAssistant: Hello! How can I help?\n\nHuman: Recommend a book."
    lines.append(json.dumps({"chosen": history + "\n\nAssistant: Try 'The Hobbit'.",
                             "rejected": history + "\n\nAssistant: No."}))
    hh.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    records = run_recipe(RECIPES / "instructgpt.yaml", run, [*TINY_INSTRUCTGPT, "rank=null", f"vars.preferences={hh}"],
                         only="reward")
    assert [(r.name, r.status) for r in records] == [
        ("sft", "not run"), ("reward", "ran"), ("dpo", "not run"), ("ppo", "not run"), ("eval", "not run")]  # no rank stage at all
    reward = metrics_of(run, "reward")
    assert reward["prompts"] + reward["heldout_prompts"] == 7 and reward["train_pairs"] >= 5
    assert reward["accuracy_by_k"] and set(reward["accuracy_by_k"]) == {"2"}  # HH pairs are rankings with K=2


# --------------------------------------------------------------------------- alpaca.yaml


def test_alpaca_shrunken_over_a_local_openai_server(tmp_path, monkeypatch, align_cache):
    secret = f"sk-align-e2e-{uuid.uuid4().hex}"
    monkeypatch.setenv("ALIGN_TEST_ALPACA_KEY", secret)
    backend = ScriptedBackend()
    with running_scripted_server(secret, backend) as srv:
        run = tmp_path / "run"
        records = run_recipe(RECIPES / "alpaca.yaml", run, [
            f"vars.teacher_url={srv.url}", "vars.teacher_model=scripted", "vars.teacher_key_env=ALIGN_TEST_ALPACA_KEY",
            "vars.base=tiny-llama", "vars.quantization=none",
            "self_instruct.num_instructions=6", "self_instruct.sampling.request_batch_size=2",
            "self_instruct.teacher.retry_backoff_s=0.01",
            "sft.train.max_steps=3", "sft.train.batch_size=2", "sft.train.grad_accum=1", "sft.train.max_length=128",
            "sft.train.gradient_checkpointing=false", "sft.train.report_to=[none]", "sft.train.logging_steps=1",
        ])
    assert [(r.name, r.status) for r in records] == [("self_instruct", "ran"), ("sft", "ran")]
    assert srv.stats["status_200"] > 0 and srv.stats.get("status_401", 0) == 0  # the key from the env was sent
    si = metrics_of(run, "self_instruct")
    assert si["kept"] == 6 and si["complete"] is True and si["instances"] == 6  # Alpaca: one instance per task
    # chat endpoint: each teacher call (request_batch_size=2 prompts) is 2 HTTP requests of one prompt each
    assert backend.teacher.calls == srv.stats["status_200"] == 2 * si["teacher_calls"]
    data = json.loads(Path(records[0].outputs["data"]).read_text())
    assert len(data) == 6 and all(set(d) == {"instruction", "input", "output"} for d in data)
    sft = metrics_of(run, "sft")
    assert sft["steps"] == 3 and sft["examples"] + sft["eval_examples"] == 6
    adapter = json.loads((run / "sft" / "model" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    for path in run.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path


def running_scripted_server(api_key: str, backend: ScriptedBackend):
    from align.sharing.serve import running_server

    return running_server("scripted", backend=backend, api_key=api_key)


# --------------------------------------------------------------------------- memory claims


@pytest.mark.parametrize(("recipe", "budget_gib"), [
    ("alpaca-qlora-8gb.yaml", 8), ("instructgpt-qlora-24gb.yaml", 24), ("instructgpt.yaml", 16)])
def test_sized_recipes_fit_and_their_comments_quote_align_plan(recipe, budget_gib, monkeypatch):
    from align.plan import GIB, format_bytes, plan_recipe

    monkeypatch.chdir(REPO)
    path = RECIPES / recipe
    estimates = plan_recipe(load_recipe(path).model_dump(), "cuda", budget_gib * GIB)
    assert estimates and all(e.total <= budget_gib * GIB for e in estimates), [(e.stage, e.total) for e in estimates]
    comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    quoted = set(re.findall(r"\d+\.\d+ GiB", comments))
    for est in estimates:
        if est.total:
            assert format_bytes(est.total) in quoted, f"{recipe}: update the {est.stage} estimate in the comments"
