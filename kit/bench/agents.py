"""Agents head to head: every policy through the unchanged loop, many seeds, on a replayed or synthetic world.

Owns: running each (policy, seed) as a full loop (noise floor, gate, early stopping, noise-aware acceptance, git,
ledger) against an Environment in a scratch directory, reading back each run's best-so-far trajectory and costs,
and the comparison: median and interquartile best-so-far at checkpoints, experiments needed to beat the baseline by
1 % and 2 %, the area under the best-so-far curve, wall-clock with early stopping, and a one-sided Mann-Whitney test
of each policy against the strongest other one; writes the markdown report and its plot.
Does not own: the worlds (kit/bench/environments.py, kit/bench/replay.py) or the policies (kit/policies/).
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.bench.environments import DEFAULT_HARNESS
from kit.ledger import Ledger
from kit.loop import LoopConfig, run_loop
from kit.memory import code_hash
from kit.results import Environment, HarnessConfig, Monitor, RunResult
from kit.run_state import NOISE_POLICY
from kit.stopping import StopConditions

CHECKPOINTS = (25, 50, 100, 300)
REAL_CHECK = "## Real check on the `cpu` profile (no surrogate)"  # bench/agents_real.py writes this section
TARGETS = (0.01, 0.02)


@dataclass(frozen=True)
class Trajectory:
    """One (policy, seed) run: the best val_bpb after each agent experiment, and what the run cost."""

    policy: str
    seed: int
    best: tuple[float, ...]  # best-so-far after agent experiment i (the noise floor's best before any)
    baseline: float  # the first noise-floor run: the val_bpb to beat
    experiment_seconds: float  # the environment's time: training, start-up and evaluation of every run
    agent_seconds: float  # the loop's own time (proposals, updates, bookkeeping), as measured here
    statuses: dict[str, int]
    found: float = math.nan  # the world's noise-free val_bpb of the config behind the final best-so-far
    kept: float = math.nan  # the same for the train.py the loop ends with (its last kept edit): what a user gets
    keeps: int = 0  # edits the loop kept
    pauses: int = 0  # times the loop paused itself after failures in a row and was resumed, as a user would


def run_one(policy: str, seed: int, environment: Environment, experiments: int, budget: float,
            work: Path, profile: str = "smoke", noise_repeats: int = 3) -> Trajectory:
    """The loop with `policy` for `experiments` agent experiments after the noise floor, quietly."""
    run_dir = work / f"{policy}-{seed}"
    started = time.perf_counter()
    world = _Expecting(environment)
    config = LoopConfig(run_dir=run_dir, profile=profile, policy=policy, seed=seed, budget=budget,
                        stop=StopConditions(iterations=experiments + noise_repeats), noise_repeats=noise_repeats)
    pauses, recorded = -1, -1
    # three failures in a row pause the loop; a user would look and run it again, and so does the benchmark, so that
    # every policy gets its experiments (a resume that adds nothing ends it)
    while recorded < config.stop.iterations:
        with contextlib.redirect_stdout(io.StringIO()):
            run_loop(config, environment=world)
        with Ledger(run_dir, readonly=True) as ledger:
            records = ledger.records()
        if len(records) == recorded:
            break
        pauses, recorded = pauses + 1, len(records)
    wall = time.perf_counter() - started
    noise = [r for r in records if r.policy == NOISE_POLICY]
    agent = [r for r in records if r.policy != NOISE_POLICY]
    best_record = min((r for r in noise if r.val_bpb is not None), key=lambda r: r.val_bpb, default=None)
    best = best_record.val_bpb if best_record else math.inf
    trajectory = []
    for r in agent:
        if r.val_bpb is not None and r.val_bpb < best:
            best, best_record = r.val_bpb, r
        trajectory.append(best)
    statuses: dict[str, int] = {}
    for r in agent:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    seconds = sum(r.total_seconds for r in records)
    baseline = next((r.val_bpb for r in noise if r.val_bpb is not None), math.nan)
    found = world.expected.get(best_record.code_hash, math.nan) if best_record else math.nan
    kept = [r for r in records if r.accepted]
    final = world.expected.get(kept[-1].code_hash, math.nan) if kept else math.nan
    return Trajectory(policy, seed, tuple(trajectory), baseline, seconds, wall, statuses, found, final,
                      sum(r.policy != NOISE_POLICY for r in kept), pauses)


class _Expecting:
    """The environment, remembering the noise-free val_bpb of every source it ran (by the ledger's code hash), where
    the world knows it (expected_bpb): the best-so-far is partly luck, this is what the config is worth."""

    def __init__(self, environment: Environment):
        self.environment, self.expected = environment, {}

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        if hasattr(self.environment, "expected_bpb"):
            self.expected[code_hash(source)] = self.environment.expected_bpb(source)
        return self.environment(source, run_dir, config, monitor=monitor)


def run_all(policies: list[str], seeds: int, environment: Environment, experiments: int, budget: float,
            log=print, jobs: int = 1) -> list[Trajectory]:
    """Every (policy, seed) run, in `jobs` worker processes (forked, so the environment is not copied by pickling);
    returned in policy, then seed order whatever order they finish in."""
    tasks = [(policy, seed) for policy in policies for seed in range(seeds)]
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # git and the ledger write a lot of small files
    with tempfile.TemporaryDirectory(prefix="agents-bench-", dir=scratch) as tmp:
        def run(task: tuple[str, int]) -> Trajectory:
            return run_one(task[0], task[1], environment, experiments, budget, Path(tmp))

        if jobs <= 1:
            done = map(run, tasks)
        else:
            global _WORKER
            _WORKER = run
            context = multiprocessing.get_context("fork")
            pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_single_thread)
            done = pool.map(_run_in_worker, tasks)
        out = []
        for t in done:
            log(f"{t.policy:7s} seed {t.seed:2d}: best {t.best[-1]:.4f} after {len(t.best)} experiments "
                f"({t.agent_seconds:.1f} s)")
            out.append(t)
        if jobs > 1:
            pool.shutdown()
    return out


_WORKER: Callable[[tuple[str, int]], Trajectory] | None = None


def _run_in_worker(task: tuple[str, int]) -> Trajectory:
    return _WORKER(task)


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: the PPO updates are small, and workers must not fight


@dataclass(frozen=True)
class Summary:
    policy: str
    at: dict[int, tuple[float, float, float]]  # checkpoint -> (25th, 50th, 75th percentile of best-so-far)
    to_target: dict[float, tuple[float, int]]  # target -> (median experiments to reach it, seeds that did)
    auc: float  # mean over experiments of the median best-so-far
    hours: float  # median simulated hours of experiments per run
    agent_ms: float  # median loop time per experiment, ms
    statuses: dict[str, int]
    found: tuple[float, float, float]  # 25th, 50th, 75th percentile of the found config's noise-free val_bpb
    kept: tuple[float, float, float]  # the same for the train.py each run ends with
    keeps: float  # median number of edits kept per run


def summarize(trajectories: list[Trajectory]) -> list[Summary]:
    out = []
    for policy in dict.fromkeys(t.policy for t in trajectories):
        ts = [t for t in trajectories if t.policy == policy]
        n = min(len(t.best) for t in ts)
        best = np.array([t.best[:n] for t in ts])
        at = {c: tuple(float(x) for x in np.percentile(best[:, c - 1], [25, 50, 75])) for c in CHECKPOINTS if c <= n}
        to_target = {}
        for target in TARGETS:
            hits = [next((i + 1 for i, b in enumerate(t.best) if b <= t.baseline * (1 - target)), None) for t in ts]
            reached = [h for h in hits if h is not None]
            # seeds that never reach it count as "more than n", so the median is honest about them
            padded = sorted(h if h is not None else math.inf for h in hits)
            to_target[target] = (float(np.median(padded)) if reached else math.inf, len(reached))
        statuses: dict[str, int] = {}
        for t in ts:
            for k, v in t.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        if pauses := sum(t.pauses for t in ts):
            statuses["pauses resumed"] = pauses
        out.append(Summary(policy, at, to_target, float(np.median(best, axis=0).mean()),
                           float(np.median([t.experiment_seconds for t in ts]) / 3600),
                           float(np.median([1000 * t.agent_seconds / max(len(t.best), 1) for t in ts])), statuses,
                           _quartiles([t.found for t in ts]), _quartiles([t.kept for t in ts]),
                           float(np.median([t.keeps for t in ts]))))
    return out


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    return tuple(float(x) for x in np.percentile(values, [25, 50, 75]))


def significance(trajectories: list[Trajectory], policy: str, checkpoint: int) -> tuple[str, float]:
    """The strongest other policy at `checkpoint` (lowest median) and the one-sided Mann-Whitney p-value that
    `policy`'s best-so-far there is lower than that peer's."""
    from scipy.stats import mannwhitneyu

    def finals(name: str) -> list[float]:
        return [t.best[checkpoint - 1] for t in trajectories if t.policy == name and len(t.best) >= checkpoint]

    others = {t.policy for t in trajectories} - {policy}
    peer = min(others, key=lambda name: float(np.median(finals(name))))
    return peer, float(mannwhitneyu(finals(policy), finals(peer), alternative="less").pvalue)


def against_each(trajectories: list[Trajectory], policy: str, checkpoint: int) -> list[tuple[str, float, float]]:
    """For every other policy: one-sided Mann-Whitney p-values that `policy` is lower on best-so-far after
    `checkpoint` and on the final train.py's noise-free val_bpb (nan where the world does not know it)."""
    from scipy.stats import mannwhitneyu

    def values(name: str) -> tuple[list[float], list[float]]:
        ts = [t for t in trajectories if t.policy == name and len(t.best) >= checkpoint]
        return [t.best[checkpoint - 1] for t in ts], [t.kept for t in ts]

    mine = values(policy)
    out = []
    for other in dict.fromkeys(t.policy for t in trajectories):
        if other == policy:
            continue
        theirs = values(other)
        kept = (math.nan if any(math.isnan(v) for v in mine[1] + theirs[1])
                else float(mannwhitneyu(mine[1], theirs[1], alternative="less").pvalue))
        out.append((other, float(mannwhitneyu(mine[0], theirs[0], alternative="less").pvalue), kept))
    return out


def write_report(trajectories: list[Trajectory], out: Path, header: list[str]) -> Path:
    summaries = summarize(trajectories)
    n = min(len(t.best) for t in trajectories)
    seeds = len({t.seed for t in trajectories})
    checkpoints = [c for c in CHECKPOINTS if c <= n]
    lines = [*header, "",
             f"## Best-so-far val_bpb over {seeds} seeds (median [25th–75th percentile])", "",
             "| policy | " + " | ".join(f"after {c}" for c in checkpoints)
             + " | mean of median curve | the best run's config, noise-free | the final train.py, noise-free "
             "| edits kept |",
             "|---|" + "---:|" * (len(checkpoints) + 4)]
    for s in summaries:
        cells = [f"{s.at[c][1]:.4f} [{s.at[c][0]:.4f}–{s.at[c][2]:.4f}]" for c in checkpoints]
        lines.append(f"| {s.policy} | " + " | ".join(cells) + f" | {s.auc:.4f} | {_spread(s.found)} | "
                     f"{_spread(s.kept)} | {s.keeps:g} |")
    lines += ["", "Best-so-far is the lowest val_bpb measured, so it includes the luck of the draw. The next two "
              "columns are what the world says configs are worth with the noise left out (the synthetic objective, "
              "or the surrogate's mean on a replayed world): the config of the best run, and the train.py the loop "
              "ends with, which is what a user gets. Edits kept: median per seed."]
    lines += ["", "## Experiments to beat the baseline", "",
              "| policy | " + " | ".join(f"−{100 * t:g} % (median, seeds that got there)" for t in TARGETS)
              + " | hours of experiments per run | loop ms / experiment | outcomes (all seeds) |",
              "|---|" + "---:|" * (len(TARGETS) + 2) + "---|"]
    for s in summaries:
        cells = [f"{'never' if math.isinf(m) else f'{m:.0f}'} ({k}/{seeds})" for m, k in s.to_target.values()]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(s.statuses.items()))
        lines.append(f"| {s.policy} | " + " | ".join(cells) + f" | {s.hours:.2f} | {s.agent_ms:.0f} | {outcomes} |")
    lines += ["", f"## Against the strongest peer (one-sided Mann-Whitney U on best-so-far after {n})", "",
              "| policy | strongest other policy | p (policy lower) |", "|---|---|---:|"]
    for s in summaries:
        peer, p = significance(trajectories, s.policy, n)
        lines.append(f"| {s.policy} | {peer} | {p:.3g} |")
    if "ppo" in {t.policy for t in trajectories}:
        lines += ["", f"## PPO against each policy (one-sided Mann-Whitney U, PPO lower, after {n})", "",
                  "| other policy | p (best-so-far) | p (final train.py, noise-free) |", "|---|---:|---:|"]
        for other, p_best, p_kept in against_each(trajectories, "ppo", n):
            lines.append(f"| {other} | {p_best:.3g} | {'-' if math.isnan(p_kept) else f'{p_kept:.3g}'} |")
    # the real check is measured by another script, hours at a time: a new replay report keeps it
    kept = out.read_text().partition(REAL_CHECK) if out.exists() else ("", "", "")
    out.write_text("\n".join(lines) + "\n" + (f"\n{kept[1]}{kept[2]}" if kept[1] else ""))
    _plot(trajectories, out.with_suffix(".png"))
    return out


def _spread(q: tuple[float, float, float]) -> str:
    return "-" if math.isnan(q[1]) else f"{q[1]:.4f} [{q[0]:.4f}–{q[2]:.4f}]"


def _plot(trajectories: list[Trajectory], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for policy in dict.fromkeys(t.policy for t in trajectories):
        ts = [t for t in trajectories if t.policy == policy]
        n = min(len(t.best) for t in ts)
        best = np.array([t.best[:n] for t in ts])
        x = np.arange(1, n + 1)
        low, mid, high = np.percentile(best, [25, 50, 75], axis=0)
        ax.plot(x, mid, label=policy)
        ax.fill_between(x, low, high, alpha=0.15)
    ax.set_xlabel("agent experiments")
    ax.set_ylabel("best-so-far val_bpb (median, IQR)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
