"""align.rl.masked on hand-computed values.

Fixture: values [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]] -> valid entries 1, 2, 4.
mean = 7/3; squared deviations 16/9, 1/9, 25/9 sum to 14/3; biased var 14/9, unbiased 7/3.
"""

import math

import pytest
import torch

from align.errors import AlignError
from align.rl import masked_mean, masked_sum, masked_var, masked_whiten

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_masked_sum_global_and_per_row():
    assert masked_sum(VALUES, MASK).item() == pytest.approx(7.0)
    assert masked_sum(VALUES, MASK, dim=1).tolist() == pytest.approx([3.0, 4.0])
    assert masked_sum(VALUES, MASK, dim=0).tolist() == pytest.approx([5.0, 2.0, 0.0])


def test_masked_mean_global_and_per_row():
    assert masked_mean(VALUES, MASK).item() == pytest.approx(7.0 / 3.0)
    assert masked_mean(VALUES, MASK, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_mean_accepts_float_mask():
    assert masked_mean(VALUES, MASK.float()).item() == pytest.approx(7.0 / 3.0)


def test_masked_mean_all_masked_row_is_zero_not_nan():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    per_row = masked_mean(VALUES, mask, dim=1)
    assert per_row.tolist() == pytest.approx([1.5, 0.0])
    assert masked_mean(VALUES, torch.zeros_like(mask)).item() == 0.0


def test_masked_mean_ignores_padded_values_even_if_huge():
    poisoned = VALUES.clone()
    poisoned[~MASK] = float("1e30")
    assert masked_mean(poisoned, MASK).item() == pytest.approx(7.0 / 3.0)


def test_masked_mean_shape_mismatch_is_clear_error():
    with pytest.raises(AlignError, match="mask shape"):
        masked_mean(VALUES, MASK[:, :2])


def test_masked_var_biased_and_unbiased():
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(14.0 / 9.0)
    assert masked_var(VALUES, MASK, unbiased=True).item() == pytest.approx(7.0 / 3.0)


def test_masked_var_empty_or_single_value():
    with pytest.raises(AlignError, match="no values"):
        masked_var(VALUES, torch.zeros_like(MASK))
    single = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    with pytest.raises(AlignError, match="single value"):
        masked_var(VALUES, single)
    assert masked_var(VALUES, single, unbiased=False).item() == 0.0


def test_masked_whiten_hand_values():
    std = math.sqrt(7.0 / 3.0 + 1e-8)
    out = masked_whiten(VALUES, MASK)
    # valid entries: (v - 7/3) / sqrt(7/3) = -0.872872, -0.218218, 1.091089
    assert out[MASK].tolist() == pytest.approx([-0.872872, -0.218218, 1.091089], abs=1e-5)
    assert out[MASK].tolist() == pytest.approx([(1 - 7 / 3) / std, (2 - 7 / 3) / std, (4 - 7 / 3) / std])
    # padded entries are transformed too (TRL semantics) but did not enter the statistics
    assert out[0, 2].item() == pytest.approx((3 - 7 / 3) / std)


def test_masked_whiten_valid_entries_have_zero_mean_unit_variance():
    out = masked_whiten(VALUES, MASK)
    valid = out[MASK]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-5)


def test_masked_whiten_without_shift_adds_mean_back():
    out = masked_whiten(VALUES, MASK, shift_mean=False)
    assert out[MASK].tolist() == pytest.approx([1.460461, 2.115115, 3.424422], abs=1e-5)


def test_masked_whiten_statistics_ignore_padded_values():
    poisoned = VALUES.clone()
    poisoned[~MASK] = -1000.0
    assert torch.allclose(masked_whiten(poisoned, MASK)[MASK], masked_whiten(VALUES, MASK)[MASK])
