"""Every script in examples/ runs, on tiny-llama and the shared tiny run, and does what it says.

Each example takes its model / run / recipe paths as arguments (defaults are for real runs); here they get
the tiny ones. The scripts run in this process (runpy) to save the interpreter start-up.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from test_self_instruct_scripted import ScriptedBackend

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TINY_PPO = ["ppo.prompts.max_samples=4", *[f"ppo.train.{key}" for key in (
    "steps=1", "rollout.batch_size=2", "mini_batch_size=2", "rollout.max_new_tokens=8", "ppo_epochs=1",
    "report_to=[none]", "save_steps=1", "log.sample_every=1", "log.progress=false", "log.gold_fn=null")]]


@pytest.fixture(autouse=True)
def _shipped_constraint_types_only():
    """An example may register a constraint type (custom_constraint.py); the tests after it see the shipped set."""
    from align.eval.constraints import CONSTRAINT_TYPES

    before = dict(CONSTRAINT_TYPES)
    yield
    CONSTRAINT_TYPES.clear()
    CONSTRAINT_TYPES.update(before)


def run_example(name: str, *argv: str):
    """Run examples/<name>'s main() as `python examples/<name> ARGV` would; returns what main returned."""
    module = runpy.run_path(str(EXAMPLES / name), run_name=f"example_{name[:-3]}")
    old = sys.argv
    sys.argv = [str(EXAMPLES / name), *argv]
    try:
        return module["main"](list(argv))
    finally:
        sys.argv = old


def test_every_example_is_listed_and_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    listed = (EXAMPLES / "README.md").read_text()
    assert scripts and all(f"`{s}`" in listed for s in scripts)
    tested = Path(__file__).read_text()
    assert all(f'"{s}"' in tested for s in scripts)


def test_run_recipe(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(REPO)
    records = run_example("run_recipe.py", "recipes/sft-tiny.yaml", "--out", str(tmp_path / "run"),
                          "sft.train.max_steps=1")
    assert [(r.name, r.status) for r in records] == [("sft", "ran")]
    assert (tmp_path / "run" / "sft" / "model" / "README.md").exists()


def test_chat_with_adapter_matches_aligns_own_generation(tiny_pipeline_run, one_thread):
    from align.generation import generate_chat
    from align.models import load_for_generation

    prompts = ["Give three tips for staying healthy.", "What is the capital of France?"]
    for stage in ("ppo", "dpo"):
        model_dir = str(tiny_pipeline_run / stage / "model")
        answers = run_example("chat_with_adapter.py", model_dir, "--max-new-tokens", "10",
                              *[a for p in prompts for a in ("--prompt", p)])
        model, tokenizer = load_for_generation(model_dir)
        expected = generate_chat(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                                 max_new_tokens=10, temperature=0.0)
        assert answers == [e.strip() for e in expected]


def test_score_with_reward_model_matches_align(tiny_pipeline_run, tmp_path, one_thread):
    from align.preferences.reward_model import load_reward_model

    rows = [{"prompt": "Name a colour.", "response": r} for r in ("Blue.", "Seven dogs ran", "Green, like grass.")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tiny_pipeline_run / "reward" / "model"
    scores = run_example("score_with_reward_model.py", str(folder), "--file", str(tmp_path / "pairs.jsonl"))
    expected = load_reward_model(folder).score([[{"role": "user", "content": r["prompt"]}] for r in rows],
                                               [r["response"] for r in rows])
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len({round(s, 5) for s in scores}) == 3


def test_custom_reward_drives_ppo(tiny_pipeline_run, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    records = run_example("custom_reward.py", "recipes/ppo-tiny.yaml", "--out", str(run), "sft=null", "rank=null",
                          "reward=null", f"ppo.policy='{tiny_pipeline_run / 'sft' / 'model'}'", *TINY_PPO)
    assert [(r.name, r.status) for r in records] == [("ppo", "ran")]
    fn = runpy.run_path(str(EXAMPLES / "custom_reward.py"))["concise_answer"]
    sample = json.loads((run / "ppo" / "samples.jsonl").read_text().splitlines()[0])
    assert records[0].metrics["reward"] == "function"
    assert sample["score"] == pytest.approx(fn(sample["prompt"], sample["response"]), abs=1e-6)
    assert fn("q", " ".join(["word"] * 19) + ".") > fn("q", "word") and -1 <= fn("q", "") <= 1


def test_custom_judge_ranks_in_the_rank_stage(tiny_pipeline_run, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    records = run_example("custom_judge.py", "recipes/reward-tiny.yaml", "--out", str(run), "sft=null",
                          "reward=null", f"rank.policy='{tiny_pipeline_run / 'sft' / 'model'}'",
                          "rank.prompts.max_samples=4", "rank.k=3", "rank.max_new_tokens=8")
    assert [(r.name, r.status) for r in records] == [("rank", "ran")]
    fn = runpy.run_path(str(EXAMPLES / "custom_judge.py"))["on_topic"]
    rankings = [json.loads(line) for line in (run / "rank" / "rankings.jsonl").read_text().splitlines()]
    assert rankings
    for row in rankings:
        scores = [fn(row["prompt"], r) for r in row["responses"]]
        assert row["scores"] == pytest.approx(scores)
        best = row["ranking"][0] if isinstance(row["ranking"][0], list) else [row["ranking"][0]]
        assert all(scores[i] == max(scores) for i in best)
    assert fn("Explain photosynthesis in plants.", "Plants use photosynthesis.") > fn("Explain photosynthesis.", "Hi.")


def test_custom_constraint_scores_prompts_and_serves_as_a_judge(tmp_path, monkeypatch):
    from align.preferences.judges import GoldJudgeConfig, make_judge

    path = tmp_path / "my_gold.jsonl"
    monkeypatch.setenv("GOLD_PROMPTS", str(path))
    scores = run_example("custom_constraint.py", "--out", str(path))
    assert scores == [1.0, 0.0, 0.5]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(any(c["type"] == "custom:sign_off" for c in r["constraints"]) for r in records)
    judge = make_judge(GoldJudgeConfig(function=f"{EXAMPLES / 'custom_constraint.py'}:gold"))  # as a recipe names it
    prompt = records[0]["prompt"]
    ranking = judge.rank([prompt], [["A short answer.", "A short answer.\n-- Ada"]])[0]
    assert ranking[0] == [1]


def test_self_instruct_from_a_local_openai_server(tmp_path, monkeypatch):
    from align.sharing.serve import running_server

    monkeypatch.setenv("EXAMPLE_TEACHER_KEY", "sk-example-test")
    with running_server("scripted", backend=ScriptedBackend(), api_key="sk-example-test") as srv:
        result = run_example("self_instruct_openai.py", "--base-url", srv.url, "--model", "scripted",
                             "--api-key-env", "EXAMPLE_TEACHER_KEY", "--num-instructions", "4",
                             "--out", str(tmp_path / "si"))
    assert srv.stats["status_200"] > 0 and srv.stats.get("status_401", 0) == 0
    assert result.metrics["kept"] == 4 and result.metrics["complete"]
    data = json.loads(Path(result.outputs["data"]).read_text())
    assert len(data) == 4 and all(d["instruction"] and d["output"] for d in data)
