"""Self-Instruct end to end: the stage through `align run` and `align self-instruct`, over a real HTTP
server; resuming after SIGKILL; the API key never reaching a file or a log; a real tiny model teacher."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from test_self_instruct_scripted import ScriptedBackend, ScriptedTeacher, read_jsonl

from align.sharing.serve import ModelBackend, running_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_stage_over_http_never_leaks_the_api_key(tmp_path, monkeypatch, caplog, capfd):
    from align.data import load_examples
    from align.runner import run_recipe

    secret = f"sk-align-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("ALIGN_TEST_TEACHER_KEY", secret)
    caplog.set_level(logging.DEBUG)  # openai / httpx debug logs included
    with running_server("scripted", backend=ScriptedBackend(), api_key=secret, fail_first={"429": 1}) as srv:
        recipe = tmp_path / "si.yaml"
        recipe.write_text(textwrap.dedent(f"""\
            name: si-http
            seed: 1
            self_instruct:
              teacher: {{type: openai, model: scripted, base_url: "{srv.url}", api_key_env: ALIGN_TEST_TEACHER_KEY,
                         endpoint: completions, retry_backoff_s: 0.01, max_concurrency: 2}}
              num_instructions: 6
              sampling: {{request_batch_size: 2}}
            """))
        (record,) = run_recipe(recipe, tmp_path / "run")
    assert record.status == "ran"
    assert record.metrics["kept"] == 6 and record.metrics["complete"] is True
    assert record.metrics["dropped/near_duplicate"] > 0
    assert srv.stats["status_429"] == 1 and srv.stats.get("status_401", 0) == 0  # key sent, 429 retried
    examples = load_examples(record.outputs["data"])
    assert len(examples) == record.metrics["instances"]
    assert {Path(record.outputs[k]).name for k in ("alpaca", "chat", "self_instruct")} == {
        "alpaca_data.json", "chat_data.jsonl", "self_instruct_data.jsonl"}
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "log.txt" for p in files) and any(p.name == "config.yaml" for p in files)
    for path in files:
        assert secret not in path.read_text(errors="ignore"), path
    assert "ALIGN_TEST_TEACHER_KEY" in (tmp_path / "run" / "self_instruct" / "config.yaml").read_text()
    out, err = capfd.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in err


def test_cli_self_instruct_with_a_chat_endpoint(tmp_path, capsys):
    from align.cli import main

    backend = ScriptedBackend()
    with running_server("scripted", backend=backend) as srv:
        code = main(["self-instruct", "--teacher-url", srv.url, "--teacher-model", "scripted",
                     "--num-instructions", "5", "--out", str(tmp_path / "si")])
    assert code == 0
    assert "5/5 instructions" in capsys.readouterr().out
    stats = json.loads((tmp_path / "si" / "stats.json").read_text())
    assert stats["kept"] == 5 and stats["complete"] is True
    assert srv.stats["status_200"] == backend.teacher.calls > stats["teacher_calls"]  # chat: one request per prompt
    config = json.loads((tmp_path / "si" / "config.json").read_text())
    assert config["teacher"]["type"] == "openai" and config["teacher"]["endpoint"] is None


def test_cli_reports_an_incomplete_run_with_exit_code_1(tmp_path, capsys):
    from align.cli import main

    with running_server("scripted", backend=ScriptedBackend(ScriptedTeacher(useless=True))) as srv:
        code = main(["self-instruct", "--teacher-url", srv.url, "--teacher-model", "scripted",
                     "--num-instructions", "5", "--out", str(tmp_path / "si")])
    assert code == 1
    assert "0/5 instructions" in capsys.readouterr().out
    assert json.loads((tmp_path / "si" / "stats.json").read_text())["complete"] is False


def test_stage_fails_clearly_when_incomplete(tmp_path):
    from align.errors import AlignError
    from align.runner import run_recipe

    with running_server("scripted", backend=ScriptedBackend(ScriptedTeacher(useless=True))) as srv:
        recipe = tmp_path / "si.yaml"
        recipe.write_text(textwrap.dedent(f"""\
            name: si-useless
            self_instruct:
              teacher: {{type: openai, model: scripted, base_url: "{srv.url}"}}
              num_instructions: 3
              sampling: {{max_idle_rounds: 2}}
            """))
        with pytest.raises(AlignError, match=r"max_idle_rounds.*run again to continue"):
            run_recipe(recipe, tmp_path / "run")
    stats = json.loads((tmp_path / "run" / "self_instruct" / "stats.json").read_text())
    assert stats["complete"] is False
    assert not (tmp_path / "run" / "self_instruct" / "COMPLETE").exists()


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from test_self_instruct_scripted import ScriptedTeacher
from align.data_gen.generate import SelfInstructSettings, generate
from align.data_gen.seeds import load_seed_tasks
result = generate(ScriptedTeacher(delay_s=0.1), load_seed_tasks(), {out!r}, num_instructions=24,
                  config=SelfInstructSettings(request_batch_size=1), progress=False)
print("COMPLETE" if result.complete else "INCOMPLETE", len(result.records))
"""


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "si"
    script = tmp_path / "run_si.py"
    script.write_text(RESUME_SCRIPT.format(here=str(HERE), out=str(out)))
    records_file = out / "machine_generated.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300  # a hang guard: 6 records come after a few seconds
    while time.time() < deadline and proc.poll() is None:
        if records_file.exists() and len(records_file.read_bytes().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_jsonl(records_file)
    assert 6 <= len(before) < 24
    with open(records_file, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"id": "gen_task_99", "instruction": "Half a rec')

    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["COMPLETE", "24"]
    after = read_jsonl(records_file)  # every line parses: the torn tail was repaired
    assert len(after) == 24
    assert after[: len(before)] == before  # nothing written before the kill was lost or changed
    assert len({r["instruction"] for r in after}) == 24
    assert [r["id"] for r in after] == [f"gen_task_{i}" for i in range(24)]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["complete"] is True and stats["kept"] == 24 and stats["resumed_from"] == len(before)
    assert stats["filters"]["dropped"]["near_duplicate"] > 0  # the restarted teacher repeated itself


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    return ModelBackend("tiny-llama")


def test_real_tiny_model_server_run_stops_cleanly(tmp_path, tiny_backend):
    """A real model over real HTTP: tiny-llama writes noise, so the run must end, incomplete, and say why."""
    from align.data_gen.generate import SelfInstructSettings, generate
    from align.data_gen.seeds import load_seed_tasks
    from align.teachers import make_teacher

    with running_server("tiny-llama", backend=tiny_backend) as srv:
        teacher = make_teacher({"type": "openai", "model": "tiny-llama", "base_url": srv.url, "endpoint": "completions",
                                "batch_size": 4})
        cfg = SelfInstructSettings(request_batch_size=4, bootstrap={"max_tokens": 24}, instances={"max_tokens": 24},
                               max_idle_rounds=2, max_teacher_calls=6)
        result = generate(teacher, load_seed_tasks(), tmp_path, num_instructions=3, config=cfg, seed=5, progress=False)
    assert srv.stats["status_200"] == teacher.attempts >= 2
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["complete"] is False and stats["kept"] == len(result.records) < 3
    assert stats["stop_reason"] and ("max_idle_rounds" in stats["stop_reason"] or
                                     "max_teacher_calls" in stats["stop_reason"])
    assert stats["raw_generations"] == stats["filters"]["total"]
    assert not (tmp_path / "alpaca_data.json").exists()  # an incomplete run exports no training data
    assert stats["truncated_generations"] > 0  # 24-token budgets: tiny-llama's texts are cut off


def test_shipped_recipe_validates():
    from align.config import load_recipe

    recipe = load_recipe(REPO / "recipes" / "self-instruct.yaml")
    cfg = recipe.self_instruct
    assert cfg.teacher.type == "local" and cfg.teacher.model == "smollm2-135m-instruct"
    assert recipe.sft is None and recipe.ppo is None  # data generation only
