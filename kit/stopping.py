"""When the research loop stops, and when it waits: limits, the termination oracle, the files a person (or
the dashboard) uses to stop or hold it, and the file that says whether it runs and why it stopped.

Owns: `StopConditions`, a small callable over the records so far that says which condition fired (an iteration,
hour or GPU-hour limit, or convergence: the 95 % upper bound of the chance that an experiment still improves the
best by more than ε falls below a threshold), RUN_DIR/STOP and RUN_DIR/HOLD, Ctrl-C (the first one stops the
loop after the running experiment, a second one aborts it), and RUN_DIR/loop.json (`LoopStatus`: running, or
finished, stopped, paused or failed and why), which outlives the process, so a view opened later can say it.
Does not own: the estimate behind convergence (kit/bound.py) or the loop that asks (kit/loop.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kit import bound
from kit.ledger import Record
from kit.results import Status
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY

STOP_FILE, HOLD_FILE, STATUS_FILE = "STOP", "HOLD", "loop.json"
ENDED = ("finished", "stopped", "paused", "failed")
"""How a loop can end: a limit or the oracle (finished), a person (stopped: STOP, Ctrl-C), failures in a row or a
busy machine (paused: the same command resumes), an error (failed)."""


@dataclass(frozen=True)
class StopConditions:
    iterations: int | None = None
    """Stop once the ledger holds this many records (noise-floor runs included)."""
    hours: float | None = None
    """Stop after this many wall-clock hours of this invocation."""
    gpu_hours: float | None = None
    """Stop once experiments on a GPU have taken this many hours in total, over the whole run."""
    epsilon: float = 0.005
    """The convergence oracle's ε: an improvement of the best val_bpb by more than this counts."""
    convergence_threshold: float = 0.02
    """Stop when the upper confidence bound of P(ε-improvement per experiment) falls below this."""
    convergence_window: int = 60
    """Recent experiments the convergence estimate looks at (and needs before it may fire)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "hours", "gpu_hours"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value=}")
        if not (self.epsilon >= 0 and 0 < self.convergence_threshold < 1 and self.convergence_window >= 1):
            raise ValueError(f"need epsilon >= 0, 0 < convergence_threshold < 1, convergence_window >= 1, got "
                             f"{self.epsilon=}, {self.convergence_threshold=}, {self.convergence_window=}")

    def __call__(self, records: list[Record], elapsed_seconds: float) -> str | None:
        """Why the loop should stop now, in one line, or None."""
        if self.iterations is not None and len(records) >= self.iterations:
            return f"iterations: {len(records)} experiments recorded (limit {self.iterations})"
        if self.hours is not None and elapsed_seconds >= self.hours * 3600:
            return f"hours: {self.hours:g} h of wall-clock time spent"
        if self.gpu_hours is not None:
            spent = _gpu_hours(records)
            if spent >= self.gpu_hours:
                return f"gpu-hours: {spent:.2f} GPU-hours spent (limit {self.gpu_hours:g})"
        return self._converged(records)

    def share_left(self, records: list[Record], elapsed_seconds: float) -> float:
        """The share of the run still to go under the limits that are set (the smallest of them), in [0, 1]; 1 when
        none is: a policy that plans for the end of its run sees how near it is."""
        shares = [1.0]
        if self.iterations is not None:
            shares.append(1 - len(records) / self.iterations)
        if self.hours is not None:
            shares.append(1 - elapsed_seconds / (self.hours * 3600))
        if self.gpu_hours is not None:
            shares.append(1 - _gpu_hours(records) / self.gpu_hours)
        return min(1.0, max(0.0, min(shares)))

    def _converged(self, records: list[Record]) -> str | None:
        judged = [r for r in records if r.status != Status.CONTENDED]  # a contended run was never judged
        agent = [r for r in judged if r.policy not in (NOISE_POLICY, CONFIRM_POLICY)]
        if len(agent) < self.convergence_window:
            return None
        # re-runs of a near miss are left out: they are not proposals, and a lucky seed is not an improvement
        values = [r.val_bpb if r.status == Status.OK else None for r in judged if r.policy != CONFIRM_POLICY]
        estimate = bound.improvement_probability(values, self.epsilon, window=self.convergence_window)
        if estimate.upper >= self.convergence_threshold:
            return None
        return (f"converged: {estimate.successes}/{estimate.trials} recent experiments improved by more than "
                f"ε={self.epsilon:g}; P(improvement) ≤ {estimate.upper:.3f} (95 % bound) < "
                f"{self.convergence_threshold:g}")


def _gpu_hours(records: list[Record]) -> float:
    return sum(r.total_seconds for r in records if r.fingerprint.get("device") == "cuda") / 3600


def stop_requested(run_dir: Path) -> str | None:
    """Why to stop if RUN_DIR/STOP exists (it is removed: the next start runs again), else None."""
    stop_file = Path(run_dir) / STOP_FILE
    if not stop_file.exists():
        return None
    stop_file.unlink()
    return f"stopped by the stop file {stop_file}"


def wait_while_held(run_dir: Path, interrupted: Callable[[], bool], on_hold: Callable[[], None],
                    poll: float = 0.5) -> None:
    """Block while RUN_DIR/HOLD exists; a stop file or interrupted() ends the wait. on_hold is called once if it
    holds at all (to say so)."""
    hold, stop = Path(run_dir) / HOLD_FILE, Path(run_dir) / STOP_FILE
    if not hold.exists():
        return
    on_hold()
    while hold.exists() and not interrupted() and not stop.exists():
        time.sleep(poll)


@contextlib.contextmanager
def first_ctrl_c_calls(on_first: Callable[[], None]) -> Iterator[None]:
    """While inside: the first Ctrl-C calls on_first (so the loop can stop once the running experiment is recorded), a
    second one raises KeyboardInterrupt as usual. Only the main thread gets signals: elsewhere (a notebook runs the
    loop in a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = False

    def on_sigint(signum, frame) -> None:
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True
        on_first()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True)
class LoopStatus:
    """What RUN_DIR/loop.json says: the loop runs (in process pid on host), or how and why it ended."""

    state: str  # "running" or one of ENDED
    reason: str = ""  # why it ended, in one line
    pid: int | None = None
    host: str = ""
    pid_started: int | None = None  # when that process started (clock ticks after boot): a reused pid is not it
    started: float | None = None  # unix time this invocation started
    ended: float | None = None
    iterations: int | None = None  # this invocation's limits, for "k of N" and the time left
    hours: float | None = None

    @classmethod
    def running(cls, stop: StopConditions) -> LoopStatus:
        return cls("running", pid=os.getpid(), host=socket.gethostname(), pid_started=_started_ticks(os.getpid()),
                   started=time.time(), iterations=stop.iterations, hours=stop.hours)

    def ended_as(self, state: str, reason: str) -> LoopStatus:
        if state not in ENDED:
            raise ValueError(f"a loop ends as one of {ENDED}, got {state=}")
        return dataclasses.replace(self, state=state, reason=reason, ended=time.time())

    @property
    def alive(self) -> bool:
        """Running, and its process is still there (a SIGKILL leaves "running" behind on disk)."""
        if self.state != "running" or self.pid is None:
            return False
        if self.host and self.host != socket.gethostname():
            return True  # another machine's process: nothing here can tell, so believe the file
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        now = _started_ticks(self.pid)
        return self.pid_started is None or now is None or now == self.pid_started


def _started_ticks(pid: int) -> int | None:
    """When process pid started, in clock ticks after boot (Linux's /proc/PID/stat), or None where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name before ")" may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def write_status(run_dir: Path, status: LoopStatus) -> None:
    """RUN_DIR/loop.json, written whole (a temporary file and a rename)."""
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_name(f".{STATUS_FILE}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(status)) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> LoopStatus | None:
    """What RUN_DIR/loop.json says; None where there is none (a loop of an older kit, or none yet) or it is
    unreadable."""
    try:
        saved = json.loads((Path(run_dir) / STATUS_FILE).read_text())
        return LoopStatus(**{f.name: saved[f.name] for f in dataclasses.fields(LoopStatus) if f.name in saved})
    except (OSError, ValueError, TypeError):
        return None


def describe_loop(run_dir: Path, has_records: bool, status: LoopStatus | None = None) -> str:
    """What the loop of run_dir is doing, in one line, as every view says it: running (on hold, stopping), not
    running though loop.json says so (its process is gone), or how and why it ended. status: loop.json as the caller
    read it (read here when None)."""
    status = status if status is not None else read_status(run_dir)
    if status is None:
        return "not running (no loop has said how it ended here)" if has_records else "not started"
    if status.state != "running":
        return f"{status.state}: {status.reason}"
    if not status.alive:
        return "not running: the loop's process ended without saying why (killed?); the same command resumes it"
    if (Path(run_dir) / STOP_FILE).exists():
        return "stopping after the running experiment"
    if (Path(run_dir) / HOLD_FILE).exists():
        return "on hold: no new experiment starts until resumed"
    return "running"
