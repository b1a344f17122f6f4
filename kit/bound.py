"""Convergence-bound estimates from a trajectory of experiments.

Owns: the per-experiment probability p(ε) that an experiment improves the best-so-far val_bpb by more
than ε, estimated from the trajectory with a Wilson confidence interval, and the bound
N(ε, δ) = log δ / log(1 − p_min) on the experiments needed to reach an ε-improvement with probability
1 − δ. Does not own: deciding to stop (kit/stopping.py asks this module), plotting (the notebooks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ImprovementEstimate:
    successes: int
    """Experiments in the window that beat the best-so-far before them by more than epsilon."""
    trials: int
    """Experiments in the window."""
    p_hat: float
    """successes / trials (0 when there are no trials)."""
    lower: float
    """Wilson lower confidence bound on p."""
    upper: float
    """Wilson upper confidence bound on p."""


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def improvement_probability(values: list[float | None], epsilon: float, window: int | None = None,
                            z: float = 1.96) -> ImprovementEstimate:
    """How often an experiment beat the best-so-far by more than epsilon (failed runs, None, count as misses).

    The first value only sets the best-so-far; window limits the estimate to the most recent experiments.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon=}")
    outcomes: list[bool] = []
    best = math.inf
    for value in values:
        if best < math.inf:
            outcomes.append(value is not None and value < best - epsilon)
        if value is not None and value < best:
            best = value
    if window is not None:
        outcomes = outcomes[-window:]
    successes, trials = sum(outcomes), len(outcomes)
    lower, upper = wilson_interval(successes, trials, z)
    return ImprovementEstimate(successes, trials, successes / trials if trials else 0.0, lower, upper)


def experiments_needed(p_min: float, delta: float) -> float:
    """N(ε, δ) = log δ / log(1 − p_min): experiments after which an ε-improvement has happened w.p. 1 − δ."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta=}")
    if p_min <= 0:
        return math.inf
    if p_min >= 1:
        return 1.0
    return math.log(delta) / math.log(1 - p_min)
