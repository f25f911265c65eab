"""The reward model's ranking loss and per-prompt batching, on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from align.rankings import PromptGroup
from align.reward_model import collate_groups, normalization_stats, pair_metrics, ranking_loss


def test_loss_matches_hand_computed_value_and_weighs_prompts_equally():
    # Prompt 0: rewards r = [2, 0, 1], ranking 0 > 2 > 1 → pairs (0,1), (0,2), (2,1) with r_b − r_w = 2, 1, 1.
    #   −log σ(2) = log(1 + e^−2) = 0.126928;  −log σ(1) = 0.313262
    #   prompt mean = (0.126928 + 2 × 0.313262) / 3 = 0.251150
    # Prompt 1: rewards [0.5, −0.5], response 1 ranked better → r_b − r_w = −1 → −log σ(−1) = 1.313262
    # Loss = (0.251150 + 1.313262) / 2 = 0.782206   (a plain mean over the 4 pairs would be 0.516678)
    rewards = torch.tensor([2.0, 0.0, 1.0, 0.5, -0.5])
    better = torch.tensor([0, 0, 2, 4])
    worse = torch.tensor([1, 2, 1, 3])
    pair_prompt = torch.tensor([0, 0, 0, 1])
    loss = ranking_loss(rewards, better, worse, pair_prompt)
    assert loss.item() == pytest.approx(0.782206, abs=1e-6)
    assert loss.item() != pytest.approx(0.516678, abs=1e-3)


def test_loss_with_margin():
    # margin 0.5: diffs become 1.5, 0.5, 0.5 and −1.5:
    #   prompt 0 = (0.201413 + 2 × 0.474077) / 3 = 0.383189;  prompt 1 = −log σ(−1.5) = 1.701413
    #   loss = (0.383189 + 1.701413) / 2 = 1.042301
    rewards = torch.tensor([2.0, 0.0, 1.0, 0.5, -0.5])
    loss = ranking_loss(rewards, torch.tensor([0, 0, 2, 4]), torch.tensor([1, 2, 1, 3]), torch.tensor([0, 0, 0, 1]),
                        margin=0.5)
    assert loss.item() == pytest.approx(1.042301, abs=1e-6)


def test_loss_gradient_pushes_better_up_and_worse_down():
    rewards = torch.zeros(3, requires_grad=True)
    ranking_loss(rewards, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), torch.tensor([0, 0, 0])).backward()
    # d/dr of mean −log σ(r_b − r_w) at 0: each pair contributes ∓0.5/3
    assert rewards.grad.tolist() == pytest.approx([-1 / 3, 0.0, 1 / 3])


def test_collate_has_one_row_per_response_and_global_pair_indices():
    def feature(lengths, pairs):
        return {"responses": [{"input_ids": list(range(5, 5 + n))} for n in lengths], "pairs": pairs, "k": len(lengths)}

    # prompt A: K=3, ranking 2 > 0 > 1 (3 pairs); prompt B: K=2 (1 pair); prompt C: K=4 with a tie (5 pairs)
    batch = collate_groups([
        feature([3, 5, 2], [[2, 0], [2, 1], [0, 1]]),
        feature([4, 1], [[1, 0]]),
        feature([2, 2, 2, 6], [[0, 1], [0, 3], [0, 2], [1, 2], [3, 2]]),
    ], pad_token_id=0)
    assert batch["input_ids"].shape == (9, 6)  # 3 + 2 + 4 responses, each exactly once (not 2 × 9 pair rows)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 2, 4, 1, 2, 2, 2, 6]
    assert batch["input_ids"][2].tolist() == [5, 6, 0, 0, 0, 0]  # right padding
    assert batch["better"].tolist() == [2, 2, 0, 4, 5, 5, 5, 6, 8]
    assert batch["worse"].tolist() == [0, 1, 1, 3, 6, 8, 7, 7, 7]
    assert batch["pair_prompt"].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 2]


def test_pair_metrics_accuracy_by_k_and_margin():
    groups = [PromptGroup([{"role": "user", "content": "a"}], ["x", "y", "z"], [(0, 1), (0, 2), (1, 2)], 3),
              PromptGroup([{"role": "user", "content": "b"}], ["x", "y"], [(0, 1)], 2)]
    m = pair_metrics([[3.0, 1.0, 2.0], [0.0, 0.0]], groups)
    # K=3: 3>1 yes, 3>2 yes, 1>2 no → 2/3; K=2: tie → 0.5; overall (2 + 0.5) / 4
    assert m["accuracy"] == pytest.approx(0.625)
    assert m["accuracy_by_k"] == {"2": 0.5, "3": pytest.approx(0.6667, abs=1e-4)}
    assert m["mean_margin"] == pytest.approx((2 + 1 - 1 + 0) / 4)
    assert m["fully_ordered"] == 0.0


def test_normalization_stats():
    assert normalization_stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}
