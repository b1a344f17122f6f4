"""The research loop with several experiments at once: the same steps as kit/loop.py, spread over workers.

Owns: what a freed worker runs next (a job re-queued by a resume or a contended run first, then the noise floor,
then the oldest near miss's re-run, else a new idea proposed from what has finished so far, masked against what is
running), taking results in the order they finish, and the experiments running now (RUN_DIR/running.json), so that
a driver killed at any moment, even by SIGKILL, runs them again on resume and loses no finished one. The driver is
the one writer of the ledger and git: workers only return results.
Does not own: judging, rewarding and recording a result (kit/loop.py: the same code as with one worker), where and
how experiments run (kit/workers.py).

    RUN_DIR/running.json              the experiments running or queued: what, on which worker, since when
    RUN_DIR/experiments/running-KEY   a running experiment's directory, renamed to its record's number once recorded
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kit.acceptance import Verdict
from kit.loop import RUNNING_FILE, Decision, Job, LoopConfig, ResearchLoop, new_key, print_line
from kit.memory import code_hash
from kit.results import RunResult, Status, fingerprint_differs
from kit.reward import Reward
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY
from kit.stopping import HOLD_FILE, STOP_FILE
from kit.workers import Finished, RayWorkers, Work

POLL_SECONDS = 1.0  # how often the driver looks at STOP, HOLD and Ctrl-C while experiments run
SETTLED_IN_A_ROW = 20  # ideas settled without a run (duplicates, unusable) tried for one free worker before it waits


class ParallelLoop(ResearchLoop):
    """The loop of config.run_dir with up to workers.slots experiments at once; `run()` returns why it stopped."""

    runs_several = True

    def __init__(self, config: LoopConfig, workers: RayWorkers, on_event: Callable[[dict], None] | None = None,
                 say: Callable[[str], None] = print_line):
        self.mirroring: threading.Thread | None = None  # the Optuna mirror's sync, off the driver's path
        super().__init__(config, on_event, workers.environment, say)
        self.workers = workers
        self.running: dict[str, Job] = {}  # key -> job, in the order they started
        self.placed: dict[str, tuple[str, float]] = {}  # key -> (the worker, in words; when it started)
        self.attempts: dict[str, int] = {}  # key -> which attempt of a contended experiment it is
        self.ending: str | None = None  # why the loop stops, once it has to: it ends when the running ones are in
        self.held = False
        self.busy_seconds, self.collected = 0.0, 0  # the driver's own time, and the results it took in
        self.per_result: list[float] = []  # the driver's time of each turn that took results in, per result
        self._last_fill = 0.0
        self.queue: list[Job] = self._requeue()

    # the loop ---------------------------------------------------------------------------------------------------

    def _turn(self) -> str | None:
        """Start what free workers can run, then take in what finished; why to stop, or None to go on."""
        timer = time.perf_counter()
        # 1. stop starting experiments when a limit, the oracle, the stop file or Ctrl-C says so; end when none runs
        if self.ending is None:
            self.ending = self._stop_reason()
        # 2. every free worker gets the next experiment, unless the loop holds, stops or must pause
        if self.ending is None and not self._holding():
            self._fill()
        self._last_fill = time.perf_counter() - timer
        self.busy_seconds += self._last_fill
        if not self.running:
            if self.ending is not None:
                return self.ending
            if self.held:
                time.sleep(POLL_SECONDS)
                return None
            return self._pause_reason()  # 4. nothing runs and nothing may start: failures or a busy machine
        # 3. take in what finished, in the order it finished (the next turn starts what the freed workers run)
        done = self.workers.wait(POLL_SECONDS)
        timer = time.perf_counter()
        for finished in done:
            self._collect(finished)
        if done:
            spent = time.perf_counter() - timer
            self.busy_seconds += spent
            self.collected += len(done)
            self.per_result.append((spent + self._last_fill) / len(done))
        return None

    def _fill(self) -> None:
        for slot in self.workers.free():
            job = self._next_job()
            if job is None:
                return
            self._start(slot, job)

    def _next_job(self) -> Job | None:
        """A re-queued job first, then the noise floor, then the oldest near miss not running, else a new idea; None
        when nothing should start now (the limit is reached, the loop must pause, the noise floor is still out)."""
        if self._limit_reached() or self._must_pause():
            return None
        if self.queue:
            return self.queue.pop(0)
        noise = self.state.noise_runs + sum(j.kind == NOISE_POLICY for j in self.running.values())
        if noise < self.config.noise_repeats:
            return self._noise_job(noise)
        if any(j.kind == NOISE_POLICY for j in self.running.values()):
            return None  # ideas are judged against the whole noise floor
        running = self._running()
        waiting = [near for digest, near in self.state.near_misses.items() if digest not in running]
        if waiting:
            return self._confirm_job(waiting[0])
        for _ in range(SETTLED_IN_A_ROW):
            if (job := self._idea_job()) is not None:
                return job
            if self._limit_reached() or self._must_pause():
                return None
        return None

    def _start(self, slot: int, job: Job) -> None:
        run_dir = self._job_dir(job.key)
        shutil.rmtree(run_dir, ignore_errors=True)  # what a killed driver's run of it left
        again = self.attempts.get(job.key, 1) > 1
        work = Work(job.key, job.source, run_dir, self._harness(job.seed), self._stopper(job),
                    quiet_first=self.config.quiet_wait if again else 0.0, stop_file=self.run_dir / STOP_FILE)
        self.running[job.key], self.placed[job.key] = job, (self.workers.where[slot], time.time())
        self._save_running()  # before it starts: a kill after this runs it again, never leaves it behind
        self.workers.submit(slot, work)
        where = self.workers.where[slot]
        self._emit({"event": "started", "key": job.key, "slot": slot, "worker": where, "description": job.description})

    def _collect(self, done: Finished) -> None:
        """A finished experiment, judged and recorded as with one worker; a contended one is queued again."""
        job = self.running.pop(done.key)
        if (why := self._not_comparable(done)) is not None:  # the machine's fault, not train.py's: the policy is
            self._record(dataclasses.replace(done.result or RunResult.not_run(why), status=Status.CRASH,  # not told
                                             val_bpb=None, reason=why),
                         Decision(Verdict.DROP, None, self.repo.head()), job,
                         description=f"{job.description} (not judged)", reward=Reward(0.0, {}), stats={})
            return
        result = self._slowed(done.result, job.source, done.where)
        if result.status is not Status.CONTENDED:
            self._finish(job, result, done.predictions, done.predicted)
            return
        attempt, attempts = self.attempts.pop(job.key, 1), 1 + self.config.contended_reruns
        self._record_contended(job, result, attempt, attempts)
        if attempt < attempts:
            again = dataclasses.replace(job, key=new_key())
            self.attempts[again.key] = attempt + 1
            self.queue.insert(0, again)
            self._save_running()
        else:
            self.contended = self._contended_reason(attempts, result)

    def _not_comparable(self, done: Finished) -> str | None:
        """Why a result cannot be judged at all: its worker was lost, or it was measured in another environment than
        this run's (another kit, torch, CUDA or device: every worker must run the same)."""
        if done.result is None:
            return done.lost
        if done.result.fingerprint and (why := fingerprint_differs(self._reference_fingerprint(),
                                                                   done.result.fingerprint)):
            return (f"measured on {done.where} in another environment than this run's ({why}, there against here): "
                    "not compared; give every worker the same kit, torch and device")
        return None

    def _record(self, result: RunResult, decision, job: Job, *, description: str, reward, stats: dict,
                predictions: list | None = None) -> None:
        """As with one worker, with the job's key and worker in the record; then its directory takes the record's
        number, and running.json forgets it (after the ledger: a kill in between re-runs nothing recorded)."""
        where = self.placed.pop(job.key, ("", 0.0))[0]
        super()._record(result, decision, job, description=description, reward=reward,
                        stats={**stats, "job": job.key, "worker": where}, predictions=predictions)
        self._file_dir(job.key, self.state.records[-1].iteration)
        self._save_running()

    def _mirror(self, records: list) -> None:
        """The Optuna mirror kept in step in the background (it takes longer than the rest of a result together);
        while one sync runs, a new record waits for the next, and close() brings it up to the last."""
        if self.mirroring is not None and self.mirroring.is_alive():
            return
        self.mirroring = threading.Thread(target=super()._mirror, args=(list(records),), daemon=True)
        self.mirroring.start()

    def close(self) -> None:
        if self.mirroring is not None:
            self.mirroring.join()
            super()._mirror(self.state.records)
        super().close()

    # what the loop knows of running experiments -----------------------------------------------------------------

    def _running(self) -> set[str]:
        return {code_hash(j.source) for j in [*self.running.values(), *self.queue]}

    def _base(self) -> tuple[str, str, np.ndarray]:
        """As with one worker, with the edits that would make a train.py running now masked (while any is left)."""
        base, description, mask = super()._base()
        running = self._running()
        if not running or not self.policy.edits_catalog:
            return base, description, mask
        free = np.array(mask, dtype=bool) & np.array([h not in running for h in self.frontier.neighbours(base)])
        return base, description, free if free.any() else mask

    def _limit_reached(self) -> bool:
        limit = self.config.stop.iterations
        return limit is not None and len(self.state.records) + len(self.running) >= limit

    def _must_pause(self) -> bool:
        return self.contended is not None or self.state.failures >= self.config.max_failures

    def _holding(self) -> bool:
        holding = (self.run_dir / HOLD_FILE).exists()
        if holding and not self.held:
            self._on_hold()
        self.held = holding
        return holding

    def _job_dir(self, key: str) -> Path:
        return self.run_dir / "experiments" / f"running-{key}"

    def _file_dir(self, key: str, iteration: int) -> None:
        """A recorded experiment's directory takes its record's number (where the loop looks for it later)."""
        source, target = self._job_dir(key), self._experiment_dir(iteration)
        if source.exists():
            shutil.rmtree(target, ignore_errors=True)  # a killed one-worker loop's unrecorded run
            source.replace(target)

    # running.json -----------------------------------------------------------------------------------------------

    def _save_running(self) -> None:
        """The running and queued jobs, written whole and replaced at once: what a resume runs again."""
        def entry(job: Job, state: str) -> dict:
            where, started = self.placed.get(job.key, ("", None))
            kept = dataclasses.replace(job, state=dataclasses.replace(job.state, memory=None)) if job.state else job
            return {"key": job.key, "state": state, "policy": job.kind, "description": job.description,
                    "seed": job.seed, "worker": where, "started": started, "dir": str(self._job_dir(job.key)),
                    "attempt": self.attempts.get(job.key, 1),
                    "job": base64.b64encode(pickle.dumps(kept)).decode()}

        data = {"workers": self.workers.where, "updated": time.time(),
                "jobs": [entry(j, "running") for j in self.running.values()] + [entry(j, "queued") for j in self.queue]}
        tmp = self.run_dir / f"{RUNNING_FILE}.tmp"
        with open(tmp, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.run_dir / RUNNING_FILE)

    def _requeue(self) -> list[Job]:
        """The jobs a killed driver left running or queued and never recorded, to run again first."""
        path = self.run_dir / RUNNING_FILE
        recorded = {r.policy_stats.get("job"): r.iteration for r in self.state.records}
        jobs = []
        for entry in json.loads(path.read_text()).get("jobs", []) if path.exists() else []:
            if entry["key"] in recorded:  # recorded just before the kill
                self._file_dir(entry["key"], recorded[entry["key"]])
                continue
            try:
                job = pickle.loads(base64.b64decode(entry["job"]))  # noqa: S301 - the loop's own file
            except Exception as error:  # noqa: BLE001 - written by another version of the kit: proposed afresh
                self.say(f"cannot run again {entry['description']!r} from {path}: {type(error).__name__}; skipped")
                continue
            if job.state is not None:
                job = dataclasses.replace(job, state=dataclasses.replace(job.state, memory=self.state.memory))
            stale = (job.kind == NOISE_POLICY and self.state.noise_runs >= self.config.noise_repeats) or \
                (job.kind == CONFIRM_POLICY and code_hash(job.source) not in self.state.near_misses)
            if not stale:  # (a noise floor completed, or a near miss settled, by a resume with one worker)
                self.attempts[job.key] = entry.get("attempt", 1)
                jobs.append(job)
        kept = {self._job_dir(job.key) for job in jobs}
        for left in (self.run_dir / "experiments").glob("running-*"):  # a run that never reached running.json
            if left not in kept:
                shutil.rmtree(left, ignore_errors=True)
        if jobs:
            self.say(f"running again first: {len(jobs)} experiment(s) that had not finished when the loop stopped")
        return jobs


def run_parallel_loop(config: LoopConfig, workers: int, *, address: str | None = None, cores: int | None = None,
                      on_event: Callable[[dict], None] | None = None, say: Callable[[str], None] = print_line) -> str:
    """Run the loop of config.run_dir with `workers` experiments at once on Ray (a local one, or the cluster at
    address) to its end; returns why it stopped."""
    pool = RayWorkers(workers, config.profile, address=address, cores=cores, say=say)
    try:
        loop = ParallelLoop(config, pool, on_event, say)
        try:
            reason = loop.run()
            if loop.per_result:
                say(f"the driver's own time: {1000 * statistics.median(loop.per_result):.0f} ms per result (median; "
                    f"{loop.collected} results, {len(pool.where)} workers)")
            return reason
        finally:
            loop.close()
    finally:
        pool.close()
