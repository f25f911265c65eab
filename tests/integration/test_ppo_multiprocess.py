"""Data-parallel PPO on CPU (gloo): two processes take exactly the update one process takes, and a recipe
runs, logs once and resumes under torchrun.

The exactness test starts the two workers itself (RANK / WORLD_SIZE / MASTER_* in the environment, as
torchrun sets them), which exercises align.ppo.distributed.init_from_env and is faster than torchrun.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
QUERIES = [[{"role": "user", "content": text}] for text in (
    "Tell me about the sea.", "Write a short poem about autumn leaves.", "Give three tips for sleeping well.",
    "Describe a cat.", "How do plants grow?", "Why is the sky blue?", "Name a color.", "Say something.",
)]  # the long ones in the first half: rank 1's queries are narrower, and the gather must pad them
SETTINGS = dict(mini_batch_size=4, grad_accum=2, ppo_epochs=2, lr=1e-2,
                rollout={"batch_size": 8, "max_new_tokens": 10, "temperature": 0.9}, kl={"init_coef": 0.05},
                report_to=["none"], log={"progress": False})
KL_COEF = 0.05

pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_roles():
    from align.models import AdapterConfig, ModelConfig
    from align.ppo.policy import load_roles

    torch.manual_seed(0)
    return load_roles(ModelConfig(name="tiny-llama"), AdapterConfig(r=4, alpha=8, dropout=0.0))


def trainable(roles) -> dict[str, torch.Tensor]:
    named = {n: p.detach().clone() for n, p in roles.model.named_parameters() if p.requires_grad}
    named.update({f"value_head.{n}": p.detach().clone() for n, p in roles.value_head.named_parameters()})
    return named


def shard(r, rows: slice):
    """Rows of a Rollouts with the columns that are padding in all of them dropped, as a process that
    rolled out only those queries would have them (narrower queries and responses)."""
    q_mask, r_mask = r.query_mask[rows], r.response_mask[rows]
    first = int(q_mask.any(dim=0).long().argmax())
    width = max(int(r_mask.sum(dim=1).max()), 1)
    out = {}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, torch.Tensor) and v.dim() == 2:
            v = v[rows, first:] if f.name.startswith("query") else v[rows, :width]
        elif isinstance(v, dict):  # per-phase timings: not per row
            v = dict(v)
        elif v is not None:
            v = v[rows]
        out[f.name] = v
    return type(r)(**out)


def update(roles, r) -> tuple[dict[str, float], bool]:
    from align.ppo.config import PPOSettings
    from align.ppo.update import estimate_advantages, step_with_rollouts

    s = PPOSettings(**SETTINGS)
    optimizer = torch.optim.AdamW(roles.trainable_parameters(), lr=s.lr, eps=s.adam_eps)
    adv = estimate_advantages(r, KL_COEF, s)
    return step_with_rollouts(roles, optimizer, r, adv, s, seed=0, step=0), adv.whitened


def worker(rollouts_file: str, out_file: str) -> None:
    """One of two processes: its shard of the rollouts -> gather -> advantages -> update."""
    from align.ppo import distributed

    torch.set_num_threads(1)
    assert distributed.init_from_env() and distributed.world_size() == 2
    rank = distributed.rank()
    roles = fresh_roles()
    full = torch.load(rollouts_file, weights_only=False)
    half = len(full) // 2
    local = shard(full, slice(rank * half, (rank + 1) * half))
    r = distributed.gather_rollouts(local, roles.tokenizer.pad_token_id)
    stats, whitened = update(roles, r)
    if rank == 0:
        torch.save({"params": trainable(roles), "stats": stats, "whitened": whitened}, out_file)
    distributed.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_update_equals_the_single_process_update(tiny_model_dir, tmp_path, reward_spec):
    from align.ppo.config import PPOSettings
    from align.ppo.rollout import encode_queries, rollout
    from align.ppo.scoring import FunctionScorer

    roles = fresh_roles()
    before = trainable(roles)
    torch.manual_seed(2)
    r = rollout(roles, FunctionScorer(reward_spec), QUERIES, encode_queries(roles.tokenizer, QUERIES),
                PPOSettings(**SETTINGS))
    assert r.scores.max() > r.scores.min()  # advantages get whitened: global statistics matter
    halves = [shard(r, slice(0, 4)), shard(r, slice(4, 8))]
    assert halves[0].query_ids.shape[1] > halves[1].query_ids.shape[1]
    torch.save(r, tmp_path / "rollouts.pt")
    single_stats, single_whitened = update(roles, r)
    single = trainable(roles)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_ppo_multiprocess as t; "
            f"t.worker({str(tmp_path / 'rollouts.pt')!r}, {str(tmp_path / 'multi.pt')!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(i), "LOCAL_RANK": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    multi = torch.load(tmp_path / "multi.pt", weights_only=False)

    assert single_whitened and multi["whitened"]
    assert max((single[n] - before[n]).abs().max().item() for n in before) > 1e-3, "the update did not move"
    assert single.keys() == multi["params"].keys()
    for name in single:
        torch.testing.assert_close(multi["params"][name], single[name], atol=1e-5, rtol=1e-4, msg=name)
    assert single_stats.keys() == multi["stats"].keys()
    for key, value in single_stats.items():  # logged stats are global means, not rank 0's
        assert multi["stats"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def recipe(tmp_path: Path) -> Path:
    (tmp_path / "len_reward.py").write_text("def score(prompt, response):\n    return float(len(response))\n")
    path = tmp_path / "ppo-ddp.yaml"
    path.write_text(f"""
name: ppo-ddp
seed: 0
sft:
  model: tiny-llama
  data: {REPO}/examples/data/alpaca_tiny.json
  adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
  train: {{max_steps: 2, batch_size: 2, max_length: 128, lr: 1.0e-3, report_to: [none], logging_steps: 1}}
ppo:
  policy: "@sft"
  reward: "{tmp_path / 'len_reward.py'}:score"
  prompts: {REPO}/examples/data/alpaca_tiny.json
  train: {{steps: 3, mini_batch_size: 2, ppo_epochs: 2, lr: 1.0e-3, save_steps: 2,
           rollout: {{batch_size: 4, max_new_tokens: 8}},
           report_to: [tensorboard], log: {{sample_every: 1, num_samples: 4, progress: false}}}}
""")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def torchrun(path: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "align.cli", "run", str(path),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed next to this Python")
def test_recipe_runs_and_resumes_under_torchrun(tiny_model_dir, tmp_path):
    path, out = recipe(tmp_path), tmp_path / "run"
    torchrun(path, out)
    ppo = out / "ppo"
    assert (ppo / "COMPLETE").exists() and (ppo / "model" / "adapter_model.safetensors").exists()
    assert (ppo / "log.rank1.txt").exists()  # really two processes
    assert json.loads((ppo / "metrics.json").read_text())["world_size"] == 2
    first = read(ppo / "stats.jsonl")
    assert [s["step"] for s in first] == [1, 2, 3]  # rank 0 logs, once per step
    samples = read(ppo / "samples.jsonl")
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 + [3] * 4  # the gathered batch: both shards
    assert len(list((ppo / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (ppo / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert (ppo / "checkpoints" / "step-2" / "rng.rank1.pt").exists()

    # as if killed during step 3: no COMPLETE, the stage still IN_PROGRESS, the newest checkpoint step-2
    digest = (ppo / "COMPLETE").read_text()
    (ppo / "COMPLETE").unlink()
    (ppo / "IN_PROGRESS").write_text(digest)
    shutil.rmtree(ppo / "checkpoints" / "step-3")
    shutil.rmtree(ppo / "model")
    torchrun(path, out)
    assert (ppo / "COMPLETE").exists() and (ppo / "model" / "adapter_model.safetensors").exists()
    summary = {s["name"]: s["status"] for s in json.loads((out / "summary.json").read_text())}
    assert summary == {"sft": "skipped", "ppo": "ran"}
    assert json.loads((ppo / "metrics.json").read_text())["resumed_from"].endswith("step-2")
    again = read(ppo / "stats.jsonl")
    assert [s["step"] for s in again] == [1, 2, 3]
    # each process resumed its own sampling stream: step 3 is the uninterrupted run's step 3
    for key in ("objective/scores", "objective/kl", "loss/total"):
        assert round(again[2][key], 5) == round(first[2][key], 5), key
    assert [s["response"] for s in read(ppo / "samples.jsonl")] == [s["response"] for s in samples]
