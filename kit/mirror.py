"""The run directory as an Optuna study, so that optuna-dashboard shows a run while it goes and after.

Owns: RUN_DIR/optuna.sqlite3 (Optuna's RDB storage) holding one study named after the run directory, and `Mirror`,
which adds the ledger's records it does not hold yet, in order, one trial each: the ranged hyperparameters of the
train.py that ran as params (on the baseline's declared ranges; a value outside them is left out), val_bpb as the
value, the state from the status (ok: COMPLETE; pruned: PRUNED; every failure, and a contended run, which was never
judged: FAIL), the learning curve as intermediate values (the latest loss in each training second, keyed by the
second), and iteration, status, reason, description, diff, commit, seed, policy and whether it was kept as user
attributes. Writers take RUN_DIR/optuna.lock, so the loop and `python -m kit dashboard` can both keep it in step.
The ledger stays the record: the mirror can be deleted and rebuilt from it at any time. `side_by_side` mirrors several
run directories into one storage, a study each, so optuna-dashboard can compare them.
Does not own: the records (kit/ledger.py), train.py's history (kit/repo.py) or serving the page (kit/cli.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kit import edits
from kit.ledger import Record
from kit.results import Status

STUDY_FILE = "optuna.sqlite3"
STATES = {Status.OK: "COMPLETE", Status.PRUNED: "PRUNED"}  # every other status is FAIL


def storage_url(path: Path) -> str:
    """The RDB URL of a mirror's file: RUN_DIR/optuna.sqlite3 for a run directory, or the file itself."""
    path = Path(path)
    return f"sqlite:///{(path / STUDY_FILE if path.is_dir() else path).resolve()}"


class Mirror:
    """The Optuna study of one run directory; `sync(records)` brings it up to them."""

    def __init__(self, run_dir: Path, baseline: str, source_of: Callable[[Record], str | None],
                 storage: Path | None = None, name: str | None = None):
        """baseline: the run's first train.py, whose declared ranges are the study's distributions; source_of: the
        train.py a record ran, or None where it cannot be told (kit.repo.TrainRepo.source_of); storage: the SQLite
        file (RUN_DIR/optuna.sqlite3); name: the study's (the run directory's)."""
        from kit.policies.samplers import distribution

        self.run_dir, self.source_of = Path(run_dir).resolve(), source_of
        self.storage = Path(storage) if storage is not None else self.run_dir / STUDY_FILE
        self.name = name or self.run_dir.name
        self.distributions = {k.name: distribution(k) for k in edits.knobs(baseline) if k.has_range}
        self._study = self._rdb = None

    @classmethod
    def of(cls, run_dir: Path, storage: Path | None = None, name: str | None = None) -> Mirror:
        """The mirror of a run directory as a reader builds it: the baseline and every record's train.py from its git
        history (none where there is no history: trials without params)."""
        from kit.ledger import Ledger
        from kit.repo import TrainRepo

        repo = TrainRepo(Path(run_dir) / "repo")
        with Ledger(run_dir, readonly=True) as ledger:
            baseline_commit = ledger.get_meta("baseline_commit")
        if baseline_commit is None or not repo.exists():
            return cls(run_dir, "", lambda record: None, storage, name)
        return cls(run_dir, repo.show(baseline_commit), repo.source_of, storage, name)

    def follow_ledger(self, wait: bool = True) -> int:
        """sync with the ledger's records as they are now (read-only: a loop may be writing them)."""
        from kit.ledger import Ledger

        with Ledger(self.run_dir, readonly=True) as ledger:
            return self.sync(ledger.records(), wait=wait)

    @property
    def study(self):
        """The study, created (with its storage's tables) under the lock the first time: two writers starting on a new
        file must not both create it."""
        if self._study is None:
            with self._locked(wait=True):
                self._open()
        return self._study

    def _open(self) -> None:
        import optuna

        if self._study is None:
            logging.getLogger("optuna").setLevel(logging.WARNING)  # the ledger says everything already
            self._rdb = optuna.storages.RDBStorage(storage_url(self.storage),
                                                   engine_kwargs={"connect_args": {"timeout": 30}})
            self._study = optuna.create_study(storage=self._rdb, study_name=self.name, direction="minimize",
                                              load_if_exists=True)

    def sync(self, records: list[Record], wait: bool = True) -> int:
        """Add the records the study does not hold yet (it holds the first n: one trial per record, in order); how
        many were added. wait=False gives up at once (0) while another writer holds the mirror: the research loop
        catches up at its next record rather than wait on a reader's rebuild."""
        with self._locked(wait) as locked:
            if not locked:
                return 0
            self._open()
            # counted in the database itself, not Optuna's cache of it: another writer may have added some
            held = self._rdb.get_n_trials(self._rdb.get_study_id_from_name(self.name))
            for record in records[held:]:
                self._study.add_trial(self.trial(record))
            return max(0, len(records) - held)

    def close(self) -> None:
        """Let go of the storage's connections."""
        if self._rdb is not None:
            self._rdb.engine.dispose()
        self._study = self._rdb = None

    def trial(self, record: Record):
        """The record as a finished Optuna trial."""
        import optuna
        from optuna.trial import TrialState

        state = TrialState[STATES.get(Status(record.status), "FAIL")]
        if state is TrialState.COMPLETE and not (record.val_bpb is not None and math.isfinite(record.val_bpb)):
            state = TrialState.FAIL  # Optuna refuses a finished trial without a finite value
        ended = datetime.datetime.fromtimestamp(record.created or 0.0)
        params = self.params(record)
        return optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=state, value=record.val_bpb if state is TrialState.COMPLETE else None,
            values=None, datetime_start=ended - datetime.timedelta(seconds=record.total_seconds),
            datetime_complete=ended, params=params, distributions={n: self.distributions[n] for n in params},
            user_attrs=_attributes(record), system_attrs={}, intermediate_values=_per_second(record.curve))

    def params(self, record: Record) -> dict[str, Any]:
        """The ranged knobs of the train.py the record ran, where they lie in the baseline's ranges; none for a
        proposal that made no train.py (it was refused before anything ran)."""
        if record.status == Status.REJECTED and not record.diff:
            return {}
        source = self.source_of(record)
        if source is None:
            return {}
        try:
            knobs = edits.knobs(source)
        except (SyntaxError, ValueError):
            return {}
        params = {}
        for knob in knobs:
            distribution = self.distributions.get(knob.name)
            with contextlib.suppress(ValueError, TypeError):  # a value of another type, or out of the range
                if distribution is not None and distribution._contains(distribution.to_internal_repr(knob.value)):
                    params[knob.name] = knob.value
        return params

    @contextlib.contextmanager
    def _locked(self, wait: bool) -> Iterator[bool]:
        """Hold the mirror's lock file (whether it was had: with wait=False it may not be)."""
        with open(self.storage.with_suffix(".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _attributes(record: Record) -> dict[str, Any]:
    return {"iteration": record.iteration, "status": record.status, "reason": record.reason,
            "description": record.description, "policy": record.policy, "kept": record.accepted,
            "diff": record.diff, "commit": record.commit or "", "seed": record.seed}


def _per_second(curve: list) -> dict[int, float]:
    """The latest loss in each whole training second: optuna-dashboard plots intermediate values by integer step."""
    values: dict[int, float] = {}
    for t, loss in curve:
        if math.isfinite(loss):  # Optuna refuses NaN and infinities
            values[int(t)] = float(loss)
    return values


def side_by_side(run_dirs: list[Path], storage: Path) -> list[Mirror]:
    """Mirrors of several run directories into one SQLite file, a study each, so that optuna-dashboard lists and
    compares them; each study is named after the end of its directory's path, as much of it as tells them apart."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    names = [f"{Path(d).name} ({i})" for i, d in enumerate(run_dirs, 1)]  # the same directory twice
    for depth in range(1, max(map(len, parts)) + 1):
        if len(set(tried := ["/".join(p[-depth:]) for p in parts])) == len(parts):
            names = tried
            break
    return [Mirror.of(d, storage, name) for d, name in zip(run_dirs, names, strict=True)]


def rebuild_from(run_dir: Path) -> int:
    """Bring RUN_DIR's mirror up to its ledger (creating it if there is none, as for a run directory written before
    there was a mirror); how many trials were added."""
    mirror = Mirror.of(run_dir)
    try:
        return mirror.follow_ledger()
    finally:
        mirror.close()
