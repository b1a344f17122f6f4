"""kit.acceptance: keeping an edit on the mean of its runs; the margin, and when a near miss is run again."""

import math

import pytest

from kit.acceptance import Acceptance, Verdict, margin


def test_one_run_against_one_run_needs_the_full_margin_and_more_runs_need_less():
    assert margin(0.03, 2.0, 1, 1) == pytest.approx(0.06)
    assert margin(0.03, 2.0, 4, 4) == pytest.approx(0.03)  # the standard error halves with four runs a side
    assert margin(0.03, 2.0, 3, 3) < margin(0.03, 2.0, 2, 3) < margin(0.03, 2.0, 1, 3)
    with pytest.raises(ValueError, match="at least one run"):
        margin(0.03, 2.0, 0, 1)


def test_a_clear_gain_is_kept_a_near_miss_is_run_again_and_a_loss_dropped():
    rule = Acceptance(sigma=0.02, sigmas=2.0, max_runs=3)
    incumbent = [2.50, 2.52, 2.48]
    assert rule.verdict([2.40], incumbent) is Verdict.KEEP
    assert rule.verdict([2.47], incumbent) is Verdict.AGAIN  # below the 3-run bar, above the 1-run one
    assert rule.verdict([2.49], incumbent) is Verdict.DROP  # even a mean of three like it would not clear
    assert rule.verdict([2.47, 2.47], incumbent) is Verdict.KEEP
    assert rule.verdict([2.47, 2.53], incumbent) is Verdict.DROP
    assert rule.verdict([2.47, 2.48, 2.485], incumbent) is Verdict.DROP  # three runs used up
    assert rule.verdict([], incumbent) is Verdict.DROP
    assert Acceptance(0.02, 2.0, max_runs=1).verdict([2.47], incumbent) is Verdict.DROP


def test_the_bars_are_the_incumbents_mean_less_the_margin():
    rule = Acceptance(sigma=0.02, sigmas=2.0, max_runs=3)
    assert rule.bar([2.5, 2.5, 2.5], 1) == pytest.approx(2.5 - 0.04 * math.sqrt(2 / 3))
    assert rule.retry_bar([2.5, 2.5, 2.5]) == pytest.approx(2.5 - 0.04 * math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="sigma >= 0"):
        Acceptance(sigma=-1.0)
