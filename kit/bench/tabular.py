"""A tabular world: every experiment is answered by the nearest recorded cell of a design, never by a model.

Owns: `TabularEnvironment`, which answers through the harness's signature (kit.results.Environment). It groups a
design recording (kit/bench/recorder.py, `--design`) into cells, one per config, each recorded under the same few
seeds; any train.py is snapped to the nearest cell in the normalized space of the ranged knobs, so no config is
extrapolated to and every policy, catalog or not, can reach every cell. A cell's worth is the mean of its ok
replicates; a run is that worth plus the noise between seeds pooled over all cells, drawn once per cell and seed,
on the curve of one of its replicates; a cell whose replicates failed fails as often. Also `drift`: how far the
design's baseline anchors, the same config and seed recorded again and again, moved apart in steps.
Does not own: recording (kit/bench/recorder.py) or the surrogate world (kit/bench/replay.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kit import edits
from kit.bench.environments import DEFAULT_HARNESS, gate_rejection, moved_curve, serve_curve, simulated_result
from kit.bench.recorder import ran_alone
from kit.bench.replay import config_key
from kit.results import HarnessConfig, Monitor, RunResult, Status

OUTCOMES = ("ok", "crash", "timeout", "tampered")
"""Recorded outcomes a cell can serve; tampered is what the harness calls a start-up over the profile's CPU."""
MIN_CELLS = 20
"""Fewer cells than this cannot judge a search: the world refuses to be built."""
MAX_DRIFT = 0.25
"""The most the anchors' step counts may spread (max / min − 1) for the recording to count as one machine."""


@dataclass
class Cell:
    values: dict[str, Any]
    runs: list[dict]

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.runs if r["status"] == "ok"]

    @property
    def worth(self) -> float:
        """The mean val_bpb of its ok replicates (nan if none ended ok)."""
        return float(np.mean([r["val_bpb"] for r in self.ok])) if self.ok else float("nan")


class TabularEnvironment:
    """Recorded cells served again; deterministic for a (train.py, seed) pair."""

    def __init__(self, baseline: str, records: list[dict], min_replicates: int = 2, seed: int = 0,
                 min_cells: int = MIN_CELLS):
        self.baseline, self.seed = baseline, seed
        self.knobs = [k for k in edits.knobs(baseline) if k.low is not None or k.choices is not None
                      or k.kind == "bool"]
        usable = [r for r in records if r["status"] in OUTCOMES and r.get("config") and ran_alone(r)]
        grouped: dict[tuple, Cell] = {}
        for r in usable:
            grouped.setdefault(config_key(self.knobs, r["config"]), Cell(r["config"], [])).runs.append(r)
        self.cells = [c for c in grouped.values() if len(c.runs) >= min_replicates]
        base = config_key(self.knobs, {k.name: k.value for k in edits.knobs(baseline)})
        if base not in grouped or len(grouped[base].ok) < 2:
            raise ValueError("a tabular world needs the baseline recorded ok at least twice: record a design with "
                             "`python -m kit bench record --profile cpu --design --runs 200`")
        if len(self.cells) < min_cells:
            raise ValueError(f"a tabular world needs {min_cells} cells recorded alone {min_replicates} times, the "
                             f"recording has {len(self.cells)}: record more of the design with `python -m kit bench "
                             "record --profile cpu --design --runs 200` on a quiet machine")
        self.X = np.array([[k.normalized(c.values[k.name]) for k in self.knobs] for c in self.cells])
        spreads = [np.array([r["val_bpb"] for r in c.ok]) for c in self.cells if len(c.ok) >= 2]
        # pooled within-cell variance: each cell's deviations from its own mean, over the degrees of freedom left
        self.noise_sd = float(np.sqrt(sum(((v - v.mean()) ** 2).sum() for v in spreads)
                                      / sum(len(v) - 1 for v in spreads)))
        self.budget = float(usable[0]["budget"])
        self.anchors = [r for r in grouped[base].runs if r.get("kind") == "anchor"]

    def drift(self) -> float:
        """How far apart the anchors' step counts are (max / min − 1); 0 with fewer than two anchors."""
        steps = [r["num_steps"] for r in self.anchors if r["status"] == "ok" and r["num_steps"]]
        return max(steps) / min(steps) - 1 if len(steps) >= 2 else 0.0

    def cell(self, source: str) -> Cell:
        """The recorded cell nearest to source's knobs (the first recorded, on a tie)."""
        values = {k.name: k.value for k in edits.knobs(source)}
        x = np.array([k.normalized(values[k.name]) for k in self.knobs])
        return self.cells[int(np.argmin(np.linalg.norm(self.X - x, axis=1)))]

    def expected_bpb(self, source: str) -> float:
        """The worth of the cell source snaps to: what the config is worth in this world."""
        return self.cell(source).worth

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        seed = int(config.seed if config.seed is not None else 0)
        if rejection := gate_rejection(source, config):
            return simulated_result("tabular", self.budget, seed, run_dir, Status.REJECTED, rejection)
        cell = self.cell(source)
        digest = hashlib.sha256(repr(config_key(self.knobs, cell.values)).encode()).hexdigest()[:12]
        rng = np.random.default_rng([self.seed, int(digest, 16), seed])
        failed = [r for r in cell.runs if r["status"] != "ok"]
        if rng.random() < len(failed) / len(cell.runs):
            r = failed[int(rng.integers(len(failed)))]
            return serve_curve("tabular", self.budget, r["status"], f"{r.get('reason') or r['status']} (replayed from "
                               "the recorded cell)", r["curve"], None, r["training_seconds"], r["total_seconds"],
                               seed, run_dir, monitor)
        shape = cell.ok[int(rng.integers(len(cell.ok)))]
        val_bpb = cell.worth + self.noise_sd * float(rng.standard_normal())
        return serve_curve("tabular", self.budget, "ok", "", moved_curve(shape, val_bpb, self.budget),
                           round(val_bpb, 6), shape["training_seconds"], shape["total_seconds"], seed, run_dir, monitor)

    def describe(self) -> str:
        runs = sum(len(c.runs) for c in self.cells)
        return (f"tabular: {len(self.cells)} recorded cells ({runs} runs, {len(self.anchors)} baseline anchors, "
                f"their steps {100 * self.drift():.0f} % apart), pooled seed noise {self.noise_sd:.4f}; every "
                "train.py is snapped to the nearest cell")
