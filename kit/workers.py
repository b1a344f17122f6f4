"""Where experiments run when several run at once: slots on Ray, one experiment each at a time.

Owns: starting (or joining) Ray, one actor per slot with its own resources (one GPU on CUDA; on CPU a fixed set of
cores the actor pins itself to, claimed through lock files so two slots on one machine never share a core while
there are cores enough), preparing the data once per machine, running the unchanged harness in the slot (the stop
rule watching it there), and telling the driver what finished, and which slot died (its experiment then ends as a
crash and the slot gets a new actor).
Does not own: what to run or what becomes of a result (kit/parallel.py, the one writer of the ledger), running one
experiment (kit/harness.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.results import Environment, HarnessConfig, RunResult

CORE_LOCKS = Path(tempfile.gettempdir()) / "autoresearch-rl-cores"  # one lock file per core, held by the slot using it
CLAIM_SECONDS = 10.0  # how long a slot tries to claim free cores before it runs on shared ones
START_SECONDS = 300.0  # how long a slot may take to start (Ray finds it a place, it prepares the data)
PASSED_ENVIRONMENT = ("AUTORESEARCH_",)  # prefixes of the driver's variables a slot takes on (where the data is, ...)


class WorkersUnavailable(RuntimeError):
    """Ray or its workers could not be had; the message says what to do."""


@dataclass(frozen=True)
class Work:
    """What a slot runs: one train.py with the harness (or a stand-in world), watched by a stop rule."""

    key: str  # the driver's name for it
    source: str
    run_dir: Path
    harness: HarnessConfig
    stopper: Any = None  # a kit.predictor.EarlyStopper, or None
    quiet_first: float = 0.0  # seconds to wait, at most, for the slot's cores to be quiet first (a contended re-run)
    stop_file: Path | None = None  # that wait ends when this file appears (the run directory's STOP)


@dataclass(frozen=True)
class Finished:
    """What came back of a Work: its result, the stop rule's decisions and last forecast, and where it ran; or, with
    result None, why the slot was lost."""

    key: str
    result: RunResult | None
    predictions: list
    predicted: float | None
    where: str
    lost: str | None = None


class Slot:
    """One Ray actor: pins itself to its cores, prepares the data once per machine, runs one Work at a time."""

    def __init__(self, profile: str, cores: int, variables: dict[str, str], environment: Environment,
                 slots_here: int = 1):
        """slots_here: how many slots this machine is meant to hold (a replacement waits for its predecessor's cores
        only where they are enough for all)."""
        os.environ.update(variables)
        self.environment, self.slots_here = environment, slots_here
        self.locks: list = []
        self.where = f"{socket.gethostname()}"
        if "CUDA_VISIBLE_DEVICES" in os.environ and os.environ["CUDA_VISIBLE_DEVICES"]:
            self.where += f" GPU {os.environ['CUDA_VISIBLE_DEVICES']}"
        else:
            pinned, shared = self._pin(cores)
            self.where += f" cores {','.join(map(str, sorted(pinned)))}" + (" (shared)" if shared else "")
        self._prepare(profile)

    def _pin(self, cores: int) -> tuple[set[int], bool]:
        """Claim `cores` cores no other slot on this machine holds and run on them only; where too few are free,
        run on all this process may use and say they are shared."""
        CORE_LOCKS.mkdir(parents=True, exist_ok=True)
        allowed = sorted(os.sched_getaffinity(0))
        deadline = time.monotonic() + CLAIM_SECONDS
        while len(self.locks) < cores and time.monotonic() < deadline:
            for core in allowed:
                if len(self.locks) == cores or core in {c for c, _ in self.locks}:
                    continue
                handle = open(CORE_LOCKS / f"{core}.lock", "w")  # noqa: SIM115 - held open for the actor's life
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                self.locks.append((core, handle))
            if len(self.locks) < cores and len(allowed) >= cores * self.slots_here:
                time.sleep(0.5)  # a slot's dead predecessor may still hold its cores for a moment
            else:
                break
        if len(self.locks) < cores:
            for _, handle in self.locks:
                handle.close()
            self.locks = []
            return set(allowed), True
        pinned = {core for core, _ in self.locks}
        os.sched_setaffinity(0, pinned)
        return pinned, False

    @staticmethod
    def _prepare(profile: str) -> None:
        """The profile's data, made once per machine (the first slot makes it, the others wait on the lock)."""
        import prepare

        chosen = prepare.get_profile(profile)
        root = prepare.data_dir(chosen)
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{chosen.name}.prepare.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            prepare.prepare_data(chosen)

    def describe(self) -> tuple[str, int]:
        """Where it runs, in words, and its process id."""
        return self.where, os.getpid()

    def run(self, work: Work) -> Finished:
        if work.quiet_first > 0:
            from kit.machine import wait_until_quiet

            stop = work.stop_file
            wait_until_quiet(work.harness.contention_limit, work.quiet_first,
                             give_up=lambda: stop is not None and stop.exists())
        result = self.environment(work.source, work.run_dir, work.harness, monitor=work.stopper)
        decisions = work.stopper.decisions if work.stopper is not None else []
        predicted = work.stopper.last_prediction if work.stopper is not None else None
        return Finished(work.key, result, [d.to_json() for d in decisions], predicted, self.where)


class RayWorkers:
    """`slots` slots on a local Ray started here, or on the cluster at `address`. submit() a Work to a free slot;
    wait() for what finished."""

    def __init__(self, slots: int, profile: str, *, address: str | None = None, cores: int | None = None,
                 environment: Environment | None = None, say=print):
        try:
            import ray
        except ImportError:
            raise WorkersUnavailable("--workers above 1 runs experiments on Ray, which is not installed: pip install "
                                     "'ray==2.60.0' (requirements.txt pins it)") from None
        from kit.harness import run_experiment

        self.ray, self.slots, self.say, self.address = ray, slots, say, address
        self.environment = environment or run_experiment
        self.started_ray = not ray.is_initialized()
        local_cpus = len(os.sched_getaffinity(0))
        self.cores = cores or max(1, local_cpus // slots)
        if self.started_ray:
            with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115 - Ray's banner, not ours to show
                local = {} if address else {"num_cpus": max(local_cpus, slots * self.cores)}
                try:
                    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                             configure_logging=False, **local)
                except Exception as error:  # noqa: BLE001 - Ray's reasons are many; the user needs one line
                    why = " ".join(f"{type(error).__name__}: {error}".split())[:300]
                    raise WorkersUnavailable(f"Ray could not be started or joined ({address or 'this machine'}): "
                                             f"{why}; check --ray-address (`ray status` on the head node)") from None
        self.gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        if not self.gpus and address is None and slots * self.cores > local_cpus:
            say(f"{slots} workers of {self.cores} core(s) on a machine with {local_cpus}: they share cores, so their "
                "runs are contended unless the checks are off (--contention-limit 1 --pace-limit 0)")
        self.variables = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENVIRONMENT)}
        self.profile = profile
        self.actors, self.calls = [], {}  # the slots' actors; object ref -> (slot, work key) of what runs
        try:
            self.actors = [self._start() for _ in range(slots)]
            self.where, self.pids = map(list, zip(*(self._describe(a) for a in self.actors), strict=True))
        except BaseException:
            self.close()
            raise

    def _start(self):
        slot = self.ray.remote(Slot).options(num_cpus=1 if self.gpus else self.cores, num_gpus=self.gpus,
                                             max_restarts=0, max_task_retries=0)
        here = self.slots if self.address is None else 1
        return slot.remote(self.profile, self.cores, self.variables, self.environment, here)

    def _describe(self, actor) -> tuple[str, int]:
        try:
            return self.ray.get(actor.describe.remote(), timeout=START_SECONDS)
        except self.ray.exceptions.GetTimeoutError:
            need = "a GPU" if self.gpus else f"{self.cores} CPU(s)"
            raise WorkersUnavailable(f"a Ray worker did not start within {START_SECONDS:g} s: does the cluster have "
                                     f"{need} free for each of the {self.slots} workers? (see `ray status`)") from None
        except self.ray.exceptions.RayError as error:
            raise WorkersUnavailable(f"a Ray worker could not start: {' '.join(str(error).split())[:300]}") from None

    def free(self) -> list[int]:
        """Slots with nothing running."""
        busy = {slot for slot, _ in self.calls.values()}
        return [slot for slot in range(self.slots) if slot not in busy]

    def submit(self, slot: int, work: Work) -> str:
        """Run work on slot (a free one); where it runs, in words (self.pids[slot] is its process)."""
        self.calls[self.actors[slot].run.remote(work)] = (slot, work.key)
        return self.where[slot]

    def wait(self, timeout: float) -> list[Finished]:
        """What finished within timeout seconds (empty when nothing did). A slot whose actor died gets a new one."""
        if not self.calls:
            return []
        ready, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        if ready:  # take everything else that is ready too
            ready, _ = self.ray.wait(list(self.calls), num_returns=len(self.calls), timeout=0)
        finished, lost = [], []
        for ref in ready:
            slot, key = self.calls.pop(ref)
            try:
                finished.append(self.ray.get(ref))
            except self.ray.exceptions.RayTaskError as error:  # the harness raised: the worker itself is fine
                why = " ".join(str(error.cause).split())[:300]
                finished.append(Finished(key, None, [], None, self.where[slot], lost=(
                    f"the harness failed on {self.where[slot]}: {type(error.cause).__name__}: {why}")))
            except self.ray.exceptions.RayError as error:
                why = " ".join(str(error).split())[:300]
                finished.append(Finished(key, None, [], None, self.where[slot], lost=(
                    f"the worker running it ({self.where[slot]}) was lost: {type(error).__name__}: {why}")))
                lost.append(slot)
        for slot in lost:  # a new worker in its place (after the results are safe with the caller's list)
            self.ray.kill(self.actors[slot])
            self.actors[slot] = self._start()
            self.where[slot], self.pids[slot] = self._describe(self.actors[slot])
        return finished

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()
