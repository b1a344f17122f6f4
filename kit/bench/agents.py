"""Agents head to head: every policy through the unchanged loop, many seeds, on stand-in worlds.

Owns: running each (policy, seed) as a full loop (noise floor, gate, early stopping, noise-aware acceptance, git,
ledger) against the seed's world in a scratch directory, and reading back what the run gives a user: the train.py
it ends with, re-evaluated under fresh seeds; the noise-free worth of its incumbent after every experiment and the
simulated hours spent by then; its best-so-far; and what it lost to pruning, rejection and duplicates.
Does not own: the worlds (kit/bench/environments.py, family.py, replay.py, tabular.py), the policies
(kit/policies/) or the comparison and report (kit/bench/comparison.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import REPO_ROOT
from kit.bench.environments import DEFAULT_HARNESS
from kit.ledger import Ledger
from kit.loop import LoopConfig, run_loop
from kit.memory import code_hash
from kit.results import Environment, HarnessConfig, Monitor, RunResult
from kit.run_state import NOISE_POLICY
from kit.stopping import StopConditions

REEVALUATION_SEEDS = tuple(range(10**9, 10**9 + 5))
"""Fresh seeds the final train.py is run under once the loop is done: no loop uses seeds this large."""
SCRATCH = "ppo-scratch"
"""The benchmark's name for PPO from random weights (`--policy ppo --from-scratch`); `ppo` starts pre-trained."""
LOSSES = ("pruned", "rejected", "duplicate", "crash", "timeout")
"""What an experiment can be lost to: stopped early, refused before it ran, a repeat of one already run, failed."""


@dataclass(frozen=True)
class Trajectory:
    """One (policy, seed) run: what it gave after each agent experiment, and what it cost."""

    policy: str
    seed: int
    best: tuple[float, ...]  # best-so-far val_bpb after agent experiment i (the noise floor's best before any)
    incumbent: tuple[float, ...]  # the world's noise-free val_bpb of the kept train.py after agent experiment i
    hours: tuple[float, ...]  # simulated hours of experiments (noise floor included) after agent experiment i
    baseline: float  # the first noise-floor run: the val_bpb to beat
    baseline_worth: float  # the world's noise-free val_bpb of the baseline: the incumbent before any keep
    reevaluated: float  # the final train.py's mean val_bpb under REEVALUATION_SEEDS: what a user gets
    agent_seconds: float  # the loop's own time (proposals, updates, bookkeeping), as measured here
    statuses: dict[str, int]
    losses: dict[str, int]  # agent experiments lost, by LOSSES
    unsure: float = math.nan  # share of agent experiments that ran where the world itself is unsure (if it says)
    keeps: int = 0  # edits the loop kept
    pauses: int = 0  # times the loop paused itself after failures in a row and was resumed, as a user would

    @property
    def kept(self) -> float:
        """The noise-free worth of the train.py the loop ends with."""
        return self.incumbent[-1]

    def incumbent_at(self, hours: float) -> float:
        """The noise-free worth of what the loop had kept once `hours` of experiments were spent."""
        done = [i for i, h in enumerate(self.hours) if h <= hours]
        return self.incumbent[done[-1]] if done else self.baseline_worth


def run_one(policy: str, seed: int, environment: Environment, experiments: int, budget: float,
            work: Path, profile: str = "smoke", noise_repeats: int = 3) -> Trajectory:
    """The loop with `policy` for `experiments` agent experiments after the noise floor, quietly; then the train.py
    it ends with, run under fresh seeds."""
    run_dir = work / f"{policy}-{seed}"
    started = time.perf_counter()
    world = _Expecting(environment)
    config = LoopConfig(run_dir=run_dir, profile=profile, policy="ppo" if policy == SCRATCH else policy, seed=seed,
                        budget=budget, from_scratch=policy == SCRATCH, noise_repeats=noise_repeats, mirror=False,
                        stop=StopConditions(iterations=experiments + noise_repeats))
    records, pauses = run_to_end(config, world)
    wall = time.perf_counter() - started
    noise = [r for r in records if r.policy == NOISE_POLICY]
    agent = [r for r in records if r.policy != NOISE_POLICY]
    best = min((r.val_bpb for r in noise if r.val_bpb is not None), default=math.inf)
    baseline_worth = world.expected.get(noise[0].code_hash, math.nan) if noise else math.nan
    worth, spent = baseline_worth, sum(r.total_seconds for r in noise)
    trajectory, incumbent, hours, losses = [], [], [], dict.fromkeys(LOSSES, 0)
    for r in agent:
        if r.val_bpb is not None:
            best = min(best, r.val_bpb)
        if r.accepted:
            worth = world.expected.get(r.code_hash, math.nan)
        spent += r.total_seconds
        trajectory.append(best)
        incumbent.append(worth)
        hours.append(spent / 3600)
        lost = "duplicate" if "duplicate" in r.reward_parts else r.status
        if lost in losses:
            losses[lost] += 1
    statuses: dict[str, int] = {}
    for r in agent:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    final = (run_dir / "repo" / "train.py").read_text()
    unsure = [world.unsure[r.code_hash] for r in agent if r.code_hash in world.unsure and r.status != "rejected"]
    return Trajectory(policy, seed, tuple(trajectory), tuple(incumbent), tuple(hours),
                      next((r.val_bpb for r in noise if r.val_bpb is not None), math.nan), baseline_worth,
                      reevaluate(environment, final, run_dir / "reevaluation"), wall, statuses, losses,
                      float(np.mean(unsure)) if unsure else math.nan, sum(r.accepted for r in agent), pauses)


def run_to_end(config: LoopConfig, environment: Environment) -> tuple[list, int]:
    """The loop of config, quietly, until its iteration limit: three failures in a row pause it, and a user would
    look and run it again, and so does this, so that every policy gets its experiments (a resume that adds nothing
    ends it). The ledger's records, and how many times it paused."""
    pauses, recorded, records = -1, -1, []
    while recorded < config.stop.iterations:
        with contextlib.redirect_stdout(io.StringIO()):
            run_loop(config, environment=environment)
        with Ledger(config.run_dir, readonly=True) as ledger:
            records = ledger.records()
        if len(records) == recorded:
            break
        pauses, recorded = pauses + 1, len(records)
    return records, pauses


def reevaluate(environment: Environment, source: str, run_dir: Path) -> float:
    """The mean val_bpb of source under REEVALUATION_SEEDS, each run to its end (nan if any run fails)."""
    values = [environment(source, run_dir / str(seed), HarnessConfig(seed=seed)).val_bpb
              for seed in REEVALUATION_SEEDS]
    return math.nan if any(v is None for v in values) else float(np.mean(values))


class _Expecting:
    """The environment, remembering the noise-free val_bpb of every source it ran (by the ledger's code hash), where
    the world knows it (expected_bpb), and whether the world was unsure there (where it can say)."""

    def __init__(self, environment: Environment):
        self.environment, self.expected, self.unsure = environment, {}, {}

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        digest = code_hash(source)
        if hasattr(self.environment, "expected_bpb"):
            self.expected[digest] = self.environment.expected_bpb(source)
        if hasattr(self.environment, "unsure"):
            self.unsure[digest] = bool(self.environment.unsure(source))
        return self.environment(source, run_dir, config, monitor=monitor)


def run_all(policies: list[str], seeds: int, worlds: Callable[[int], Environment], experiments: int, budget: float,
            log=print, jobs: int = 1, cache: Path | None = None) -> list[Trajectory]:
    """Every (policy, seed) run against worlds(seed), in `jobs` worker processes (forked, so a world built before is
    not copied by pickling); returned in policy, then seed order whatever order they finish in. With a cache (a
    folder only this world, these experiments and this code write to: see fingerprint) each finished run is saved
    there as it ends and read back instead of run again, so an interrupted benchmark resumes where it stopped."""
    tasks = [(policy, seed) for policy in policies for seed in range(seeds)]
    done = {task: t for task in tasks if (t := _cached(cache, task)) is not None}
    if done:
        log(f"{len(done)} of {len(tasks)} runs read from {cache}")
    todo = [task for task in tasks if task not in done]
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # git and the ledger write a lot of small files
    with tempfile.TemporaryDirectory(prefix="agents-bench-", dir=scratch) as tmp:
        def run(task: tuple[str, int]) -> Trajectory:
            return run_one(task[0], task[1], worlds(task[1]), experiments, budget, Path(tmp))

        if jobs <= 1 or len(todo) <= 1:
            finished = map(run, todo)
        else:
            global _WORKER
            _WORKER = run
            pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"), initializer=_single_thread)
            finished = (f.result() for f in as_completed([pool.submit(_run_in_worker, task) for task in todo]))
        for t in finished:
            log(f"{t.policy:7s} seed {t.seed:2d}: final train.py {t.reevaluated:.4f} re-evaluated, best run "
                f"{t.best[-1]:.4f}, after {len(t.best)} experiments ({t.agent_seconds:.1f} s)")
            _save(cache, t)
            done[t.policy, t.seed] = t
        if jobs > 1 and len(todo) > 1:
            pool.shutdown()
    return [done[task] for task in tasks]


def fingerprint(*parts: str) -> str:
    """A short digest of everything a benchmark's results follow from: the given parts (the world, its data, the
    experiments) and every source file of the kit and of train.py, so that a cache never serves results of other
    code."""
    digest = hashlib.sha256()
    for path in [REPO_ROOT / "train.py", REPO_ROOT / "prepare.py", *sorted((REPO_ROOT / "kit").rglob("*.py"))]:
        digest.update(path.read_bytes())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _cached(cache: Path | None, task: tuple[str, int]) -> Trajectory | None:
    path = cache / f"{task[0]}-{task[1]}.json" if cache else None
    if path is None or not path.exists():
        return None
    d = json.loads(path.read_text())
    return Trajectory(**{**d, **{name: tuple(d[name]) for name in ("best", "incumbent", "hours")}})


def _save(cache: Path | None, t: Trajectory) -> None:
    if cache is None:
        return
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{t.policy}-{t.seed}.json"
    path.with_suffix(".tmp").write_text(json.dumps(dataclasses.asdict(t)))
    path.with_suffix(".tmp").replace(path)  # whole or absent: a kill mid-write leaves no half a run


_WORKER: Callable[[tuple[str, int]], Trajectory] | None = None


def _run_in_worker(task: tuple[str, int]) -> Trajectory:
    return _WORKER(task)


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker: the PPO updates are small, and workers must not fight
