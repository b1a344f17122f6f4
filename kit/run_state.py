"""The loop's state: everything it knows about a run directory, rebuilt from the ledger's records and updated by
each new record through the same path, so a resumed loop knows exactly what an uninterrupted one would.

Owns: what a record means to the loop (the noise-floor and confirmation policies, the ok runs of a train.py),
the memory the policies see, the noise floor, the incumbent (the train.py last kept, judged by the mean of its ok
runs), the near misses waiting for their re-runs (one at a time, or several when workers run at once), the train.py
of every ok agent run (where a catalog policy goes on once the incumbent's edits are used up), the failures in a
row, and the stop rule's lessons from finished runs; and the verdict on a new run (kit/acceptance.py's rule,
applied to this state).
Does not own: running anything, git or the ledger (kit/loop.py), the rule itself (kit/acceptance.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from kit.acceptance import Acceptance, Verdict
from kit.ledger import Record
from kit.memory import Experiment, Memory
from kit.predictor import Reference, Rule
from kit.results import FAILURES, Status

NOISE_POLICY = "noise-floor"  # a baseline run under another seed, measuring the noise floor
CONFIRM_POLICY = "confirm"  # a near miss run again under another seed: not a proposal, not a PPO transition


def runs_of(records: list[Record], digest: str) -> list[float]:
    """val_bpb of every ok run of one train.py (by code hash): a kept edit's first run and its re-runs, or the
    baseline's noise floor. Their mean is what the loop judges a train.py by."""
    return [r.val_bpb for r in records if r.code_hash == digest and r.status == Status.OK and r.val_bpb is not None]


def is_duplicate(record: Record) -> bool:
    """A proposal of code already run: never run itself, so it says nothing about whether train.py works."""
    return "duplicate" in record.reward_parts


@dataclass
class Incumbent:
    """The train.py to beat: its code, the val_bpb of its ok runs so far, and its first run's curve."""

    code_hash: str
    source: str | None
    values: list[float]
    curve: tuple

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)


@dataclass
class NearMiss:
    """An edit whose first run came close: its train.py, the val_bpb of its runs so far, its first run's curve."""

    source: str
    description: str
    diff: str
    values: list[float]
    curve: tuple


class RunState:
    """A run directory as the loop knows it. Build it empty and add() every record, oldest first."""

    def __init__(self, noise_sigmas: float = 2.0, max_runs: int = 3, stop_rule: Rule | None = None):
        self.noise_sigmas, self.max_runs, self.stop_rule = noise_sigmas, max_runs, stop_rule
        self.records: list[Record] = []
        self.memory = Memory()
        self.noise_values: list[float] = []
        self.incumbent: Incumbent | None = None
        self.near_misses: dict[str, NearMiss] = {}  # code hash -> a near miss waiting for re-runs, oldest first
        self.sources: dict[str, tuple[str, str]] = {}  # code hash -> (train.py, description) of ok agent runs
        self.failures = 0  # failed runs in a row

    @classmethod
    def rebuild(cls, records: list[Record], source_of: Callable[[Record], str | None], **config) -> RunState:
        """The state after `records`; source_of gives the train.py a record ran (asked only where it matters)."""
        state = cls(**config)
        for record in records:
            state.add(record, source_of(record) if state.needs_source(record) else None)
        return state

    # what the state says ---------------------------------------------------------------------------------------

    @property
    def acceptance(self) -> Acceptance:
        spread = statistics.stdev(self.noise_values) if len(self.noise_values) >= 2 else 0.0
        return Acceptance(spread, self.noise_sigmas, self.max_runs)

    @property
    def noise_runs(self) -> int:
        return sum(r.policy == NOISE_POLICY and r.status != Status.CONTENDED for r in self.records)

    @property
    def near_miss(self) -> NearMiss | None:
        """The oldest near miss still waiting for its re-runs, or None."""
        return next(iter(self.near_misses.values()), None)

    @property
    def incumbent_mean(self) -> float | None:
        return self.incumbent.mean if self.incumbent is not None else None

    def verdict(self, policy: str, status: str, val_bpb: float | None, digest: str | None = None) -> Verdict:
        """What the loop does with a run that just ended: keep it, run it again (a near miss), or drop it. The first
        ok noise-floor run is kept (it becomes the incumbent); the others only join its mean. digest: the code hash
        of a re-run, whose near miss's earlier runs count with it (default: the oldest near miss's)."""
        ok = status == Status.OK and val_bpb is not None
        if policy == NOISE_POLICY:
            return Verdict.KEEP if ok and self.incumbent is None else Verdict.DROP
        if not ok or self.incumbent is None:
            return Verdict.DROP
        near = self.near_misses.get(digest) if digest is not None else self.near_miss
        runs = near.values if policy == CONFIRM_POLICY and near is not None else []
        return self.acceptance.verdict([*runs, val_bpb], self.incumbent.values)

    def stop_reference(self, budget: float) -> Reference | None:
        """The run a stop rule compares a new one with: the incumbent's first run, with the bar a near miss needs put
        relative to that run's val_bpb (a run not headed below it is not worth finishing). None without one."""
        if self.incumbent is None or not self.incumbent.curve:
            return None
        owner = self.incumbent.values[0]
        bar = self.acceptance.retry_bar(self.incumbent.values)
        return Reference(tuple(self.incumbent.curve), owner, budget, owner - bar)

    def needs_source(self, record: Record) -> bool:
        """Whether add() uses the train.py of this record: an ok run's that is not a re-run."""
        return record.status == Status.OK and record.policy != CONFIRM_POLICY

    # the one update path ----------------------------------------------------------------------------------------

    def add(self, record: Record, source: str | None = None) -> None:
        """Take in one finished record (in ledger order); source is the train.py it ran, where needs_source."""
        if record.status == Status.CONTENDED:  # never judged: it changes nothing but the count of records
            self.records.append(record)
            return
        verdict = self.verdict(record.policy, record.status, record.val_bpb, record.code_hash)  # as the loop judged it
        ok = record.status == Status.OK and record.val_bpb is not None
        near_miss = self.near_misses.get(record.code_hash)
        self.records.append(record)
        self.memory.add(Experiment(index=record.iteration, code_hash=record.code_hash,
                                   description=record.description, status=record.status,
                                   val_bpb=record.val_bpb if ok else None, reward=record.reward or 0.0,
                                   accepted=record.accepted))
        if record.policy == NOISE_POLICY and ok:
            self.noise_values.append(record.val_bpb)
        if record.accepted:
            first = next((r for r in self.records if r.code_hash == record.code_hash and r.status == Status.OK), record)
            kept = source if record.policy != CONFIRM_POLICY else near_miss.source if near_miss else None
            self.incumbent = Incumbent(record.code_hash, kept, runs_of(self.records, record.code_hash),
                                       tuple(map(tuple, first.curve)))
        elif ok and self.incumbent is not None and record.code_hash == self.incumbent.code_hash:
            self.incumbent.values.append(record.val_bpb)  # another noise-floor run of the baseline
        if record.policy == CONFIRM_POLICY:
            if near_miss is not None and ok:
                near_miss.values.append(record.val_bpb)
            if verdict is not Verdict.AGAIN or record.accepted:
                self.near_misses.pop(record.code_hash, None)
        elif record.policy != NOISE_POLICY:
            if verdict is Verdict.AGAIN and not record.accepted and source is not None:
                self.near_misses[record.code_hash] = NearMiss(source, record.description, record.diff,
                                                              [record.val_bpb], tuple(map(tuple, record.curve)))
            if ok and source is not None:
                self.sources[record.code_hash] = (source, record.description)
        if self.stop_rule is not None and ok and record.curve:
            self.stop_rule.learn(Reference(tuple(map(tuple, record.curve)), record.val_bpb, self.stop_rule.budget))
        if not is_duplicate(record):
            self.failures = self.failures + 1 if record.status in FAILURES else 0
