"""kit.stopping: each stop condition fires with a reason that names it, the stop file is taken once, hold waits."""

import threading
import time

import pytest

from kit.run_state import CONFIRM_POLICY, NOISE_POLICY
from kit.stopping import (
    HOLD_FILE,
    STATUS_FILE,
    STOP_FILE,
    LoopStatus,
    StopConditions,
    describe_loop,
    read_status,
    stop_requested,
    wait_while_held,
    write_status,
)

from .helpers import make_record


def _records(values, policy="ppo", device="cpu", seconds=60.0):
    return [make_record(iteration=i, policy=policy, val_bpb=v, status="ok" if v is not None else "crash",
                        accepted=False, fingerprint={"device": device}, total_seconds=seconds)
            for i, v in enumerate(values, 1)]


def test_nothing_fires_on_a_young_run():
    assert StopConditions()(_records([2.5, 2.4]), elapsed_seconds=10) is None


def test_the_iteration_hour_and_gpu_hour_limits_say_which_fired():
    records = _records([2.5] * 4, device="cuda", seconds=1800)
    assert StopConditions(iterations=4)(records, 0) == "iterations: 4 experiments recorded (limit 4)"
    assert StopConditions(iterations=5)(records, 0) is None
    assert StopConditions(hours=0.5)(records, 1800) == "hours: 0.5 h of wall-clock time spent"
    assert StopConditions(gpu_hours=2)(records, 0) == "gpu-hours: 2.00 GPU-hours spent (limit 2)"
    assert StopConditions(gpu_hours=2)(_records([2.5] * 4, device="cpu", seconds=1800), 0) is None


def test_the_share_left_is_that_of_the_nearest_limit_and_the_whole_run_without_one():
    records = _records([2.5] * 4, device="cuda", seconds=1800)  # 2 GPU-hours
    assert StopConditions().share_left(records, 10**6) == 1.0
    assert StopConditions(iterations=10).share_left(records, 0) == pytest.approx(0.6)
    assert StopConditions(iterations=10, hours=1).share_left(records, 2700) == pytest.approx(0.25)
    assert StopConditions(gpu_hours=8, iterations=100).share_left(records, 0) == pytest.approx(0.75)
    assert StopConditions(iterations=2).share_left(records, 0) == 0.0  # past the limit reads as none left


def test_convergence_needs_a_full_window_of_proposals_and_ignores_re_runs():
    flat = StopConditions(convergence_window=10, convergence_threshold=0.3)
    noise = _records([2.5, 2.5, 2.5], policy=NOISE_POLICY)
    assert flat(noise + _records([2.5] * 9), 0) is None  # nine proposals: not a window yet
    reason = flat(noise + _records([2.5] * 10), 0)
    assert reason.startswith("converged: 0/10 recent experiments improved by more than ε=0.005")
    # a lucky re-run of a near miss is no proposal and no improvement
    lucky = noise + _records([2.5] * 10) + _records([1.0], policy=CONFIRM_POLICY)
    assert flat(lucky, 0) == reason
    improving = noise + _records([2.5 - 0.01 * i for i in range(10)])
    assert flat(improving, 0) is None


def test_bad_limits_are_refused():
    for bad in ({"iterations": 0}, {"hours": -1.0}, {"convergence_threshold": 0.0}, {"convergence_window": 0}):
        with pytest.raises(ValueError, match="got"):
            StopConditions(**bad)


def test_the_stop_file_is_taken_once(tmp_path):
    assert stop_requested(tmp_path) is None
    (tmp_path / STOP_FILE).touch()
    assert stop_requested(tmp_path) == f"stopped by the stop file {tmp_path / STOP_FILE}"
    assert not (tmp_path / STOP_FILE).exists() and stop_requested(tmp_path) is None


def test_hold_waits_until_the_file_goes_and_says_so_once(tmp_path):
    said = []
    wait_while_held(tmp_path, lambda: False, lambda: said.append("held"))
    assert said == []  # no hold file: no wait
    (tmp_path / HOLD_FILE).touch()
    threading.Timer(0.3, (tmp_path / HOLD_FILE).unlink).start()
    started = time.monotonic()
    wait_while_held(tmp_path, lambda: False, lambda: said.append("held"), poll=0.05)
    assert said == ["held"] and not (tmp_path / HOLD_FILE).exists() and time.monotonic() - started >= 0.2


def test_a_stop_file_or_an_interrupt_ends_a_hold(tmp_path):
    (tmp_path / HOLD_FILE).touch()
    (tmp_path / STOP_FILE).touch()
    wait_while_held(tmp_path, lambda: False, lambda: None, poll=0.05)  # returns: the stop file ends it
    (tmp_path / STOP_FILE).unlink()
    wait_while_held(tmp_path, lambda: True, lambda: None, poll=0.05)  # returns: interrupted
    assert (tmp_path / HOLD_FILE).exists()  # the hold itself is the user's to lift


def test_loop_json_round_trips_and_tells_a_live_loop_from_a_killed_one(tmp_path):
    import dataclasses
    import subprocess
    import sys

    assert read_status(tmp_path) is None and describe_loop(tmp_path, has_records=False) == "not started"
    running = LoopStatus.running(StopConditions(iterations=12, hours=1.5))
    write_status(tmp_path, running)
    assert read_status(tmp_path) == running and running.alive and describe_loop(tmp_path, True) == "running"
    (tmp_path / HOLD_FILE).touch()
    assert describe_loop(tmp_path, True).startswith("on hold")
    (tmp_path / STOP_FILE).touch()
    assert describe_loop(tmp_path, True) == "stopping after the running experiment"

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that has ended: as after a SIGKILL, loop.json still says "running"
    write_status(tmp_path, LoopStatus("running", pid=gone.pid, host=running.host))
    assert not read_status(tmp_path).alive
    assert describe_loop(tmp_path, True).startswith("not running: the loop's process ended without saying why")

    reused = dataclasses.replace(running, pid_started=running.pid_started + 1)  # this pid, another process's start
    assert not reused.alive

    write_status(tmp_path, running.ended_as("finished", "iterations: 12 experiments recorded (limit 12)"))
    assert describe_loop(tmp_path, True) == "finished: iterations: 12 experiments recorded (limit 12)"
    with pytest.raises(ValueError, match="ends as one of"):
        running.ended_as("exploded", "")
    (tmp_path / STATUS_FILE).write_text("{half a file")
    assert read_status(tmp_path) is None  # unreadable: treated as no word at all, never a crash
