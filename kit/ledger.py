"""The durable record of a research run: every experiment, whatever its outcome, in one SQLite file per run directory.

Owns: `Record` and RUN_DIR/ledger.sqlite, with written guarantees: an append is committed, and by default fsynced,
before it returns (WAL journal); finished records never change or vanish (triggers refuse it); one writer at a time
(an flock on RUN_DIR/ledger.lock; readers need none); what records() gives back is exactly what was appended. Also
small JSON values of the loop's (meta).
Does not own: what a record says (kit/loop.py fills it in), git, the files a person reads (kit/report.py), or the
live view (kit/dashboard.py reads readonly).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kit.results import FAILURES, Status

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "ledger.lock"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LedgerConfig:
    """How the ledger's SQLite file is opened."""

    synchronous: str = "FULL"
    """SQLite synchronous level. FULL (default) fsyncs the WAL at every commit, so a record survives power loss too;
    it costs milliseconds per append, nothing beside a run of minutes. NORMAL survives a killed process only."""
    busy_timeout: float = 10.0
    """Seconds a connection waits on another's lock (a reader during a checkpoint) before it fails."""

    def __post_init__(self) -> None:
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, got {self.synchronous=}")
        if not self.busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {self.busy_timeout=}")


def _plain(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays, torch tensors (anything with tolist) become plain Python."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_plain, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON (dicts, lists, str, numbers, bools, None): {error}") from None


_JSON_FIELDS = {"reward_parts": dict, "curve": list, "predictions": list, "timings": dict, "policy_stats": dict,
                "fingerprint": dict}


@dataclass
class Record:
    """One finished experiment. Dicts and lists are held in their JSON form from construction on (tuples become lists,
    numpy values plain numbers, dict keys strings), so what is appended is exactly what records() gives back."""

    iteration: int  # the loop's step (0: the baseline)
    policy: str  # name of the policy that proposed it (ppo, random, greedy, tpe, cmaes, gp, ...)
    description: str  # what the experiment tried, one line, e.g. 'MATRIX_LR ×1.25'
    diff: str  # unified diff of train.py against the parent
    parent_commit: str | None  # git commit the edit was applied to
    commit: str | None  # git commit of the edited train.py, if one was made
    status: str  # a Status value (kit/results.py): ok, pruned, crash, timeout, rejected, tampered, contended
    reason: str  # why it ended that way (the traceback's last line, the gate's finding, the stop rule's reason)
    val_bpb: float | None  # the trusted validation bits per byte; None when there is none (NaN is stored as None)
    reward: float | None  # total reward the policy learned from
    reward_parts: dict  # the reward's components by name
    accepted: bool  # kept as the new incumbent (only ok or pruned runs can be)
    curve: list  # [training seconds, loss] points from the progress stream
    predictions: list  # the predictor's forecasts made during the run
    timings: dict  # seconds per phase (gate, train, evaluate, ...)
    policy_stats: dict  # the policy's numbers for this step (logprob, value, PPO losses, ...)
    fingerprint: dict  # the frozen side's fingerprint: runs compare only within one
    peak_mem_mb: float | None  # peak accelerator memory of training
    training_seconds: float  # seconds spent training
    total_seconds: float  # seconds from start to result, evaluation included
    seed: int | None  # seed the frozen side gave the run
    code_hash: str  # normalized-code hash of the train.py that ran
    id: int | None = None  # assigned by Ledger.append (1, 2, ... in append order)
    created: float | None = None  # unix time of the append, unless set before

    def __post_init__(self) -> None:
        for name in ("policy", "description", "diff", "reason", "code_hash", "parent_commit", "commit"):
            if not isinstance(value := getattr(self, name), str) and not (value is None and name.endswith("commit")):
                raise ValueError(f"Record.{name} must be a str, got {value=}")
        for name in ("iteration", "seed", "id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63):
                raise ValueError(f"Record.{name} must be a 64-bit int, got {value=}")
        if self.iteration is None or self.iteration < 0:
            raise ValueError(f"Record.iteration must be >= 0, got {self.iteration=}")
        if self.status not in {s.value for s in Status}:
            raise ValueError(f"Record.status must be one of {[s.value for s in Status]}, got {self.status=}")
        self.status = Status(self.status).value  # a plain str, also when a Status came in
        if self.accepted not in (True, False) or (self.accepted and self.status in FAILURES):
            raise ValueError(f"Record.accepted is a bool, False for a failed run, got {self.accepted=} {self.status=}")
        self.accepted = bool(self.accepted)
        for name in ("val_bpb", "reward", "peak_mem_mb", "created", "training_seconds", "total_seconds"):
            value = None if getattr(self, name) is None else float(getattr(self, name))
            setattr(self, name, None if value is None or math.isnan(value) else value)  # SQLite stores NaN as NULL
        if self.training_seconds is None or self.total_seconds is None:
            raise ValueError(f"Record seconds must be numbers, got {self.training_seconds=} {self.total_seconds=}")
        for name, kind in _JSON_FIELDS.items():
            if not isinstance(value := getattr(self, name), kind if kind is dict else (list, tuple)):
                raise ValueError(f"Record.{name} must be a {kind.__name__}, got {value=}")
            setattr(self, name, json.loads(_dumps(value, f"Record.{name}")))


_COLUMNS = [f.name for f in fields(Record)]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, iteration INTEGER NOT NULL, policy TEXT NOT NULL,
    description TEXT NOT NULL, diff TEXT NOT NULL, parent_commit TEXT, "commit" TEXT, status TEXT NOT NULL,
    reason TEXT NOT NULL, val_bpb REAL, reward REAL, reward_parts TEXT NOT NULL, accepted INTEGER NOT NULL,
    curve TEXT NOT NULL, predictions TEXT NOT NULL, timings TEXT NOT NULL, policy_stats TEXT NOT NULL,
    fingerprint TEXT NOT NULL, peak_mem_mb REAL, training_seconds REAL NOT NULL, total_seconds REAL NOT NULL,
    seed INTEGER, code_hash TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TRIGGER IF NOT EXISTS records_never_change BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'finished records never change'); END;
CREATE TRIGGER IF NOT EXISTS records_never_vanish BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'finished records never change'); END;
"""


class LedgerLocked(RuntimeError):
    """Another process holds the run directory's ledger for writing."""


def _lock(lock_path: Path):
    """An exclusive flock held for as long as the returned file stays open (the kernel drops it if we die)."""
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        pid = f", pid {holder}" if holder.isdigit() else ""
        raise LedgerLocked(f"another loop is running on this run directory ({lock_path.parent}{pid}): stop it first, "
                           "or open the ledger with readonly=True to watch it") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))  # for the message another process shows
    handle.flush()
    return handle


class Ledger:
    """The run directory's ledger: one writer (enforced), any number of readonly readers, appends durable on return.
    path is the run directory (the ledger is RUN_DIR/ledger.sqlite) or a path ending in .sqlite."""

    def __init__(self, path: str | Path, readonly: bool = False, config: LedgerConfig = LedgerConfig()):
        path = Path(path)
        self.path = path if path.suffix == ".sqlite" else path / LEDGER_FILE
        self.run_dir = self.path.parent
        self.readonly = readonly
        self._mutex = threading.Lock()  # one connection, shared by a loop thread and its callbacks
        self._lock_handle = self._db = None
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no ledger at {self.path}: run the loop on this run directory first")
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._lock_handle = _lock(self.run_dir / LOCK_FILE)
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000)}")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(f"PRAGMA synchronous = {config.synchronous}")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    script = f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    self._db.executescript(script)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has ledger schema {version}, this kit reads {SCHEMA_VERSION}: "
                                   "use the kit version that wrote it")
        except BaseException:
            self.close()
            raise

    def append(self, record: Record, meta: dict[str, Any] | None = None) -> int:
        """Store a finished record (and, in the same transaction, meta keys) and return its id; durable on return."""
        self._writable()
        if record.id is not None:
            raise ValueError(f"record already has {record.id=}: finished records are appended once (use id=None)")
        encoded_meta = [(key, _dumps(value, f"meta[{key!r}]")) for key, value in (meta or {}).items()]
        row = {name: getattr(record, name) for name in _COLUMNS if name != "id"}
        row["created"] = time.time() if record.created is None else record.created
        for name in _JSON_FIELDS:
            row[name] = _dumps(row[name], f"Record.{name}")
        columns = ", ".join(f'"{name}"' for name in row)
        with self._transaction() as db:
            cursor = db.execute(f"INSERT INTO records ({columns}) VALUES ({', '.join('?' * len(row))})",
                                list(row.values()))
            for key, text in encoded_meta:
                self._put_meta(db, key, text)
        return cursor.lastrowid

    def records(self, after: int = 0) -> list[Record]:
        """Every record in append order (only those with id > after, for a reader that polls)."""
        columns = ", ".join(f'"{name}"' for name in _COLUMNS)
        with self._mutex:
            rows = self._db.execute(f"SELECT {columns} FROM records WHERE id > ? ORDER BY id", (after,)).fetchall()
        records = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
        return [Record(**{k: json.loads(v) if k in _JSON_FIELDS else v for k, v in r.items()}) for r in records]

    def __len__(self) -> int:
        with self._mutex:
            return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A JSON value stored with set_meta, or default."""
        with self._mutex:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under key (replacing the old one); durable on return. Tuples come back as lists."""
        self._writable()
        text = _dumps(value, f"meta[{key!r}]")
        with self._transaction() as db:
            self._put_meta(db, key, text)

    @staticmethod
    def _put_meta(db: sqlite3.Connection, key: str, text: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"meta keys are non-empty strings, got {key=}")
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   (key, text))

    def _writable(self) -> None:
        if self.readonly:
            raise PermissionError(f"this ledger ({self.path}) was opened readonly; the loop that owns it writes")

    @contextlib.contextmanager
    def _transaction(self):
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the database, then give up the writer's lock. Safe to call twice."""
        with self._mutex:
            if self._db is not None:
                self._db.close()
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
