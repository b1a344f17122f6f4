"""kit.bound: the improvement probability, its confidence interval and N(ε, δ)."""

import math
import random

import pytest

from kit.bound import experiments_needed, improvement_probability, wilson_interval


def test_wilson_interval_matches_the_textbook_value():
    lower, upper = wilson_interval(8, 10)  # p = 0.8, n = 10, z = 1.96
    assert lower == pytest.approx(0.4902, abs=1e-4)
    assert upper == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0 and 0 < wilson_interval(0, 50)[1] < 0.08


def test_improvements_count_against_the_best_before_them():
    values = [3.0, 2.9, 2.95, None, 2.7, 2.699, 2.5]
    estimate = improvement_probability(values, epsilon=0.01)
    # 2.9 (by .1), 2.7 (by .2) and 2.5 (by .199) beat the best by more than 0.01; 2.95, None, 2.699 do not
    assert (estimate.successes, estimate.trials) == (3, 6)
    assert estimate.lower < 0.5 < estimate.upper
    assert improvement_probability(values, epsilon=0.01, window=2).successes == 1


def test_negative_epsilon_is_refused():
    with pytest.raises(ValueError, match="epsilon"):
        improvement_probability([1.0], epsilon=-1)


def test_bound_formula_and_its_edges():
    assert experiments_needed(0.1, 0.05) == pytest.approx(math.log(0.05) / math.log(0.9))
    assert experiments_needed(0.0, 0.05) == math.inf
    assert experiments_needed(1.0, 0.05) == 1.0
    with pytest.raises(ValueError):
        experiments_needed(0.1, 1.5)


def test_the_bound_covers_geometric_waiting_times():
    """With a true per-experiment success probability p, waiting longer than N(p, δ) happens at most δ of the time."""
    rng = random.Random(0)
    p, delta = 0.07, 0.1
    limit = experiments_needed(p, delta)
    waits = []
    for _ in range(4000):
        n = 1
        while rng.random() >= p:
            n += 1
        waits.append(n)
    assert sum(w > limit for w in waits) / len(waits) <= delta + 0.015
