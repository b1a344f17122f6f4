"""A synthetic world: a cheap, seeded stand-in for training whose optimum is known.

Owns: `SyntheticEnvironment`, which answers through the harness's signature (kit.results.Environment), so the loop,
every policy and the stop rules run unchanged against it: it reads train.py's hyperparameters and answers in about
a millisecond with a val_bpb, a learning curve the stop rules can watch, a run time, and crashes where learning rates
are too high. Its optimum is reachable from the baseline with the loop's own catalog edits, so tests and teaching
can check that a policy finds it, and how fast. Also what every stand-in world shares: `simulated_result`,
`power_law_run`, `serve_curve`, `moved_curve` and `gate_rejection`.
Does not own: running train.py (kit/harness.py) or replaying recorded runs (kit/bench/replay.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import edits, gate
from kit.results import CurveStream, HarnessConfig, Monitor, RunResult, Status

DEFAULT_HARNESS = HarnessConfig()


def simulated_result(world: str, budget: float, seed: int, run_dir: Path, status: Status, reason: str = "",
                     curve=(), val_bpb: float | None = None, trained: float = 0.0, total: float = 0.0) -> RunResult:
    """The RunResult of an experiment a stand-in world answered; its fingerprint names the world."""
    return RunResult(status=status, val_bpb=val_bpb, reason=reason, training_seconds=trained, total_seconds=total,
                     peak_mem_mb=None, num_steps=len(curve), curve=tuple(curve),
                     fingerprint={"profile": world, "budget": budget, "device": world}, seed=seed, run_dir=str(run_dir))


def serve_curve(world: str, budget: float, status: str, reason: str, curve, val_bpb: float | None, trained: float,
                total: float, seed: int, run_dir: Path, monitor: Monitor | None) -> RunResult:
    """A recorded (or replayed) run fed to the monitor point by point, as the harness does; a stop there is a pruned
    run whose cost is the share of the run it took."""
    stream = CurveStream(monitor)
    if stop := stream.feed(curve):
        t, overhead = stream.curve[-1][0], max(total - trained, 0.0)
        return simulated_result(world, budget, seed, run_dir, Status.PRUNED, stop, stream.curve, None, t,
                                t + overhead / 2)
    return simulated_result(world, budget, seed, run_dir, Status(status), reason, stream.curve, val_bpb, trained,
                            total)


def moved_curve(record: dict, val_bpb: float, budget: float) -> list[tuple[float, float]]:
    """A recorded ok run's curve, moved to end where a run ending at val_bpb ends: val_bpb and training loss differ
    in units, so the shift goes through the record's own ratio of final loss to val_bpb."""
    tail = [loss for t, loss in record["curve"] if t >= 0.95 * budget] or [record["curve"][-1][1]]
    shift = (val_bpb - record["val_bpb"]) * float(np.mean(tail)) / record["val_bpb"]
    return [(t, loss + shift) for t, loss in record["curve"]]


def power_law_run(world: str, budget: float, seed: int, run_dir: Path, monitor: Monitor | None,
                  rng: np.random.Generator, final: float, points: int, height: float, jitter: float,
                  crash: str | None, overhead: float) -> RunResult:
    """A run whose loss falls as final + height (u^-1/2 - 1) over the share u of the budget, with jitter, reported
    at `points` even steps to the monitor (a stop there is a pruned run); a crash ends it at a fifth."""
    stream = CurveStream(monitor)
    for i in range(1, points + 1):
        u = i / points
        t = budget * u
        loss = final + height * (u ** -0.5 - 1) + jitter * float(rng.standard_normal())
        if crash and u > 0.2:
            return simulated_result(world, budget, seed, run_dir, Status.CRASH, crash, stream.curve, None, t,
                                    t + overhead / 2)
        if reason := stream.add(round(t, 3), loss):
            return simulated_result(world, budget, seed, run_dir, Status.PRUNED, reason, stream.curve, None, t,
                                    t + overhead / 2)
    return simulated_result(world, budget, seed, run_dir, Status.OK, "", stream.curve, round(final, 6), budget,
                            budget + overhead)


def gate_rejection(source: str, config: HarnessConfig) -> str | None:
    """Why the harness's gate would refuse source (None if it passes or the config turns the gate off)."""
    if not config.run_gate:
        return None
    verdict = gate.check_source(source)
    return None if verdict.ok else f"gate: {verdict.summary()}"


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    """Which objective: the important knobs, their optimal values and the noise all follow from it."""
    important: int = 4
    """Knobs whose value matters; every other knob leaves val_bpb unchanged."""
    floor: float = 2.40
    """val_bpb at the optimum, before noise."""
    gap: float = 0.15
    """How much worse the baseline is than the optimum."""
    noise: float = 0.004
    """Standard deviation of val_bpb between seeds and between equal configs run twice."""
    points: int = 60
    """Progress reports per full run."""
    overhead: float = 6.0
    """Seconds of start-up, hand-off and evaluation on top of the training budget."""
    budget: float = 60.0
    """Training seconds of a run when the harness config gives none."""

    def __post_init__(self) -> None:
        if self.important < 1 or self.points < 2 or not (self.gap > 0 and self.noise >= 0 and self.budget > 0):
            raise ValueError(f"need important >= 1, points >= 2, gap > 0, noise >= 0, budget > 0, got {self}")


class SyntheticEnvironment:
    """val_bpb = floor + Σ w_k (u_k − u*_k)² over the important knobs (u: a knob's value mapped to [0, 1]) + noise.
    Each optimal value u*_k is what one or two catalog edits of that knob make of the baseline, so the optimum is
    reachable; the weights make the baseline exactly `gap` worse than it. A learning rate in the top tenth of its
    range diverges (status crash). The curve is a power law in the share of the budget that ends at the run's
    val_bpb; a monitor that asks to stop gets a pruned result with the curve so far."""

    def __init__(self, baseline: str, config: SyntheticConfig = SyntheticConfig()):
        self.config, self.baseline = config, baseline
        knobs = {k.name: k for k in edits.knobs(baseline)}
        rng = np.random.default_rng(config.seed)
        catalog = edits.build_catalog(baseline)
        by_knob: dict[str, list[edits.Edit]] = {}
        for edit in catalog:
            if edit.name in knobs and knobs[edit.name].kind != "bool":
                by_knob.setdefault(edit.name, []).append(edit)
        candidates = sorted(by_knob)
        chosen = rng.choice(len(candidates), size=min(config.important, len(candidates)), replace=False)
        target = baseline
        for name in sorted(candidates[i] for i in chosen):
            for _ in range(int(rng.integers(1, 3))):  # one or two edits of this knob, each must change it
                options = [e for e in by_knob[name] if edits.edit_mask(target, [e])[0]]
                target = edits.apply_edit(target, options[int(rng.integers(len(options)))])
        self.optimum_values = {k.name: k.value for k in edits.knobs(target) if not edits._same(k.value,
                                                                                               knobs[k.name].value)}
        if not self.optimum_values:
            raise ValueError(f"seed {config.seed} drew edits that cancel out; choose another seed")
        self.optimum_source = target
        self.knobs = {name: knobs[name] for name in self.optimum_values}
        self._target = {name: knobs[name].normalized(v) for name, v in self.optimum_values.items()}
        distances = {name: (knobs[name].normalized(knobs[name].value) - u) ** 2 for name, u in self._target.items()}
        shares = rng.dirichlet(np.ones(len(distances)))  # how much of the gap each knob owns
        self._weights = {name: config.gap * float(s) / d for (name, d), s in zip(distances.items(), shares,
                                                                                  strict=True)}
        self.optimum = config.floor

    # the objective ------------------------------------------------------------------------------------------

    def expected_bpb(self, source: str) -> float:
        """val_bpb before noise."""
        values = {k.name: k.value for k in edits.knobs(source)}
        return self.config.floor + sum(w * (self.knobs[n].normalized(values[n]) - self._target[n]) ** 2
                                       for n, w in self._weights.items())

    def diverges(self, source: str) -> str | None:
        for k in edits.knobs(source):
            if k.name.endswith("_LR") and k.low is not None and k.normalized(k.value) > 0.9:
                return f"{k.name} = {k.value:g}: loss became NaN (synthetic: learning rates in the top tenth diverge)"
        return None

    # the environment ----------------------------------------------------------------------------------------

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        c = self.config
        budget = float(config.budget or c.budget)
        seed = int(config.seed if config.seed is not None else 0)

        if rejection := gate_rejection(source, config):
            return simulated_result(f"synthetic-{c.seed}", budget, seed, run_dir, Status.REJECTED, rejection)
        rng = np.random.default_rng([c.seed, seed, int(hashlib.sha256(source.encode()).hexdigest()[:12], 16)])
        final = self.expected_bpb(source) + c.noise * float(rng.standard_normal())
        return power_law_run(f"synthetic-{c.seed}", budget, seed, run_dir, monitor, rng, final, c.points, 0.6, 0.01,
                             self.diverges(source), c.overhead)

    def describe(self) -> str:
        """The optimum in one line, for tests and teaching."""
        changes = ", ".join(f"{n} -> {v!r}" for n, v in self.optimum_values.items())
        return (f"synthetic objective {self.config.seed}: optimum {self.optimum:.3f} at {changes}; baseline "
                f"{self.expected_bpb(self.baseline):.3f}")
