"""The convergence analysis of a run: the best-so-far trajectory, the chance of an ε-improvement per experiment with
confidence bounds, the bound N(ε, δ) against observed waiting times, and a check of the bound's coverage on a
synthetic objective whose optimum is known.

Owns: the analysis behind notebooks/02_convergence_bound.ipynb. Does not own: the estimates themselves
(kit/bound.py) or deciding to stop (kit/stopping.py).
"""

from __future__ import annotations

import math

import numpy as np

from kit import bound
from kit.ledger import Record


def values_of(records: list[Record]) -> list[float | None]:
    """val_bpb per experiment in order; None where there is none (failed, pruned, rejected)."""
    return [r.val_bpb if r.status == "ok" else None for r in records]


def best_so_far(values: list[float | None]) -> np.ndarray:
    """The running minimum (NaN before the first value): a super-martingale, it never goes up."""
    out, best = [], math.inf
    for v in values:
        if v is not None and v < best:
            best = v
        out.append(best if best < math.inf else math.nan)
    return np.array(out)


def waiting_times(values: list[float | None], epsilon: float) -> list[int]:
    """Experiments from each ε-improvement of the best-so-far (or the first value) to the next one."""
    times, best, since = [], math.inf, None
    for v in values:
        if since is not None:
            since += 1
        if v is not None and v < best - epsilon:
            if since is not None:
                times.append(since)
            since = 0
        if v is not None:
            best = min(best, v)
    return times


def bound_table(values: list[float | None], epsilons: list[float], delta: float,
                window: int | None = None) -> list[dict]:
    """Per ε: the estimated p(ε) with its Wilson interval, N(ε, δ) from the interval's lower end (p_min), and how
    the observed waiting times compare with it."""
    rows = []
    for eps in epsilons:
        est = bound.improvement_probability(values, eps, window=window)
        n = bound.experiments_needed(est.lower, delta)
        waits = waiting_times(values, eps)
        rows.append({"epsilon": eps, "successes": est.successes, "trials": est.trials, "p_hat": est.p_hat,
                     "p_low": est.lower, "p_high": est.upper, "N": n, "waits": len(waits),
                     "longest_wait": max(waits, default=0),
                     "share_over_N": float(np.mean([w > n for w in waits])) if waits else math.nan})
    return rows


class QuadraticObjective:
    """f(u) = Σ w_i (u_i - u*_i)² over [0, 1]^dim; the optimum f* = 0 is known. Deterministic under its seed."""

    def __init__(self, dim: int, seed: int):
        rng = np.random.default_rng(seed)
        self.optimum = rng.uniform(0.2, 0.8, dim)
        self.weights = rng.uniform(0.5, 2.0, dim)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return ((u - self.optimum) ** 2 * self.weights).sum(axis=-1)


class RastriginObjective(QuadraticObjective):
    """The quadratic bowl with a ripple of local minima: a local search can sit in the wrong basin for long."""

    def __call__(self, u: np.ndarray) -> np.ndarray:
        d = u - self.optimum
        return (d ** 2 * self.weights).sum(axis=-1) + 0.05 * (1 - np.cos(8 * np.pi * d)).sum(axis=-1)


def times_to_reach(objective, epsilon: float, search: str, seeds: int, dim: int, cap: int, seed: int = 1,
                   step: float = 0.05) -> np.ndarray:
    """Per seed, experiments until a proposal lands within ε of the optimum (cap + 1 if never), all seeds at once:
    `random` samples uniformly (the same chance every experiment); `local` moves the incumbent by Gaussian steps
    and keeps improvements (a chance that depends on where it is)."""
    rng = np.random.default_rng(seed)
    times = np.full(seeds, cap + 1)
    x = rng.uniform(0, 1, (seeds, dim))
    fx = objective(x)
    for t in range(1, cap + 1):
        open_ = times > cap
        if not open_.any():
            break
        if search == "random":
            y = rng.uniform(0, 1, (seeds, dim))
        else:
            y = np.clip(x + rng.normal(0, step, (seeds, dim)), 0, 1)
        fy = objective(y)
        times[open_ & (fy <= epsilon)] = t
        better = fy < fx
        x[better], fx[better] = y[better], fy[better]
    return times


def coverage_check(epsilon: float, delta: float, seeds: int, dim: int = 3, cap: int = 50_000) -> list[dict]:
    """How often the time to reach within ε of a known optimum exceeds N(ε, δ), over many seeds, for searches that
    meet the bound's assumption (a chance per experiment of at least p_min, the same in every state) and ones that
    do not. For random search p is the known volume of the ε-ball (estimated once by Monte Carlo); for local
    search it is the success rate pooled over all steps of all seeds, which is what an estimate from a trajectory
    would see."""
    rows = []
    for name, objective_class, search in (("random search, quadratic", QuadraticObjective, "random"),
                                          ("local search, quadratic", QuadraticObjective, "local"),
                                          ("local search, rippled (local minima)", RastriginObjective, "local")):
        objective = objective_class(dim, seed=0)
        times = times_to_reach(objective, epsilon, search, seeds, dim, cap)
        if search == "random":
            p = float(np.mean(objective(np.random.default_rng(2).uniform(0, 1, (400_000, dim))) <= epsilon))
        else:
            p = float(len(times) / times.sum())  # successes per experiment, pooled (capped runs count their cap)
        n = bound.experiments_needed(p, delta)
        over = float(np.mean(times > n))
        rows.append({"search": name, "p_min": p, "N": n, "median_time": float(np.median(times)),
                     "share_over_N": over, "delta": delta, "seeds": seeds, "never_reached": int(np.sum(times > cap)),
                     # within two binomial standard errors of δ counts as holding: seeds are finite
                     "holds": bool(over <= delta + 2 * math.sqrt(delta * (1 - delta) / seeds)) if n <= cap else None})
    return rows
