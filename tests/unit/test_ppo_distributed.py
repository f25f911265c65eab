"""Data-parallel PPO helpers without a process group: query shards, batch-size checks, gathering rollouts."""

from __future__ import annotations

import pytest
import torch

from align.errors import AlignError
from align.ppo import distributed
from align.ppo.config import PPOSettings
from align.ppo.queries import QuerySampler
from align.ppo.rollout import Rollouts
from align.ppo.update import rows_per_process


def test_query_shards_are_the_single_process_batch_in_rank_order():
    sampler = QuerySampler(n=7, batch_size=4, seed=3)
    for step in range(5):  # crosses passes over the 7 prompts
        shards = [sampler.indices(step, rank, 2) for rank in range(2)]
        assert shards[0] + shards[1] == sampler.indices(step)
        assert len(shards[0]) == len(shards[1]) == 2
    with pytest.raises(AlignError, match=r"4 queries per step.*world size \(3\)"):
        sampler.indices(0, 0, 3)


def test_batch_sizes_must_split_across_processes():
    s = PPOSettings(rollout={"batch_size": 12}, mini_batch_size=6, grad_accum=1)
    assert rows_per_process(s, 1) == 6 and rows_per_process(s, 2) == 3 and rows_per_process(s, 3) == 2
    with pytest.raises(AlignError, match=r"ppo\.train\.mini_batch_size \(6\) must be a multiple of the world size \(4"):
        rows_per_process(s, 4)
    with pytest.raises(AlignError, match=r"ppo\.train\.rollout\.batch_size \(12\) and ppo\.train\.mini_batch_size \(6\).*\(5 processes\)"):
        rows_per_process(s, 5)


def rollouts(query_lens: list[int], response_lens: list[int], pad: int = 0, offset: int = 0) -> Rollouts:
    """Left-padded queries and right-padded responses of the given lengths; values identify the row."""
    B, P, R = len(query_lens), max(query_lens), max(response_lens)
    q_ids, q_mask = torch.full((B, P), pad), torch.zeros((B, P), dtype=torch.long)
    r_ids, r_mask = torch.full((B, R), pad), torch.zeros((B, R), dtype=torch.bool)
    per_token = torch.zeros(B, R)
    for i, (q, r) in enumerate(zip(query_lens, response_lens)):
        q_ids[i, P - q :], q_mask[i, P - q :] = 10 + offset + i, 1
        r_ids[i, :r], r_mask[i, :r] = 100 + offset + i, True
        per_token[i, :r] = offset + i + 0.5
    rows = torch.arange(B, dtype=torch.float32) + offset
    return Rollouts(
        queries=[[{"role": "user", "content": f"q{offset + i}"}] for i in range(B)], query_ids=q_ids,
        query_mask=q_mask, response_ids=r_ids, response_mask=r_mask, has_eos=torch.tensor([r % 2 == 0 for r in response_lens]),
        responses=[f"r{offset + i}" for i in range(B)], raw_scores=rows, scores=rows * 2, logprobs=per_token,
        ref_logprobs=per_token * 2, values=per_token * 3, gold=None,
    )


def test_concat_rollouts_builds_the_whole_batch_layout():
    whole = rollouts([3, 5, 2, 2], [4, 1, 2, 3], pad=7)
    parts = [rollouts([3, 5], [4, 1], pad=7), rollouts([2, 2], [2, 3], pad=7, offset=2)]
    assert parts[1].query_ids.shape == (2, 2) and parts[1].response_ids.shape == (2, 3)  # narrower than the whole
    merged = distributed.concat_rollouts(parts, pad_id=7)
    for name in ("query_ids", "query_mask", "response_ids", "response_mask", "has_eos", "raw_scores", "scores",
                 "logprobs", "ref_logprobs", "values"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert merged.queries == whole.queries and merged.responses == whole.responses and merged.gold is None
    parts[1].gold = torch.ones(2)
    with pytest.raises(AlignError, match="gold is set on some processes only"):
        distributed.concat_rollouts(parts, pad_id=7)


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.is_initialized() and not distributed.init_from_env()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(5) == 5
    assert distributed.all_reduce_stats({"x": 1.5}) == {"x": 1.5}
    r = rollouts([2], [2])
    assert distributed.gather_rollouts(r, pad_id=0) is r
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.reduce_gradients([p], average=True)
    distributed.broadcast_parameters([p])
    distributed.barrier()
    assert torch.equal(p.grad, torch.full((2,), 3.0))
