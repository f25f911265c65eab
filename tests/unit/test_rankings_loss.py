"""The reward model's ranking loss and per-prompt batching, on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from align.preferences.rankings import PromptGroup, group_by_prompt
from align.preferences.reward_model import (
    collate_groups,
    normalization_stats,
    pair_metrics,
    plackett_luce_loss,
    ranking_loss,
)


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
    assert m["prompts"] == 2 and m["pairs"] == 4
    low, high = m["accuracy_ci"]  # resampling the 2 prompts: 0.5 (only b), 2.5/4 (both) or 2/3 (only a)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.6667, abs=1e-4)


def test_normalization_stats():
    assert normalization_stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}


def test_plackett_luce_matches_hand_computed_value():
    # Prompt 0: rewards r = [2, 0, 1], ranking 0 > 2 > 1 (pairs (0,1), (0,2), (2,1)); PL picks 0 from {0, 1, 2},
    # then 2 from {1, 2}:
    #   term 0 = log(e^2 + e^0 + e^1) − 2 = log(11.107338) − 2 = 0.407606
    #   term 2 = log(e^1 + e^0) − 1 = 0.313262;  prompt mean over its K − 1 = 2 terms = 0.360434
    # Prompt 1 (K = 2, response 1 better): log(e^0.5 + e^−0.5) + 0.5 = 1.313262 = −log σ(−1), the pairwise loss
    # Loss = (0.360434 + 1.313262) / 2 = 0.836848   (the pairwise loss on the same data is 0.782206)
    rewards = torch.tensor([2.0, 0.0, 1.0, 0.5, -0.5])
    args = torch.tensor([0, 0, 2, 4]), torch.tensor([1, 2, 1, 3]), torch.tensor([0, 0, 0, 1])
    assert plackett_luce_loss(rewards, *args).item() == pytest.approx(0.836848, abs=1e-6)
    assert ranking_loss(rewards, *args).item() == pytest.approx(0.782206, abs=1e-6)


def test_plackett_luce_pair_order_does_not_matter():
    rewards = torch.tensor([2.0, 0.0, 1.0, 0.5, -0.5])
    shuffled = torch.tensor([4, 2, 0, 0]), torch.tensor([3, 1, 2, 1]), torch.tensor([1, 0, 0, 0])
    assert plackett_luce_loss(rewards, *shuffled).item() == pytest.approx(0.836848, abs=1e-6)


def test_plackett_luce_ties_compete_only_with_responses_below():
    # Ranking [[0, 1], [2]] with r = [1, 0, −1]: pairs (0, 2), (1, 2). Each tied response's term is the PL term it
    # gets when picked last in its group: 0 vs {2}: log(e^1 + e^−1) − 1 = −log σ(2) = 0.126928;
    # 1 vs {2}: −log σ(1) = 0.313262; mean 0.220095. Tie-mates never meet: r0 − r1 gets no gradient.
    rewards = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    loss = plackett_luce_loss(rewards, torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(0.220095, abs=1e-6)
    # [[0], [1, 2]]: one term, 0 chosen from all three: log(e^1 + e^0 + e^−1) − 1 = 0.407606
    one = plackett_luce_loss(rewards, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0, 0]))
    assert one.item() == pytest.approx(0.407606, abs=1e-6)
    loss.backward()
    g = rewards.grad.tolist()  # d/dr0 = −σ(−2)/2, d/dr1 = −σ(−1)/2, d/dr2 = −(d/dr0 + d/dr1)
    assert g == pytest.approx([-0.059601, -0.134471, 0.194073], abs=1e-6)


def test_plackett_luce_gradient_at_zero_by_hand():
    # r = 0, ranking 0 > 1 > 2: term 0 = log 3 − r0 → grad [−2/3, 1/3, 1/3]; term 1 = log(e^r1 + e^r2) − r1
    # → [0, −1/2, 1/2]; mean of the two terms → [−1/3, −1/12, 5/12]
    rewards = torch.zeros(3, requires_grad=True)
    plackett_luce_loss(rewards, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), torch.tensor([0, 0, 0])).backward()
    assert rewards.grad.tolist() == pytest.approx([-1 / 3, -1 / 12, 5 / 12])


def test_plackett_luce_equals_pairwise_for_pairs_and_is_finite_for_large_gaps():
    rewards = torch.tensor([3.0, -1.0, 0.25, 0.5, 400.0, -400.0])
    args = torch.tensor([1, 2, 5]), torch.tensor([0, 3, 4]), torch.tensor([0, 1, 2])  # K = 2 everywhere
    assert plackett_luce_loss(rewards, *args).item() == pytest.approx(ranking_loss(rewards, *args).item(), rel=1e-6)
    assert torch.isfinite(plackett_luce_loss(rewards, *args))


def test_duplicate_records_give_each_pair_once_so_plackett_luce_is_not_double_counted():
    from align.preferences.rankings import parse_record

    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    records = [parse_record(hh, "f:1"), parse_record(hh, "f:2"), parse_record({**hh, "chosen": hh["chosen"] + "!"}, "f:3")]
    first, = group_by_prompt(records[:2])
    assert first.pairs == [(0, 1)] and first.duplicate_pairs == 1
    # rewards r = [0.3, 0]: −log σ(0.3) = log(1 + e^−0.3) = 0.554355; with the pair twice PL's logsumexp held the
    # rejected response twice: log(e^0.3 + 2·e^0) − 0.3 = 0.908918
    rewards, prompt = torch.tensor([0.3, 0.0]), torch.tensor([0])
    assert plackett_luce_loss(rewards, torch.tensor([0]), torch.tensor([1]), prompt).item() == pytest.approx(0.554355, abs=1e-6)
    twice = plackett_luce_loss(rewards, torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 0])).item()
    assert twice == pytest.approx(0.908918, abs=1e-6)
    # a different chosen text for the same prompt is a new pair, not a duplicate
    group, = group_by_prompt(records)
    assert group.pairs == [(0, 1), (2, 1)] and group.duplicate_pairs == 1


def test_duplicate_dpo_and_kto_rows_are_dropped_and_counted():
    from align.preferences.rankings import drop_duplicate_rows, kto_examples, parse_record, preference_pairs

    rec = {"prompt": "q", "chosen": "a", "rejected": "b"}
    records = [parse_record(rec, "f:1"), parse_record(rec, "f:2"), parse_record({**rec, "rejected": "c"}, "f:3")]
    rows, dropped = drop_duplicate_rows(preference_pairs(records)[0])
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("a", "b"), ("a", "c")]
    assert dropped == 1
    rows, dropped = drop_duplicate_rows(kto_examples(records)[0])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("a", True), ("b", False), ("c", False)]
    assert dropped == 3  # "a" desirable twice more, "b" undesirable once more
