"""train_loss across a resume: the steps before the resume come from the restored log history."""

from __future__ import annotations

import pytest

from align.training import mean_train_loss


def test_fresh_run_keeps_the_trainers_own_mean():
    assert mean_train_loss([{"step": 1, "loss": 9.0}], 2.5, resumed_step=0, global_step=4) == 2.5


def test_logged_windows_before_the_resume_are_weighted_by_their_length():
    # logging_first_step, then every 2 steps; resumed from step 5; steps 6..8 averaged 1.0 in this run
    history = [{"step": 1, "loss": 4.0}, {"step": 3, "loss": 3.0}, {"step": 5, "loss": 2.0},
               {"step": 7, "loss": 1.0}, {"step": 5, "eval_loss": 7.0}]
    expected = (4.0 * 1 + 3.0 * 2 + 2.0 * 2 + 1.0 * 3) / 8
    assert mean_train_loss(history, 1.0, resumed_step=5, global_step=8) == pytest.approx(expected)


def test_unlogged_steps_before_the_resume_are_left_out():
    history = [{"step": 4, "loss": 2.0}]  # resumed at 6: steps 5-6 were never logged
    assert mean_train_loss(history, 1.0, resumed_step=6, global_step=10) == pytest.approx((2.0 * 4 + 1.0 * 4) / 8)
