"""A dataset of real learning curves: full runs of train.py and of edits of it, recorded without early stopping.

Owns: choosing what to record (the baseline under other seeds, short random walks through the edit catalog,
and random settings of a few knobs at once to fill the space; or, for a tabular world, a design of cells each
recorded under the same few seeds: catalog walks interleaved with a Sobol design over a box around the baseline),
running each to its end with the harness, and the dataset file: one gzip member per run appended to a .jsonl.gz,
so a killed recording loses at most the run in flight and resumes where it stopped. Loading it back for the
early-stopping and agent benchmarks.
Does not own: running experiments or measuring their contention (kit/harness.py), or forecasting curves
(kit/predictor.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kit import REPO_ROOT, edits
from kit.harness import run_experiment
from kit.hyperparams import Hyperparameter
from kit.results import HarnessConfig, RunResult

KIND_SHARES = {"baseline": 0.15, "walk": 0.5, "scatter": 0.35}
"""What a recorded run is: the baseline under another seed (the noise), 1-3 catalog edits of the baseline
(what a loop meets), or 2-6 knobs set at random (space-filling, for a surrogate)."""


MAX_OTHERS_SHARE = 0.03
"""Runs during which other processes used more than this share of their cores are left out of benchmarks:
on the recording machine a baseline run lost about 10 % of its steps at a share of 0.05."""


def ran_alone(record: dict, max_others_share: float = MAX_OTHERS_SHARE) -> bool:
    """Whether a recorded run had the machine to itself (its step count is then comparable with the others')."""
    return record.get("others_cpu_share", 0.0) <= max_others_share


@dataclass(frozen=True)
class Plan:
    """One run to record: its kind, what changed, the values set and the seed."""

    kind: str
    description: str
    values: dict[str, Any]
    seed: int


def plan_run(index: int, baseline: str, profile_seed: int, seed: int = 0) -> Plan:
    """The index-th run of a recording: a pure function of its arguments, so a resumed recording continues the
    same sequence. Run 0 is always the baseline with the profile's seed."""
    if index == 0:
        return Plan("baseline", "baseline", {}, profile_seed)
    rng = np.random.default_rng([seed, index])
    kinds = list(KIND_SHARES)
    kind = kinds[rng.choice(len(kinds), p=list(KIND_SHARES.values()))]
    if kind == "baseline":
        run_seed = profile_seed + 1 + int(rng.integers(1 << 30))
        return Plan(kind, f"baseline, seed {run_seed}", {}, run_seed)
    knobs = edits.knobs(baseline)
    if kind == "walk":
        source, steps = baseline, []
        catalog = edits.build_catalog(baseline)
        for _ in range(int(rng.integers(1, 4))):
            valid = np.flatnonzero(edits.edit_mask(source, catalog))
            edit = catalog[int(rng.choice(valid))]
            source = edits.apply_edit(source, edit)
            steps.append(edit.describe())
        values = _changed(knobs, edits.knobs(source))
        return Plan(kind, ", ".join(steps), values, profile_seed)
    chosen = rng.choice(len(knobs), size=int(rng.integers(2, 7)), replace=False)
    values = {knobs[i].name: _sample(knobs[i], rng) for i in sorted(chosen)}
    values = {n: v for n, v in values.items() if not edits._same(v, next(k.value for k in knobs if k.name == n))}
    text = ", ".join(f"{n} -> {v!r}" for n, v in values.items()) or "baseline (the draw changed nothing)"
    return Plan(kind, text, values, profile_seed)


DESIGN_SEEDS = 2
"""Seeds every design cell is recorded under, the same ones for every cell, so cells compare seed for seed."""
BOX_FACTOR = 3.0
"""The design's box: a log-scaled knob ranges over its baseline value ÷ this to × this (within its declared range)."""
BOX_SHARE = 0.25
"""... and a linear knob over its baseline value ± this share of its declared span."""
SOBOL_POINTS = 1024
ANCHOR_EVERY = 8
"""Every this many cells the design records the baseline again under the same seeds: the same config and seed run
twice differ only by the machine's speed that day, so these anchors show whether a recording spread over sessions
stayed comparable (the host's speed was seen to halve between sessions, which no contention check inside it sees)."""


def design_box(knob: Hyperparameter) -> tuple[float, float]:
    """The range a design samples a numeric knob over: near enough to the baseline that most runs train."""
    if knob.log_scale:
        return max(knob.low, knob.value / BOX_FACTOR), min(knob.high, knob.value * BOX_FACTOR)
    half = BOX_SHARE * (knob.high - knob.low)
    return max(knob.low, knob.value - half), min(knob.high, knob.value + half)


def _design_value(knob: Hyperparameter, u: float) -> Any:
    """The value at quantile u in [0, 1) of the knob's design range (log-uniform where it has a log scale)."""
    if knob.choices is not None:
        return knob.choices[min(int(u * len(knob.choices)), len(knob.choices) - 1)]
    low, high = design_box(knob)
    x = float(np.exp(np.log(low) + u * np.log(high / low))) if knob.log_scale else low + u * (high - low)
    if knob.kind == "int":
        return int(min(max(round(x), math.ceil(low)), math.floor(high)))
    return min(max(float(f"{x:.3g}"), low), high)


def _sobol(dimensions: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    return qmc.Sobol(dimensions, scramble=True, seed=seed).random(SOBOL_POINTS)


def design_cell(cell: int, baseline: str, profile_seed: int, seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(kind, description, values) of a design's cell-th cell: every ANCHOR_EVERY-th is the baseline; of the rest,
    even ones walk the catalog (the walks of plan_run, in order), odd ones are the points of a scrambled Sobol
    design over every ranged knob."""
    if cell % ANCHOR_EVERY == 0:
        return "anchor", "baseline", {}
    cell -= cell // ANCHOR_EVERY + 1
    if cell % 2 == 0:
        walks = (plan for i in range(1, 1 << 20)
                 if (plan := plan_run(i, baseline, profile_seed, seed)).kind == "walk")
        walk = next(plan for j, plan in enumerate(walks) if j == cell // 2)
        return "lattice", walk.description, walk.values
    knobs = [k for k in edits.knobs(baseline) if k.low is not None or k.choices is not None]
    point = _sobol(len(knobs), seed)[cell // 2 % SOBOL_POINTS]
    values = {k.name: _design_value(k, float(u)) for k, u in zip(knobs, point, strict=True)}
    values = {n: v for n, v in values.items() if not edits._same(v, next(k.value for k in knobs if k.name == n))}
    return "sobol", f"Sobol point {cell // 2}", values


def plan_design(index: int, baseline: str, profile_seed: int, seed: int = 0) -> Plan:
    """The index-th run of a design recording: cell index // DESIGN_SEEDS under that cell's replicate seed. A pure
    function of its arguments, so a resumed recording continues the same sequence and any prefix of it is whole
    cells."""
    kind, description, values = design_cell(index // DESIGN_SEEDS, baseline, profile_seed, seed)
    replicate = index % DESIGN_SEEDS
    return Plan(kind, f"{description} (replicate {replicate + 1})", values, design_seed(profile_seed, replicate))


def design_seed(profile_seed: int, replicate: int) -> int:
    """The seed of a design's replicate: never the profile's own, which the other recordings use."""
    return profile_seed + 1000 + replicate


def _changed(before: list[Hyperparameter], after: list[Hyperparameter]) -> dict[str, Any]:
    old = {k.name: k.value for k in before}
    return {k.name: k.value for k in after if not edits._same(k.value, old[k.name])}


def _sample(knob: Hyperparameter, rng: np.random.Generator) -> Any:
    """A value drawn uniformly over the knob's range (log-uniformly where it has a log scale, as Optuna would)."""
    if knob.choices is not None:
        return knob.choices[int(rng.integers(len(knob.choices)))]
    low, high = knob.low, knob.high
    x = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if knob.log_scale else float(rng.uniform(low, high))
    if knob.kind == "int":
        return int(min(max(round(x), low), high))
    return min(max(float(f"{x:.3g}"), low), high)


def _members(data: bytes):
    """(text, end offset) of each whole gzip member of data, in order; stops at a torn one."""
    offset = 0
    while offset < len(data):
        decompressor = zlib.decompressobj(wbits=31)
        try:
            text = decompressor.decompress(data[offset:])
        except zlib.error:
            return
        if not decompressor.eof:
            return
        offset = len(data) - len(decompressor.unused_data)
        yield text.decode(), offset


def read_dataset(path: Path) -> list[dict]:
    """Every complete record of a dataset file; a torn last member (a kill mid-write) is left out."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for text, _ in _members(path.read_bytes()) for line in text.splitlines() if line]


def _append(path: Path, record: dict) -> None:
    """One gzip member per record, appended and synced; a torn member from a kill is cut off first."""
    ends = [end for _, end in _members(path.read_bytes())] if path.exists() else []
    complete = ends[-1] if ends else 0
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(complete)
        f.seek(complete)
        f.write(gzip.compress((json.dumps(record, separators=(",", ":")) + "\n").encode(), mtime=0))
        f.flush()
        os.fsync(f.fileno())


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def to_record(index: int, plan: Plan, result: RunResult, baseline: str, budget: float, load: tuple) -> dict:
    """The dataset's row for one run: enough to replay its curve and rebuild its train.py from the baseline."""
    knobs = edits.knobs(baseline)
    return {
        "index": index, "kind": plan.kind, "description": plan.description, "changed": plan.values,
        "config": {k.name: plan.values.get(k.name, k.value) for k in knobs},
        "seed": plan.seed, "status": result.status.value, "val_bpb": result.val_bpb, "reason": result.reason,
        "budget": budget, "training_seconds": result.training_seconds, "total_seconds": result.total_seconds,
        "num_steps": result.num_steps, "peak_mem_mb": result.peak_mem_mb, "timings": result.timings,
        "curve": [[round(t, 3), round(loss, 5)] for t, loss in result.curve],
        "device": result.fingerprint.get("device"), "profile": result.fingerprint.get("profile"),
        "baseline_sha256": hashlib.sha256(baseline.encode()).hexdigest()[:16], "kit_commit": _commit(),
        # the share of the run's cores other processes used while it trained, as the harness measured it
        "loadavg": [round(x, 2) for x in load], "others_cpu_share": round(result.timings.get("others_share", 0.0), 3),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def record(out: Path, runs: int, profile: str = "cpu", seed: int = 0, budget: float | None = None,
           work_dir: Path | None = None, sandbox: str = "auto", design: bool = False, log=print) -> list[dict]:
    """Record runs until out holds the first `runs` of the sequence, each once with the machine to itself (resuming
    what is there: an index whose every run shared the machine is run again, and the shared run stays in the file);
    returns all records. design: the tabular design's sequence (plan_design) instead of the mixed one (plan_run)."""
    import prepare

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    baseline = (REPO_ROOT / "train.py").read_text()
    spec = prepare.get_profile(profile)
    budget = float(budget if budget is not None else spec.time_budget)
    work_dir = Path(work_dir or REPO_ROOT / "runs" / f"record-{profile}")
    records = read_dataset(out)
    planner = plan_design if design else plan_run
    clean = {r["index"] for r in records if ran_alone(r)}
    for index in (i for i in range(runs) if i not in clean):
        plan = planner(index, baseline, spec.seed, seed)
        source = edits.set_values(baseline, plan.values)
        run_dir = work_dir / f"{index:05d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        load_before = os.getloadavg()[0]
        # every run is kept, with its contention: the benchmarks leave out the ones that did not run alone
        result = run_experiment(source, run_dir, HarnessConfig(profile=profile, budget=budget, seed=plan.seed,
                                                               sandbox=sandbox, contention_limit=1.0))
        (run_dir / "model.pt2").unlink(missing_ok=True)  # the curve and result.json are what we keep
        row = to_record(index, plan, result, baseline, budget, (load_before, os.getloadavg()[0]))
        _append(out, row)
        records.append(row)
        shown = f"{result.val_bpb:.4f}" if result.val_bpb is not None else result.status.value
        alone = "" if ran_alone(row) else f"  (shared the machine: {row['others_cpu_share']:.2f}; kept, run again)"
        log(f"[{index + 1}/{runs}] {plan.kind:8s} {shown:>8s} {len(result.curve):4d} points  {plan.description}{alone}")
    return records
