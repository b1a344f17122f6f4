"""The harness end to end on the smoke profile: a real train.py, a real sandbox, a real evaluator."""

import json
import math
import subprocess
import sys

import pytest

from kit.harness import run_experiment
from kit.results import HarnessConfig, Status

from .helpers import REPO, TRAIN_PY

SMOKE = HarnessConfig(profile="smoke")


def _kit(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "kit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_baseline_runs_ok_with_a_finite_val_bpb(smoke_data, baseline_source, tmp_path):
    result = run_experiment(baseline_source, tmp_path / "run", SMOKE)
    assert result.status is Status.OK, result.reason
    assert math.isfinite(result.val_bpb) and 0.2 < result.val_bpb < 8.0
    # a busy 2-core machine fits only a couple of steps into the smoke profile's 4 s; what counts is that the run
    # reported every step, used its whole budget and learned
    assert result.num_steps == len(result.curve) >= 2
    assert result.curve[-1][0] >= 4.0  # trained for its whole budget
    assert result.curve[-1][1] < result.curve[0][1]  # and learned something
    # its pace by the harness's clock, first progress line to last: what a later run of the same code is held to
    between = result.timings["last_progress"] - result.timings["first_progress"]
    assert result.timings["steps_per_second"] == pytest.approx((result.num_steps - 1) / between, rel=0.01)
    assert set(result.fingerprint) == {"profile", "budget", "prepare_sha256", "data_sha256", "torch", "device",
                                       "kit_sha256", "cuda", "device_name"}
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())
    assert recorded["status"] == "ok" and recorded["val_bpb"] == result.val_bpb
    log = (tmp_path / "run" / "run.log").read_text().splitlines()
    assert log[0] == "---" and f"val_bpb:          {result.val_bpb:.6f}" in log


@pytest.mark.slow
def test_cli_experiment_json_is_the_last_line(smoke_data, tmp_path):
    done = _kit("experiment", str(TRAIN_PY), "--profile", "smoke", "--json", "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["status"] == "ok" and record["val_bpb"] > 0
    for key in ("reason", "training_seconds", "total_seconds", "peak_mem_mb", "num_steps", "curve", "fingerprint"):
        assert key in record
    assert all(len(point) == 2 for point in record["curve"])


def test_a_crash_becomes_a_record_with_its_exception(smoke_data, baseline_source, tmp_path):
    source = baseline_source.replace("t_start = time.time()", "t_start = time.time()\nraise KeyError('no such layer')")
    result = run_experiment(source, tmp_path / "run", SMOKE)
    assert result.status is Status.CRASH
    assert result.reason == "KeyError: 'no such layer'"
    assert result.val_bpb is None
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()


def test_nan_loss_fails_fast(smoke_data, baseline_source, tmp_path):
    source = baseline_source.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 1e30 ").replace(
        "EMBED_LR = 0.3 ", "EMBED_LR = 1e30")
    result = run_experiment(source, tmp_path / "run", HarnessConfig(profile="smoke", run_gate=False))
    assert result.status is Status.CRASH
    assert result.reason.startswith("FloatingPointError: loss is nan")


def test_monitor_prunes_a_running_experiment(smoke_data, baseline_source, tmp_path):
    seen = []

    def monitor(curve):
        seen.append(len(curve))
        return "forecast worse than the incumbent" if len(curve) >= 3 else None

    result = run_experiment(baseline_source, tmp_path / "run", SMOKE, monitor=monitor)
    assert result.status is Status.PRUNED
    assert result.reason == "forecast worse than the incumbent"
    assert len(result.curve) == 3 and seen == [1, 2, 3]
    assert result.total_seconds < 30


def test_model_not_handed_off_is_a_crash(smoke_data, baseline_source, tmp_path):
    source = baseline_source.replace("val_bpb = hand_off(model)", "val_bpb = 0.5")
    result = run_experiment(source, tmp_path / "run", HarnessConfig(profile="smoke", budget=1.0))
    assert result.status is Status.CRASH
    assert "hand_off" in result.reason


@pytest.mark.parametrize("args, message", [
    (["experiment", "no/such/train.py", "--profile", "smoke"], "not found: give the path of a train.py"),
    (["experiment", "EMPTY", "--profile", "smoke"], "is empty"),
    (["experiment", "--profile", "huge"], "invalid choice: 'huge'"),
    (["experiment", "--profile", "smoke", "--budget", "-3"], "positive number of seconds"),
])
def test_bad_input_gets_one_line_and_exit_2(args, message, tmp_path):
    empty = tmp_path / "train.py"
    empty.write_text("\n")
    done = _kit(*[str(empty) if a == "EMPTY" else a for a in args])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert message in done.stderr
    assert done.stdout == ""


def test_prepare_rejects_an_unknown_profile_in_one_line():
    done = subprocess.run([sys.executable, "prepare.py", "--profile", "huge"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown profile 'huge': choose one of smoke, cpu, gpu"


def test_unprepared_data_says_what_to_run(tmp_path):
    import os

    env = {**os.environ, "AUTORESEARCH_DATA": str(tmp_path / "empty")}
    done = _kit("experiment", "--profile", "cpu", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no data for profile 'cpu' in {tmp_path / 'empty' / 'cpu'}: run `python prepare.py --profile cpu` first"]


def test_the_training_process_is_ended_at_its_hand_off_not_waited_for(smoke_data, baseline_source, tmp_path):
    """Whatever train.py does after prepare.hand_off is not waited for: a sleep there costs nothing, and the peak
    memory comes from the hand-off line since the summary after it is never read."""
    marker = "val_bpb = hand_off(model)"
    assert marker in baseline_source
    source = baseline_source.replace(marker, marker + "\ntime.sleep(600)")
    result = run_experiment(source, tmp_path / "run", SMOKE)
    assert result.status is Status.OK and result.val_bpb is not None, result.reason
    assert result.timings["training_process"] - result.timings["handoff"] < 5.0
    assert result.peak_mem_mb is not None and result.peak_mem_mb > 0


def test_a_run_that_shares_its_cores_is_contended_not_judged_and_a_quiet_one_is_not(smoke_data, baseline_source,
                                                                                     tmp_path):
    checked = HarnessConfig(profile="smoke", contention_limit=0.10)
    quiet = run_experiment(baseline_source, tmp_path / "quiet", checked)
    # judged exactly when others took less than the limit (a busy test machine may share even this one)
    assert (quiet.status is Status.OK) == (quiet.timings["others_share"] <= 0.10), quiet
    # a process spinning on the run's cores (it inherits this process's): it takes a share of them
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = run_experiment(baseline_source, tmp_path / "busy", checked)
    finally:
        hog.kill()
        hog.wait()
    assert busy.status is Status.CONTENDED and busy.val_bpb is None, busy
    assert busy.timings["others_share"] > 0.10 and "of its cores while it trained" in busy.reason
    assert "not judged; it would have been" in busy.reason


def test_train_log_is_written_line_by_line_while_the_run_goes(tmp_path):
    """The dashboard reads train.log during a run: a line is there as soon as the run prints it, not at its end."""
    import os
    import time

    from kit import sandbox
    from kit.harness import _Process

    go = tmp_path / "go"
    script = ("import os, time\nprint('@progress first', flush=True)\n"
              f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\nprint('last', flush=True)\n")
    log = tmp_path / "train.log"
    process = _Process([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path,
                       spec=sandbox.SandboxSpec(writable=(tmp_path,)), log_path=log)
    try:
        deadline = time.monotonic() + 120
        while "@progress first" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert "@progress first" in text and "last" not in text  # the run is still waiting for us
    finally:
        go.touch()
        process.close()
    assert log.read_text().splitlines() == ["@progress first", "last"]
