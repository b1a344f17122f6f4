"""kit.parallel and kit.workers: the loop with several experiments at once, on a local Ray with CPU-only workers, to
the same ledger guarantees as with one: every experiment recorded once, a driver killed by SIGKILL at random moments
loses nothing and runs again what was running, a killed worker becomes a crash record and its slot gets a new
worker, no two workers run the same code. Then what the parallel loop stands on, without Ray: several near misses at
once, the environment's fingerprint, PPO's importance ratio against what it saw when it proposed, the throughput."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kit.ledger import Ledger
from kit.loop import ResumeError, run_loop
from kit.parallel import ParallelLoop, run_parallel_loop
from kit.report import throughput
from kit.results import fingerprint_differs
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, RunState
from kit.workers import Finished, RayWorkers

from .helpers import REPO, ledger_records, loop_config, make_record, ok_result, processes_naming, setup, state_of, tell

FAST = ["--profile", "smoke", "--budget", "1.5"]


def _check_run_dir(run_dir, expected: int) -> list:
    """The guarantees of a run directory whose loop ran with several workers, and its records."""
    records = ledger_records(run_dir)
    assert [r.iteration for r in records] == list(range(1, expected + 1)), "every experiment recorded once, in order"
    keys = [r.policy_stats.get("job") for r in records]
    assert None not in keys and len(set(keys)) == len(keys), "no job recorded twice"
    ran = [r for r in records if r.policy not in (NOISE_POLICY, CONFIRM_POLICY) and not r.reward_parts.keys()
           & {"duplicate", "rejected"}]
    baseline = records[0].code_hash
    assert len({r.code_hash for r in ran}) == len(ran) and baseline not in {r.code_hash for r in ran}, \
        "no two workers ran the same code"
    assert not list((run_dir / "experiments").glob("running-*")), "every run's directory took its record's number"
    for r in records:
        if r.total_seconds > 0:
            assert (run_dir / "experiments" / f"{r.iteration:05d}" / "train.py").exists()
    assert json.loads((run_dir / "running.json").read_text())["jobs"] == []
    return records


@pytest.mark.slow
def test_four_workers_run_a_smoke_loop_with_the_guarantees_of_one(smoke_data, tmp_path):
    config = loop_config(tmp_path, iterations=12, policy="ppo", budget=1.5, early_stopping="same-progress")
    events, lines = [], []
    reason = run_parallel_loop(config, 4, on_event=events.append, say=lines.append)
    assert reason.startswith("iterations")
    records = _check_run_dir(config.run_dir, 12)
    assert sum(r.policy == NOISE_POLICY for r in records) == 3 and records[0].accepted
    running, most = 0, 0
    for event in events:
        if event["event"] == "started":
            running += 1
        elif event["event"] == "record" and event["record"].policy_stats.get("worker"):  # one that ran
            running -= 1
        most = max(most, running)
    assert most == 4, "four experiments ran at once"
    workers = {r.policy_stats["worker"] for r in records if r.total_seconds > 0}
    assert len(workers) >= 2, workers  # four slots on the session's free cores: one pinned to each, the rest sharing
    ppo = [r for r in records if r.policy == "ppo" and r.total_seconds > 0]
    assert ppo and all(r.policy_stats["logprob"] <= 0 for r in ppo)
    assert any("ms per result" in line for line in lines)
    assert "experiments per hour on" in (config.run_dir / "summary.md").read_text()


def _running_keys(run_dir) -> set[str]:
    try:
        return {j["key"] for j in json.loads((run_dir / "running.json").read_text())["jobs"]}
    except (OSError, ValueError):
        return set()


@pytest.mark.slow
def test_sigkill_of_the_driver_at_random_moments_loses_nothing_and_runs_again_what_ran(smoke_data, tmp_path):
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "kit", "loop", *FAST, "--policy", "random", "--iterations", "14", "--workers", "4",
            "--run-dir", str(run_dir)]
    rng = random.Random(11)
    seen: list[tuple[int, str]] = []
    for _ in range(2):
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        while not _running_keys(run_dir) and time.monotonic() < started + 300:  # Ray is up and experiments run
            time.sleep(0.2)
        time.sleep(rng.uniform(0, 12))
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 90  # Ray's processes end with the driver, its agents within a minute
        while processes_naming(str(run_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_naming(str(run_dir)) == [], "an experiment of the killed driver ran on"
        with Ledger(run_dir, readonly=True) as ledger:
            now = [(r.iteration, r.code_hash) for r in ledger.records()]
        assert now[:len(seen)] == seen, "a finished experiment was lost or changed"
        seen, unfinished = now, _running_keys(run_dir)
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running again first" in done.stdout or not unfinished
    records = _check_run_dir(run_dir, 14)
    assert [(r.iteration, r.code_hash) for r in records][:len(seen)] == seen
    assert unfinished <= {r.policy_stats["job"] for r in records}, "what ran at the kill was run again and recorded"


@pytest.mark.slow
def test_a_killed_worker_becomes_a_crash_record_and_its_slot_gets_a_new_one(smoke_data, tmp_path):
    config = loop_config(tmp_path, iterations=6, budget=1.5)
    lines, killed = [], []
    pool = RayWorkers(2, "smoke", say=lines.append)

    def kill_the_first(event: dict) -> None:
        if event["event"] == "started" and not killed:
            killed.append(pool.pids[event["slot"]])
            os.kill(killed[0], signal.SIGKILL)

    try:
        loop = ParallelLoop(config, pool, kill_the_first, lines.append)
        try:
            assert loop.run().startswith("iterations")
        finally:
            loop.close()
        assert killed[0] not in pool.pids and len(pool.pids) == 2
    finally:
        pool.close()
    records = _check_run_dir(config.run_dir, 6)
    lost = [r for r in records if r.status == "crash" and "was lost" in r.reason]
    assert len(lost) == 1 and lost[0].description.endswith("(not judged)"), [r.reason for r in records]
    after = records[records.index(lost[0]) + 1:]
    assert sum(bool(r.policy_stats.get("worker")) for r in after) >= 3, "the slots went on, one with a new worker"


# what the parallel loop stands on, without Ray ---------------------------------------------------------------------


def test_several_near_misses_wait_at_once_and_each_re_run_counts_with_its_own(tmp_path):
    state = RunState(noise_sigmas=2.0, max_runs=3)
    for i, value in enumerate([2.50, 2.52, 2.48]):
        state.add(make_record(iteration=i + 1, policy=NOISE_POLICY, val_bpb=value, accepted=i == 0, code_hash="base"),
                  "BASE")
    state.add(make_record(iteration=4, policy="ppo", val_bpb=2.47, code_hash="a", accepted=False), "A")
    state.add(make_record(iteration=5, policy="ppo", val_bpb=2.475, code_hash="b", accepted=False), "B")
    assert list(state.near_misses) == ["a", "b"] and state.near_miss.source == "A"
    state.add(make_record(iteration=6, policy=CONFIRM_POLICY, val_bpb=2.45, code_hash="b", accepted=True), None)
    assert state.incumbent.source == "B" and state.incumbent.values == [2.475, 2.45]
    assert list(state.near_misses) == ["a"] and state.near_misses["a"].values == [2.47]


def test_fingerprints_differ_only_in_the_keys_both_have():
    assert fingerprint_differs({"torch": "2.13.0", "device": "cpu"}, {"torch": "2.12.0", "device": "cpu"}) == \
        "torch 2.12.0 vs 2.13.0"
    assert fingerprint_differs({"torch": "2.13.0"}, {"torch": "2.13.0", "kit_sha256": "ab"}) is None
    assert fingerprint_differs(None, {"torch": "2.13.0"}) is None


class InlinePool:
    """Slots that run a stand-in world at once in this process, in the order given: the parallel loop's logic
    without Ray (the tests above run it on Ray)."""

    def __init__(self, world, slots: int = 2):
        self.environment, self.slots = world, slots
        self.where, self.pids, self.done = [f"inline {i}" for i in range(slots)], [os.getpid()] * slots, []

    def free(self) -> list[int]:
        busy = {slot for slot, _ in self.done}
        return [slot for slot in range(self.slots) if slot not in busy]

    def submit(self, slot: int, work) -> None:
        result = self.environment(work.source, work.run_dir, work.harness)
        self.done.append((slot, Finished(work.key, result, [], None, self.where[slot])))

    def wait(self, timeout: float) -> list:
        finished, self.done = [done for _, done in self.done], []
        return finished


def test_a_result_from_another_environment_is_recorded_not_judged(tmp_path):
    calls = []

    def world(source, run_dir, config, monitor=None):  # the noise floor from one kit, then results from another
        calls.append(source)
        fingerprint = {"device": "cpu", "kit_sha256": "a" if len(calls) <= 3 else "b"}
        return dataclasses.replace(ok_result(2.5, run_dir), fingerprint=fingerprint)

    loop = ParallelLoop(loop_config(tmp_path, iterations=5), InlinePool(world), say=lambda _: None)
    try:
        loop.run()
    finally:
        loop.close()
    records = ledger_records(tmp_path / "run")
    assert [r.status for r in records] == ["ok"] * 3 + ["crash"] * 2
    assert all("another environment than this run's (kit_sha256 b vs a" in r.reason and r.description.endswith("(not judged)")
               and r.reward == 0 for r in records[3:])


def test_a_run_measured_in_another_environment_does_not_resume_here(smoke_data, tmp_path):
    def elsewhere(source, run_dir, config, monitor=None):
        return dataclasses.replace(ok_result(2.5, run_dir), fingerprint={"device": "cpu", "kit_sha256": "0" * 16})

    run_loop(loop_config(tmp_path, iterations=1), environment=elsewhere, say=lambda _: None)
    with pytest.raises(ResumeError, match="another environment .*kit_sha256"):
        run_loop(loop_config(tmp_path, iterations=2), say=lambda _: None)


def test_ppo_learns_from_a_late_outcome_as_it_proposed_it():
    from kit.policies import make_policy

    policy = make_policy("ppo", setup())
    state = state_of(np.array([3.0, 3.0, 3.0]))
    first, second = policy.propose(state), policy.propose(state)
    tell(policy, state, second, 2.4)  # the later proposal finishes first and changes the policy's memory
    tell(policy, state, first, 2.6)
    stored = policy.rollout.buffer[-1]["obs"]
    assert np.allclose(stored, first.seen) and not np.allclose(stored, policy.remembering(state.observation))


def test_throughput_counts_experiments_per_hour_and_per_worker():
    records = [make_record(iteration=i + 1, created=1000.0 + 60 * i, total_seconds=60.0,
                           policy_stats={"worker": f"host cores {i % 2}"}) for i in range(4)]
    assert throughput(records) == "60.0 experiments per hour on 2 workers (host cores 0: 2, host cores 1: 2)"
    assert throughput(records[:1]) is None
