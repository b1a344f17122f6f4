"""Run one experiment of a train.py and return a RunResult whose val_bpb train.py could not fake.

Owns: the run directory, the static gate before anything runs, the sandboxed training process
under a hard wall clock (budget + the profile's grace, the whole process tree killed), the live
progress stream (with an optional monitor that may stop the run: status `pruned`), integrity
hashes of the frozen files before and after, and the out-of-process evaluation (kit/evaluate.py)
whose val_bpb is the only one reported. Every outcome, failures included, becomes a RunResult
with a reason, written to RUN_DIR/result.json, with the trusted summary block in RUN_DIR/run.log.
Does not own: deciding what to run (kit/loop.py) or how a curve is forecast (kit/predictor.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kit import REPO_ROOT, gate, sandbox
from kit.machine import CoreShare, foreign_gpu_processes, tree_cpu_seconds
from kit.results import CurveStream, HarnessConfig, Monitor, RunResult, Status, environment
from kit.seed_check import SIGNATURE_FILE

LOG_LIMIT_BYTES = 50 << 20  # a flood of output is cut here; the process still runs to its limit
KIT_DIR = REPO_ROOT / "kit"


def frozen_files(profile) -> list[Path]:
    """What no run may change: prepare.py and the profile's data (prepare.frozen_paths), and every source file of the
    kit, subpackages included."""
    import prepare

    return prepare.frozen_paths(profile) + sorted(KIT_DIR.rglob("*.py"))


@dataclass
class Clocks:
    """The harness's own clocks on a training process; train.py's clock is never trusted.

    Start-up, up to the first progress line (or the hand-off, if none comes), may use `startup_cpu` CPU seconds of
    the process tree and `startup_seconds` of wall clock. From the first progress line to the hand-off (training,
    then the export), a run on CPUs may use `(budget + handoff_seconds) × cores` CPU seconds, and a run on a GPU
    `budget + handoff_seconds` of wall clock. CPU time is what training on CPUs buys, and it does not grow when other
    work shares the machine: an honest run on a busy machine gets less of it per second, never more, so it cannot
    overrun.

    What a train.py can gain by training where its own timer does not look is therefore bounded. On the cpu profile
    (two cores), start-up may use 12 CPU seconds where an honest one uses about 3.5, and training 126 where an honest
    60 s run and its export use about 119: some 8 s of training on two cores, an eighth of the budget. Anything
    more is tampered, with the clock it overran in the reason."""

    started: float
    budget: float
    startup_cpu: float
    startup_seconds: float
    handoff_seconds: float
    cores: int
    gpu: bool
    training_started: float | None = None
    training_cpu: float = 0.0  # the tree's CPU seconds when training started

    @property
    def deadline(self) -> float:
        """When the phase the run is in must be over by the wall clock (math.inf: only the hard wall clock)."""
        if self.training_started is None:
            return self.started + self.startup_seconds
        return self.training_started + self.budget + self.handoff_seconds if self.gpu else math.inf

    def overrun(self) -> str:
        if self.training_started is None:
            return (f"start-up overran the harness's clock: no progress line or hand-off within "
                    f"{self.startup_seconds:g} s of the start")
        return (f"trained past the budget by the harness's clock: no hand-off within {self.budget:g} s + "
                f"{self.handoff_seconds:g} s of the first progress line, whatever train.py's own clock says")

    def startup_over(self, now: float, cpu_seconds: float, training: bool) -> str | None:
        """End start-up (the training clocks start if training began); why it was tampered, if it was."""
        if training:
            self.training_started, self.training_cpu = now, cpu_seconds
        if cpu_seconds > self.startup_cpu:
            return (f"start-up used {cpu_seconds:.1f} CPU seconds before the first progress line, over the profile's "
                    f"{self.startup_cpu:g}: training there would not count toward the budget")
        return None

    def handed_off(self, cpu_seconds: float) -> str | None:
        """At the hand-off: why the training was tampered, if it used more CPU time than the budget buys."""
        if self.gpu or self.training_started is None:
            return None
        used, allowed = cpu_seconds - self.training_cpu, (self.budget + self.handoff_seconds) * self.cores
        if used > allowed:
            return (f"trained past the budget by the harness's CPU clock: {used:.1f} CPU seconds from the first "
                    f"progress line to the hand-off, over ({self.budget:g} s + {self.handoff_seconds:g} s) × "
                    f"{self.cores} cores = {allowed:g}, whatever train.py's own clock says")
        return None


@dataclass
class TrainingRun:
    """What the training process did, as the harness saw it from outside."""

    stream: CurveStream  # the progress points, shown to the monitor as they came
    lines: list[str] = field(default_factory=list)  # its output (a flood keeps its head and its tail)
    timings: dict[str, float] = field(default_factory=dict)  # seconds from the start: first_progress, handoff, ...
    handed_off: bool = False  # prepare.hand_off said the model is exported
    peak_mem_mb: float | None = None  # from the hand-off line
    ended: tuple[Status, str] | None = None  # why the run failed or was stopped, if it was
    overran: bool = False  # ended by one of the harness's clocks
    others_share: float = 0.0  # the share of its cores that other processes used while it trained
    gpu_others: dict[int, str] = field(default_factory=dict)  # other processes computing on its GPU meanwhile

    @property
    def curve(self) -> list[tuple[float, float]]:
        return self.stream.curve

    def summary_value(self, key: str) -> float | None:
        """A value from train.py's own summary block (informational only: never val_bpb)."""
        for line in reversed(self.lines):
            if line.startswith(f"{key}:"):
                try:
                    return float(line.split(":", 1)[1])
                except ValueError:
                    return None
        return None


def _crash_reason(lines: list[str], returncode: int | None) -> str:
    """The last exception line of a traceback, else the exit status."""
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b", line.strip()):
            return line.strip()[:500]
    if returncode is not None and returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Process:
    """A child in its own session whose output lines arrive on a queue; killed as a group."""

    def __init__(self, argv: list[str], *, env: dict, cwd: Path, spec: sandbox.SandboxSpec, log_path: Path):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=sandbox.limit_resources(spec))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        written = 0
        for raw in self.proc.stdout:
            if written < LOG_LIMIT_BYTES:
                self.log.write(raw)
                self.log.flush()  # line by line: the dashboard reads train.log while the run trains
                written += len(raw)
            self.lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
        self.lines.put(None)

    def kill(self) -> None:
        _kill_group(self.proc.pid)

    def close(self) -> None:
        self.proc.wait()
        self.reader.join(timeout=5)
        self.log.close()


def _env(profile: str, budget: float, seed: int, run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    import prepare

    tmp = run_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    return sandbox.base_env({
        "PYTHONPATH": str(REPO_ROOT),
        "AUTORESEARCH_PROFILE": profile,
        "AUTORESEARCH_BUDGET": repr(budget),
        "AUTORESEARCH_SEED": str(seed),
        "AUTORESEARCH_DATA": str(prepare.data_dir(prepare.get_profile(profile)).parent),
        "TMPDIR": str(tmp),
        # torch.compile's kernel caches: everything outside the run directory is read-only in the sandbox
        "TRITON_HOME": str(tmp),
        "TRITON_CACHE_DIR": str(tmp / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),
        **extra,
    })


def run_experiment(source: str, run_dir: Path, config: HarnessConfig = HarnessConfig(),
                   monitor: Monitor | None = None) -> RunResult:
    """Gate, run, watch and evaluate one train.py source in run_dir; always returns a recorded result."""
    import prepare

    started = time.monotonic()
    profile = prepare.get_profile(config.profile)
    budget = float(config.budget if config.budget is not None else profile.time_budget)
    grace = float(config.grace if config.grace is not None else profile.grace)
    seed = int(config.seed if config.seed is not None else profile.seed)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.py").write_text(source)
    device = prepare.get_device()
    fingerprint = {**prepare.fingerprint(profile, budget, device), **environment(device)}
    training = TrainingRun(CurveStream(monitor))

    def finish(status: Status, reason: str, val_bpb: float | None = None) -> RunResult:
        if (busy := _contention(training, config.contention_limit)) and (
                status in (Status.OK, Status.PRUNED, Status.TIMEOUT) or training.overran):
            measured = f", val_bpb {val_bpb:.6f}" if val_bpb is not None else ""
            status, val_bpb, reason = Status.CONTENDED, None, (
                f"{busy}: not judged; it would have been {status.value}{measured}"
                + (f" ({reason[:200]})" if reason else ""))
        curve, timings = training.curve, {k: round(v, 3) for k, v in training.timings.items()}
        if (pace := steps_per_second(training.timings)) is not None:
            timings["steps_per_second"] = round(pace, 4)
        peak = training.peak_mem_mb if training.handed_off else training.summary_value("peak_mem_mb")
        result = RunResult(
            status=status, val_bpb=val_bpb, reason=reason,
            training_seconds=curve[-1][0] if curve else 0.0,
            total_seconds=round(time.monotonic() - started, 3),
            peak_mem_mb=peak, num_steps=int(training.summary_value("num_steps") or len(curve)),
            curve=tuple(curve), fingerprint=fingerprint, seed=seed, run_dir=str(run_dir),
            timings=timings)
        _record(result)
        return result

    if config.run_gate:
        verdict = gate.check_source(source)
        if not verdict.ok:
            return finish(Status.REJECTED, verdict.summary())

    backend = sandbox.resolve_backend(config.sandbox)
    data = prepare.data_dir(profile)
    frozen = frozen_files(profile)
    before = gate.hash_files(frozen)
    handoff = run_dir / "model.pt2"
    handoff.unlink(missing_ok=True)
    extra = {"AUTORESEARCH_HANDOFF": str(handoff)}
    if device == "cuda":  # compiled kernels are reused across runs; a cold compile costs a minute
        cache = data.parent / "inductor-cache"
        cache.mkdir(parents=True, exist_ok=True)
        extra["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    memory = profile.memory_limit_mb if device == "cpu" else 0
    writable = (run_dir,) + ((Path(extra["TORCHINDUCTOR_CACHE_DIR"]),) if device == "cuda" else ())
    train_spec = sandbox.SandboxSpec(writable=writable, hidden=(data / "val",), memory_limit_mb=memory)
    argv = sandbox.wrap([sys.executable, "-P", str(run_dir / "train.py")], train_spec, backend)
    deadline = started + budget + grace

    # The evaluator starts now, in its own sandbox (sees the validation split, writes nothing), so its
    # imports overlap training's start-up; it waits on stdin for the hand-off.
    eval_tmp = run_dir / "eval-tmp"
    shutil.rmtree(eval_tmp, ignore_errors=True)
    eval_tmp.mkdir()
    eval_spec = sandbox.SandboxSpec(writable=(eval_tmp,), memory_limit_mb=memory)
    eval_argv = sandbox.wrap([sys.executable, "-P", "-m", "kit.evaluate", "--profile", profile.name, "--model", "-"],
                             eval_spec, backend)
    # weights-only unpickling: a crafted hand-off file must not run code inside the evaluator
    eval_env = _env(profile.name, budget, seed, eval_tmp, {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"})
    eval_log = open(run_dir / "eval.log", "w")  # noqa: SIM115 - closed with the evaluator below
    share, own = CoreShare(), time.process_time()  # what else used this run's cores, from here to the hand-off
    evaluator = subprocess.Popen(eval_argv, cwd=REPO_ROOT, env=eval_env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=eval_log, text=True,
                                 start_new_session=True, preexec_fn=sandbox.limit_resources(eval_spec))
    try:
        clocks = Clocks(started, budget, profile.startup_cpu, profile.startup_seconds, profile.handoff_seconds,
                        cores=len(share.cores), gpu=device == "cuda")
        _train(training, argv, train_spec, run_dir, deadline, clocks,
               env=_env(profile.name, budget, seed, run_dir, extra),
               others=lambda ours: share.others(ours + time.process_time() - own + tree_cpu_seconds(evaluator.pid)))
        training.timings["training_process"] = time.monotonic() - started
        changed = gate.changed_files(before, gate.hash_files(frozen))
        if changed:
            return finish(Status.TAMPERED, f"frozen files changed during the run: {', '.join(changed)}")
        if training.ended:
            return finish(*training.ended)
        if not handoff.exists():
            return finish(Status.CRASH, "train.py ended without handing off its model: call prepare.hand_off(model)")
        eval_started = time.monotonic()
        verdict, stdout = _evaluate(evaluator, handoff, deadline)
        training.timings["evaluation"] = time.monotonic() - eval_started
        if verdict is None and time.monotonic() >= deadline:
            return finish(Status.TIMEOUT, f"evaluation passed the hard wall clock ({budget:.0f} s + {grace:.0f} s)")
    finally:
        _kill_group(evaluator.pid)
        evaluator.wait()
        eval_log.close()
    if verdict is None:
        errors = (run_dir / "eval.log").read_text(errors="replace")
        tail = (errors or stdout).strip().splitlines()[-1:] or ["no output"]
        return finish(Status.CRASH, f"evaluator failed: {tail[0][:300]}")
    changed = gate.changed_files(before, gate.hash_files(frozen))
    if changed:
        return finish(Status.TAMPERED, f"frozen files changed during evaluation: {', '.join(changed)}")
    if verdict.get("token_losses"):  # what the model predicts, for comparing runs under other seeds
        (run_dir / SIGNATURE_FILE).write_text(json.dumps(verdict["token_losses"]))
    return finish(Status(verdict["status"]), verdict.get("reason", ""), verdict.get("val_bpb"))


def _contention(training: TrainingRun, limit: float) -> str | None:
    """What others did to a run that makes it incomparable with runs on a quiet machine, or None. On a GPU, any
    other process computing on it counts (it takes the GPU's time, which no share of CPU cores shows); a limit of
    1 turns both checks off."""
    if training.others_share > limit:
        return f"other processes used {training.others_share:.0%} of its cores while it trained (over {limit:.0%})"
    if training.gpu_others and limit < 1:
        return "other processes computed on its GPU while it trained: " + ", ".join(training.gpu_others.values())
    return None


def _evaluate(evaluator: subprocess.Popen, handoff: Path, deadline: float) -> tuple[dict | None, str]:
    """Hand the evaluator the model's path and read until its verdict (then the caller ends it: a torch process's
    exit takes a second that is not worth waiting for); killed at the deadline. The verdict and what it printed."""
    timer = threading.Timer(max(0.1, deadline - time.monotonic()), _kill_group, (evaluator.pid,))
    timer.start()
    printed: list[str] = []
    try:
        with contextlib.suppress(BrokenPipeError):  # an evaluator that died early: its output says why
            evaluator.stdin.write(f"{handoff}\n")
            evaluator.stdin.close()
        for line in evaluator.stdout:
            printed.append(line)
            if (verdict := _last_json(line)) is not None:
                return verdict, "".join(printed)
        return None, "".join(printed)
    finally:
        timer.cancel()


def _train(training: TrainingRun, argv: list[str], spec: sandbox.SandboxSpec, run_dir: Path, deadline: float,
           clocks: Clocks, env: dict, others: Callable[[float], float]) -> None:
    """Run the training process to its hand-off (then end it: its exit is not worth waiting for) or its end, filling
    in training; training.ended says why, unless it handed off or exited cleanly in time. others(ours) is the share
    of the cores other processes used, given the CPU seconds the training process used."""
    if clocks.gpu:  # sampled as training starts and as it ends: nvidia-smi takes a moment, too long to poll
        training.gpu_others = foreign_gpu_processes()
    process = _Process(argv, env=env, cwd=run_dir, spec=spec, log_path=run_dir / "train.log")
    try:
        _watch(training, process, deadline, clocks)
        training.others_share = others(tree_cpu_seconds(process.proc.pid))
        if clocks.gpu:
            training.gpu_others |= foreign_gpu_processes()
        training.timings["others_share"] = training.others_share
        if training.ended is None and not training.handed_off:
            try:  # stdout closed: give the process until the deadline to exit
                process.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                training.ended = (Status.TIMEOUT, _timeout_reason(deadline - clocks.started))
    finally:
        process.kill()  # the whole session: nothing train.py started outlives it
        process.close()
    if training.ended is None and not training.handed_off and process.proc.returncode != 0:
        training.ended = (Status.CRASH, _crash_reason(training.lines, process.proc.returncode))


def _watch(training: TrainingRun, process: _Process, deadline: float, clocks: Clocks) -> None:
    """Read output until it ends, the hand-off line comes, a clock runs out or the monitor stops the run."""
    import prepare

    started = clocks.started
    while True:
        try:
            line = process.lines.get(timeout=max(0.0, min(deadline, clocks.deadline) - time.monotonic()))
        except queue.Empty:
            line = ""
        now = time.monotonic()
        if now > deadline:
            training.ended = (Status.TIMEOUT, _timeout_reason(deadline - started))
            return
        if now > clocks.deadline:
            training.ended, training.overran = (Status.TAMPERED, clocks.overrun()), True
            return
        if line is None:
            return
        if len(training.lines) < 10_000:
            training.lines.append(line)
        elif not line.startswith(prepare.PROGRESS_PREFIX):
            training.lines[-1] = line  # keep the tail of a flood, which holds the traceback
        progress = _parse_progress(line) if line.startswith(prepare.PROGRESS_PREFIX) else None
        handoff = line.startswith(prepare.HANDOFF_PREFIX)
        if (progress or handoff) and "startup_cpu" not in training.timings:  # start-up is over: what it cost
            if progress:
                training.timings["first_progress"] = now - started
            training.timings["startup_cpu"] = cpu = tree_cpu_seconds(process.proc.pid)
            if why := clocks.startup_over(now, cpu, training=progress is not None):
                training.ended, training.overran = (Status.TAMPERED, why), True
                return
        if handoff:
            training.timings["handoff"] = now - started
            training.timings["training_cpu"] = cpu = tree_cpu_seconds(process.proc.pid) - clocks.training_cpu
            if why := clocks.handed_off(cpu + clocks.training_cpu):
                training.ended, training.overran = (Status.TAMPERED, why), True
                return
            training.handed_off = True
            with contextlib.suppress(ValueError, TypeError, KeyError):
                training.peak_mem_mb = float(json.loads(line[len(prepare.HANDOFF_PREFIX):])["peak_mem_mb"])
            return
        if progress is not None:
            step, seconds, loss = progress
            training.timings.setdefault("first_step", step)
            training.timings["last_progress"], training.timings["last_step"] = now - started, step
            if reason := training.stream.add(seconds, loss):
                training.ended = (Status.PRUNED, reason)
                return


def _timeout_reason(limit: float) -> str:
    return f"killed at the hard wall clock ({limit:.0f} s = budget + grace)"


def _parse_progress(line: str) -> tuple[int, float, float] | None:
    """(step, train.py's seconds, loss) of a progress line."""
    try:
        record = json.loads(line[len("@progress "):])
        return int(record["step"]), float(record["t"]), float(record["loss"])
    except (ValueError, KeyError, TypeError):
        return None


def steps_per_second(timings: dict[str, float]) -> float | None:
    """Optimizer steps per second of the harness's clock, from the first progress line to the last: how fast the
    machine ran this train.py (steps are train.py's count, but a run gains nothing by looking slower)."""
    seconds = timings.get("last_progress", 0.0) - timings.get("first_progress", 0.0)
    steps = timings.get("last_step", 0) - timings.get("first_step", 0)
    return steps / seconds if seconds > 0 and steps > 0 else None


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "status" in record:
            return record
    return None


def _record(result: RunResult) -> None:
    """result.json (everything) and run.log (autoresearch's summary block, from trusted values only)."""
    run_dir = Path(result.run_dir)
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result.to_json(), indent=1))
    tmp.rename(run_dir / "result.json")
    rows = {"status": result.status.value, "val_bpb": result.val_bpb, "training_seconds": result.training_seconds,
            "total_seconds": result.total_seconds, "peak_mem_mb": result.peak_mem_mb, "num_steps": result.num_steps,
            "reason": result.reason or None}
    width = max(len(k) for k in rows) + 1
    body = "".join(f"{k + ':':<{width}} {v:.6f}\n" if isinstance(v, float) else f"{k + ':':<{width}} {v}\n"
                   for k, v in rows.items() if v is not None)
    (run_dir / "run.log").write_text("---\n" + body)
