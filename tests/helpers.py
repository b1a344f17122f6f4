"""Shared test doubles and small builders: stand-in worlds for the loop, a small action space for the policies,
configs, records, and telling a policy an outcome."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit import REPO_ROOT
from kit.ledger import Ledger, Record
from kit.loop import LoopConfig
from kit.policies import Outcome, Setup, State
from kit.results import RunResult, Status
from kit.stopping import StopConditions

REPO = REPO_ROOT
TRAIN_PY = REPO / "train.py"


def ok_result(value: float, run_dir, seed: int = 0, curve=None) -> RunResult:
    """An ok run that scored value, with a two-point curve ending there."""
    return RunResult(status=Status.OK, val_bpb=value, reason="", training_seconds=1.0, total_seconds=1.0,
                     peak_mem_mb=1.0, num_steps=3, curve=curve or ((0.5, 3.0), (1.0, value)),
                     fingerprint={"device": "cpu"}, seed=seed, run_dir=str(run_dir))


class StandIn:
    """A world for the loop: the baseline lands at 2.50/2.52/2.48 under the noise floor's three seeds (sd 0.02); any
    edit lands at `first` under the frozen seed and at `later` under every other seed. Remembers the seeds asked."""

    def __init__(self, baseline: str, first: float, later: float):
        import prepare

        self.baseline, self.first, self.later = baseline, first, later
        self.frozen = prepare.get_profile("smoke").seed
        self.seeds: list[int] = []

    def __call__(self, source, run_dir, config, monitor=None):
        seed = self.frozen if config.seed is None else config.seed
        self.seeds.append(seed)
        if source == self.baseline:
            value = {0: 2.50, 1: 2.52, 2: 2.48}[seed - self.frozen]
        else:
            value = self.first if seed == self.frozen else self.later
        return ok_result(value, run_dir, seed)


def flat(source, run_dir, config, monitor=None) -> RunResult:
    """A world where every run scores the same: nothing ever improves."""
    return ok_result(2.5, run_dir, curve=((0.5, 3.0), (1.0, 2.9)))


def loop_config(tmp_path, iterations: int | None = None, **overrides) -> LoopConfig:
    """The loop on the smoke profile in tmp_path/run with the random policy and no early stopping."""
    return LoopConfig(**{"run_dir": tmp_path / "run", "profile": "smoke", "policy": "random",
                         "early_stopping": "none", "train_py": TRAIN_PY,
                         "stop": StopConditions(iterations=iterations), **overrides})


def processes_naming(marker: str) -> list[int]:
    """The processes whose command line names marker (a run directory: train.py and its sandbox do)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def ledger_records(run_dir) -> list:
    with Ledger(run_dir, readonly=True) as ledger:
        return ledger.records()


def tell(policy, state, proposal, val_bpb, accepted: bool = False, reward: float = 0.0, pruned: bool = False,
         duplicate: bool = False) -> dict:
    """Tell a policy what became of its proposal, as the loop does (val_bpb is a pruned run's forecast)."""
    return policy.observe(Outcome(state, proposal, val_bpb, accepted, reward,
                                  next_observation=lambda: np.asarray(state.observation, dtype=np.float32),
                                  pruned=pruned, duplicate=duplicate))


def make_record(**changes) -> Record:
    """A record with every field set to something that a lossy store would mangle."""
    values = dict(
        iteration=3, policy="ppo", description="MATRIX_LR ×1.25 — ünïcode", diff="--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n",
        parent_commit="0123456789abcdef0123456789abcdef01234567", commit="fedcba9876543210fedcba9876543210fedcba98",
        status="ok", reason="", val_bpb=1.0 / 3.0, reward=0.1 + 0.2, reward_parts={"accuracy": 0.1 + 0.2, "efficiency": -1e-300},
        accepted=True, curve=[[0.5, 5.55], [1.0, 4.125], [1.5, 3.0000000000000004]],
        predictions=[{"t": 1.0, "predicted": 2.5, "params": [1.5, 0.3, 2.0]}], timings={"train": 61.25, "eval": 2.0},
        policy_stats={"logprob": -2.302585092994046, "value": 0.7, "action": 17}, peak_mem_mb=12345.678,
        fingerprint={"profile": "smoke", "torch": "2.13.0", "device": "cpu", "budget": 5.0},
        training_seconds=60.00000000000001, total_seconds=75.5, seed=2**62 + 7, code_hash="ab" * 32)
    values.update(changes)
    return Record(**values)


# a small action space for the catalog policies: three knobs in [0, 6], each moved by ±1 ---------------------------


@dataclass(frozen=True)
class Step:
    """A stand-in for kit.edits.Edit: move knob `knob` by `delta`."""

    knob: int
    delta: int

    def describe(self) -> str:
        return f"K{self.knob} {self.delta:+d}"


CATALOG = [Step(k, d) for k in range(3) for d in (-1, 1)]
HIGH = 6  # every knob lives in [0, HIGH]


def mask_of(config: np.ndarray) -> np.ndarray:
    return np.array([0 <= config[e.knob] + e.delta <= HIGH for e in CATALOG])


def state_of(config: np.ndarray, mask: np.ndarray | None = None) -> State:
    mask = mask_of(config) if mask is None else mask
    return State(f"K = {config.tolist()}", CATALOG, mask, (config / HIGH).astype(np.float32), [])




def setup(seed: int = 0, **overrides) -> Setup:
    """What the registry builds a catalog policy from, for this action space (ppo from scratch: no weights were
    made for it)."""
    return Setup(catalog=CATALOG, knobs=[], observation_size=3, seed=seed, **{"from_scratch": True, **overrides})


# a small space of ranged knobs for the samplers
QUADRATIC = """
A = 0.5        # first [0.0, 1.0]
B = 0.5        # second [0.0, 1.0]
C = 0.5        # third [-1.0, 1.0]
LR = 0.01      # a log-scaled one [0.0001, 0.1]
N = 5          # an integer [0, 10]
"""
