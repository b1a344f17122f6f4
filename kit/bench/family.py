"""A family of synthetic worlds drawn from a prior: coupled knobs, curves that cross, the cpu profile's noise, and
optima that no chain of catalog edits lands on.

Owns: `FamilyConfig`, `SyntheticFamily` (one member of the family, answering through the harness's signature,
kit.results.Environment, with `expected_bpb` for the noise-free value), and which members are held out:
`held_out_member(i)` is what the agents benchmark's seed i meets, and no test or tuning may use those members
(tests use `DEVELOPMENT` members). The easy catalog-shaped world for teaching is kit/bench/environments.py.
Does not own: running loops against it (kit/bench/agents.py).

A member, from its number alone:
- `important` numeric knobs matter, MATRIX_LR and BATCH_SIZE always among them. In their normalized coordinates
  u (kit.hyperparams.Hyperparameter.normalized) the excess over the floor is a rotated, anisotropic quadratic
  around an optimum u* drawn near the baseline at continuous positions, plus a learning-rate × batch valley (the
  best MATRIX_LR moves with BATCH_SIZE), saturating so that far configs are bad but finite;
- one choice knob shifts val_bpb by a per-choice offset, so the best choice need not be the baseline's;
- each learning rate diverges above a threshold of its own;
- the learning curve's early height depends on the config along a direction of its own, so a config that is worse
  early can end better (curves cross), and the number of progress reports shrinks as the model grows (a large
  model reports few points in the same budget);
- the seed noise is the cpu profile's (about 0.023 between baseline seeds on the recording machine), scaled per
  member.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kit import edits
from kit.bench.environments import DEFAULT_HARNESS, gate_rejection, power_law_run, simulated_result
from kit.hyperparams import Hyperparameter
from kit.results import HarnessConfig, Monitor, RunResult, Status

DEVELOPMENT = range(0, 1000)
"""Members tests and tuning may use."""
HELD_OUT_START = 100_000
"""The agents benchmark's seed i meets member HELD_OUT_START + i: members nothing was ever tuned on."""
CPU_NOISE = 0.023
"""The sd of val_bpb between baseline seeds on the cpu profile (17 clean recorded runs, data/curves-cpu.jsonl.gz)."""
SATURATION = 1.0
"""val_bpb the excess approaches far from the optimum."""
COUPLED = ("MATRIX_LR", "BATCH_SIZE")


def held_out_member(seed: int) -> int:
    return HELD_OUT_START + seed


@dataclass(frozen=True)
class FamilyConfig:
    member: int = 0
    """Which member: every property of the world follows from it."""
    important: int = 6
    """Numeric knobs that matter (COUPLED among them)."""
    points: int = 60
    """Progress reports of a baseline-sized run."""
    overhead: float = 6.0
    """Seconds of start-up, hand-off and evaluation on top of the training budget."""
    budget: float = 60.0
    """Training seconds of a run when the harness config gives none."""

    def __post_init__(self) -> None:
        if self.important < len(COUPLED) or self.points < 2 or self.budget <= 0:
            raise ValueError(f"need important >= {len(COUPLED)}, points >= 2, budget > 0, got {self}")


def value_at(knob: Hyperparameter, u: float) -> Any:
    """The knob's value at normalized position u (the inverse of Hyperparameter.normalized)."""
    u = min(max(u, 0.0), 1.0)
    x = knob.low * (knob.high / knob.low) ** u if knob.log_scale else knob.low + u * (knob.high - knob.low)
    return int(round(x)) if knob.kind == "int" else float(f"{x:.4g}")


class SyntheticFamily:
    """One member of the family; deterministic for a (source, seed) pair."""

    def __init__(self, baseline: str, config: FamilyConfig = FamilyConfig()):
        self.config, self.baseline = config, baseline
        rng = np.random.default_rng([0x5EED, config.member])
        knobs = {k.name: k for k in edits.knobs(baseline)}
        numeric = [n for n, k in knobs.items() if k.low is not None and k.kind in ("int", "float") and k.high > k.low]
        others = [n for n in numeric if n not in COUPLED]
        picked = rng.choice(len(others), size=min(config.important - len(COUPLED), len(others)), replace=False)
        self.names = [*COUPLED, *(others[i] for i in sorted(picked))]
        self.knobs = knobs
        self._u0 = np.array([knobs[n].normalized(knobs[n].value) for n in self.names])
        n = len(self.names)
        self._lr_index = [i for i, name in enumerate(self.names) if name.endswith("_LR")]
        self._threshold = {i: float(rng.uniform(0.75, 0.95)) for i in self._lr_index}
        target = self._u0 + rng.normal(0.0, 0.12, n)
        for i in self._lr_index:  # the optimum trains: it sits below where its learning rates diverge
            target[i] = min(target[i], self._threshold[i] - 0.1)
        self._target = np.clip(target, 0.05, 0.95)
        rotation, _ = np.linalg.qr(rng.normal(size=(n, n)))
        self._curvature = rotation @ np.diag(np.exp(rng.uniform(math.log(0.3), math.log(3.0), n))) @ rotation.T
        self._valley = float(rng.uniform(0.4, 0.8))  # how far the best MATRIX_LR moves per unit of BATCH_SIZE
        self._valley_weight = float(rng.uniform(1.0, 4.0))
        gap = float(rng.uniform(0.06, 0.2))
        self._scale = SATURATION * math.atanh(gap / SATURATION) / self._quadratic(self._u0)
        self.floor = float(rng.uniform(2.3, 2.45))
        choices = [k for k in knobs.values() if k.choices is not None and k.kind != "bool" and len(k.choices) > 1]
        self.choice = choices[int(rng.integers(len(choices)))]
        offsets = rng.normal(0.0, 0.25 * gap, len(self.choice.choices))
        offsets -= offsets[self.choice.choices.index(self.choice.value)]  # the baseline's choice costs nothing
        self._offsets = dict(zip(self.choice.choices, offsets.tolist(), strict=True))
        self._early_direction = rng.normal(size=n) / math.sqrt(n)
        self.noise = CPU_NOISE * float(rng.uniform(0.6, 1.4))
        self._size0 = self._size({k.name: k.value for k in knobs.values()})
        best_choice = min(self._offsets, key=self._offsets.get)
        self.optimum = self.floor + self._offsets[best_choice]
        self.optimum_values = {name: value_at(knobs[name], float(u)) for name, u in zip(self.names, self._target,
                                                                                          strict=True)}
        self.optimum_values[self.choice.name] = best_choice

    # the objective ------------------------------------------------------------------------------------------

    def _quadratic(self, u: np.ndarray) -> float:
        d = u - self._target
        valley = d[0] + self._valley * d[1]  # MATRIX_LR's best value moves with BATCH_SIZE
        return float(d @ self._curvature @ d + self._valley_weight * valley ** 2)

    def _position(self, values: dict[str, Any]) -> np.ndarray:
        return np.array([self.knobs[n].normalized(values[n]) for n in self.names])

    def _values(self, source: str) -> dict[str, Any]:
        return {k.name: k.value for k in edits.knobs(source)}

    def _expected(self, values: dict[str, Any]) -> float:
        excess = SATURATION * math.tanh(self._scale * self._quadratic(self._position(values)) / SATURATION)
        return self.floor + excess + self._offsets.get(values[self.choice.name], 0.0)

    def expected_bpb(self, source: str) -> float:
        """val_bpb before noise."""
        return self._expected(self._values(source))

    def diverges(self, values: dict[str, Any]) -> str | None:
        u = self._position(values)
        for i in self._lr_index:
            if u[i] > self._threshold[i]:
                name = self.names[i]
                return f"{name} = {values[name]:g}: loss became NaN (synthetic family: this learning rate diverges)"
        return None

    def _size(self, values: dict[str, Any]) -> float:
        """Compute per optimizer step relative units: parameters times tokens."""
        get = lambda name: float(values.get(name, self.knobs[name].value) or 1)  # noqa: E731
        return get("DEPTH") * get("MODEL_DIM") ** 2 * (1 + get("MLP_RATIO")) * get("BATCH_SIZE")

    # the environment ----------------------------------------------------------------------------------------

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        c = self.config
        budget = float(config.budget or c.budget)
        seed = int(config.seed if config.seed is not None else 0)

        if rejection := gate_rejection(source, config):
            return simulated_result(f"family-{c.member}", budget, seed, run_dir, Status.REJECTED, rejection)
        values = self._values(source)
        digest = int(hashlib.sha256(source.encode()).hexdigest()[:12], 16)
        rng = np.random.default_rng([c.member, seed, digest])
        final = self._expected(values) + self.noise * float(rng.standard_normal())
        # a bigger model takes fewer steps in the budget, so it reports fewer points
        points = int(min(max(round(c.points * self._size0 / self._size(values)), 2), 4 * c.points))
        early = 0.6 * math.exp(float(self._early_direction @ (self._position(values) - self._u0)))
        return power_law_run(f"family-{c.member}", budget, seed, run_dir, monitor, rng, final, points, early,
                             0.3 * self.noise, self.diverges(values), c.overhead)

    def describe(self) -> str:
        """The member in one line, for reports and teaching."""
        changes = ", ".join(f"{n} -> {v!r}" for n, v in self.optimum_values.items())
        return (f"synthetic family member {self.config.member}: optimum {self.optimum:.3f} at {changes}; baseline "
                f"{self.expected_bpb(self.baseline):.3f}; seed noise {self.noise:.4f}")
