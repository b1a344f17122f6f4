"""The run vocabulary: how an experiment ended, what it reports, and who may watch or stand in for a run.

Owns: `Status` and `FAILURES` (the one place the failure set is written), `RunResult` (one experiment's outcome,
whoever produced it), `HarnessConfig` (how one experiment is to be run), the `Monitor` and `Environment` protocols,
`CurveStream`, the one way a learning curve is fed point by point to a monitor that may stop the run, and the
environment's fingerprint beyond the frozen side's (`environment`: the kit's code, CUDA, the device's name) with the
one comparison of two fingerprints (`fingerprint_differs`).
Does not own: producing results (kit/harness.py runs train.py; kit/bench/ has stand-in worlds), deciding on them
(kit/loop.py), or storing them (kit/ledger.py).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


class Status(enum.StrEnum):
    OK = "ok"
    PRUNED = "pruned"  # stopped early by a stop rule: no evaluation
    CRASH = "crash"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # refused before it ran (the gate, an edit that does not apply, a duplicate)
    TAMPERED = "tampered"
    CONTENDED = "contended"  # other processes took too much of its cores while it trained: not judged, run again


FAILURES = frozenset({Status.CRASH, Status.TIMEOUT, Status.REJECTED, Status.TAMPERED})
"""Outcomes that say the train.py does not work (a StrEnum: `"crash" in FAILURES` holds too)."""


@dataclass(frozen=True)
class RunResult:
    status: Status
    val_bpb: float | None
    reason: str
    training_seconds: float
    total_seconds: float
    peak_mem_mb: float | None
    num_steps: int
    curve: tuple[tuple[float, float], ...]
    fingerprint: dict
    seed: int
    run_dir: str
    timings: dict = field(default_factory=dict)

    @classmethod
    def not_run(cls, reason: str) -> RunResult:
        """An experiment refused before anything ran (status rejected): nothing trained, nothing measured."""
        return cls(status=Status.REJECTED, val_bpb=None, reason=reason, training_seconds=0.0, total_seconds=0.0,
                   peak_mem_mb=None, num_steps=0, curve=(), fingerprint={}, seed=0, run_dir="")

    def to_json(self) -> dict:
        record = asdict(self)
        record["status"] = self.status.value
        record["curve"] = [list(point) for point in self.curve]
        return record


def _share_from_env(name: str, default: float) -> float:
    """A share (0 to 1) from the environment, else the default: how a machine that is always busy says so once."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a share between 0 and 1 (0.1 is 10 %), got {text!r}")
    return value


def contention_limit_default() -> float:
    """$AUTORESEARCH_CONTENTION_LIMIT, else 0.10."""
    return _share_from_env("AUTORESEARCH_CONTENTION_LIMIT", 0.10)


def pace_limit_default() -> float:
    """$AUTORESEARCH_PACE_LIMIT, else 0.75."""
    return _share_from_env("AUTORESEARCH_PACE_LIMIT", 0.75)


@dataclass(frozen=True)
class HarnessConfig:
    profile: str = "cpu"
    """Profile of prepare.py: smoke, cpu or gpu."""
    budget: float | None = None
    """Training seconds; None takes the profile's."""
    grace: float | None = None
    """Seconds allowed on top of the budget for start-up, hand-off and evaluation; None takes the profile's."""
    seed: int | None = None
    """Seed passed to the frozen side; None takes the profile's."""
    sandbox: str = "auto"
    """Sandbox backend: auto, bwrap, unshare or none."""
    run_gate: bool = True
    """Apply the static gate first. Only tests of the deeper defenses turn it off."""
    contention_limit: float = field(default_factory=contention_limit_default)
    """Share of its cores that other processes may use while a run trains before the run is contended (not
    judged); on CUDA any other process computing on its GPU makes it contended too. 1.0 turns both off.
    Default: $AUTORESEARCH_CONTENTION_LIMIT, else 0.10."""


Monitor = Callable[[list[tuple[float, float]]], "str | None"]
"""Called with the curve so far after each progress point; a returned reason stops the run as pruned."""


class Environment(Protocol):
    """Runs one train.py source and returns its RunResult: kit.harness.run_experiment is the real one; the synthetic
    and replayed worlds of kit.bench answer through the same call."""

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig,
                 monitor: Monitor | None = None) -> RunResult: ...


class CurveStream:
    """A learning curve growing point by point, shown to a monitor after each point; remembers why it stopped."""

    def __init__(self, monitor: Monitor | None):
        self.monitor = monitor
        self.curve: list[tuple[float, float]] = []
        self.stop_reason: str | None = None

    def add(self, t: float, loss: float) -> str | None:
        """Append a point; the monitor's reason to stop the run, if it gives one."""
        self.curve.append((float(t), float(loss)))
        if self.monitor is not None and self.stop_reason is None:
            self.stop_reason = self.monitor(self.curve) or None
        return self.stop_reason

    def feed(self, points: Iterable[tuple[float, float]]) -> str | None:
        """Add points until the monitor stops the run (the reason) or they run out (None)."""
        for t, loss in points:
            if self.add(t, loss):
                return self.stop_reason
        return None


@functools.cache
def environment(device: str) -> dict:
    """What, beyond prepare.fingerprint, must match for two runs to be compared: a hash of the kit's own code (the
    harness measures), the CUDA build and the accelerator's name. Every worker's results carry it, so runs from
    differently set up machines are never judged against each other."""
    import torch

    from kit.machine import gpu_name

    kit = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(kit.rglob("*.py")):
        digest.update(path.relative_to(kit).as_posix().encode() + b"\0" + path.read_bytes())
    name = gpu_name() if device == "cuda" else cpu_name()
    return {"kit_sha256": digest.hexdigest()[:16], "cuda": torch.version.cuda or "none", "device_name": name}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def fingerprint_differs(reference: dict | None, fingerprint: dict) -> str | None:
    """How fingerprint differs from reference, in one line, or None when they match (keys only one of them has are
    not compared: records written before a key existed still resume)."""
    if not reference:
        return None
    changed = [f"{key} {fingerprint[key]} vs {reference[key]}" for key in sorted(reference.keys() & fingerprint.keys())
               if fingerprint[key] != reference[key]]
    return ", ".join(changed) or None
