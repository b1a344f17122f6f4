"""The research loop end to end on the smoke profile: every policy, the report, rollback, pause, stop, resume."""

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.ledger import TSV_HEADER, Ledger
from kit.loop import CONFIRM_POLICY, NOISE_POLICY, LoopConfig, run_loop
from kit.memory import code_hash

from .conftest import REPO

FAST = ["--profile", "smoke", "--budget", "1.5"]


def _kit_loop(run_dir, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "kit", "loop", *FAST, "--run-dir", str(run_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _check_run_dir(run_dir: Path, expected: int) -> list:
    with Ledger(run_dir, readonly=True) as ledger:
        records = ledger.records()
    assert [r.iteration for r in records] == list(range(1, expected + 1))
    rows = (run_dir / "results.tsv").read_text().splitlines()
    assert rows[0] == TSV_HEADER and len(rows) == expected + 1
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val_bpb" in (run_dir / "summary.md").read_text()
    # train.py on the branch is the last accepted one, and every accepted record is a commit of it
    accepted = [r for r in records if r.accepted]
    assert accepted, "the first noise-floor run (the baseline) is always kept"
    head = subprocess.run(["git", "-C", str(run_dir / "repo"), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert head == accepted[-1].commit
    assert code_hash((run_dir / "repo" / "train.py").read_text()) == accepted[-1].code_hash
    # each kept train.py is measured by the mean of its ok runs (the noise floor's for the baseline); the means only
    # go down
    means = [statistics.fmean(r.val_bpb for r in records if r.code_hash == a.code_hash and r.status == "ok")
             for a in accepted]
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), "kept edits only improve"
    return records


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ppo", "random", "greedy", "tpe", "cmaes"])
def test_every_policy_runs_eight_iterations_and_reports(smoke_data, policy, tmp_path):
    done = _kit_loop(tmp_path / "run", "--policy", policy, "--iterations", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "iterations: 8 experiments recorded" in done.stdout
    records = _check_run_dir(tmp_path / "run", 8)
    assert sum(r.policy == NOISE_POLICY for r in records) == 3
    agent = [r for r in records if r.policy == policy]
    assert len(agent) + sum(r.policy == CONFIRM_POLICY for r in records) == 5 and agent
    assert all(r.description for r in agent)
    assert all(r.diff.startswith("---") for r in agent if r.status != "rejected" or "duplicate" in r.reason)
    assert all(isinstance(r.reward, float) for r in records)


def test_a_baseline_that_always_fails_pauses_after_three_and_resumes(smoke_data, baseline_source, tmp_path):
    broken = tmp_path / "train.py"
    broken.write_text(baseline_source.replace("t_start = time.time()", "t_start = time.time()\nraise ValueError('broken')"))
    run_dir = tmp_path / "run"
    config = LoopConfig(run_dir=run_dir, profile="smoke", policy="random", budget=1.0, train_py=broken)
    reason = run_loop(config)
    assert reason.startswith("paused: 3 failures in a row (last: crash: ValueError: broken)")
    assert (run_dir / "PAUSED").exists()
    # running again resumes: the pause is lifted, the strikes start over
    again = LoopConfig(run_dir=run_dir, profile="smoke", policy="random", budget=1.0, train_py=broken, iterations=4)
    assert run_loop(again).startswith("iterations: 4")
    assert not (run_dir / "PAUSED").exists()


def test_the_stop_file_stops_before_the_next_experiment(smoke_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "STOP").write_text("")
    reason = run_loop(LoopConfig(run_dir=run_dir, profile="smoke", policy="random", budget=1.0))
    assert reason == f"stopped by the stop file {run_dir.resolve() / 'STOP'}"
    assert not (run_dir / "STOP").exists()
    with Ledger(run_dir, readonly=True) as ledger:
        assert len(ledger) == 0


def test_a_second_loop_on_the_same_run_directory_is_refused(smoke_data, tmp_path):
    run_dir = tmp_path / "run"
    with Ledger(run_dir):
        done = _kit_loop(run_dir, "--policy", "random", "--iterations", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("error: another loop is running on this run directory")


def _orphans(marker: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resumes_to_the_same_totals(smoke_data, tmp_path):
    run_dir = tmp_path / "killed"
    rng = random.Random(7)
    args = [sys.executable, "-m", "kit", "loop", *FAST, "--policy", "ppo", "--iterations", "7", "--run-dir",
            str(run_dir)]
    seen: list[tuple[int, str]] = []
    for _ in range(3):
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4, 14))
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.5)
        assert _orphans(str(run_dir)) == [], "a process of the killed loop survived it"
        if (run_dir / "ledger.sqlite").exists():
            with Ledger(run_dir, readonly=True) as ledger:
                now = [(r.iteration, r.code_hash) for r in ledger.records()]
            assert now[:len(seen)] == seen, "a finished experiment was lost or changed"
            seen = now
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _check_run_dir(run_dir, 7)
    assert [(r.iteration, r.code_hash) for r in records][:len(seen)] == seen
    # the same totals as an uninterrupted run: 7 records, 3 of them the noise floor, then the agent
    assert sum(r.policy == NOISE_POLICY for r in records) == 3
    assert {r.policy for r in records[3:]} <= {"ppo", CONFIRM_POLICY} and records[3].policy == "ppo"
    assert os.path.exists(run_dir / "policy.pt")


def test_the_convergence_oracle_fires_when_improvements_stop(smoke_data, tmp_path):
    """A stand-in harness whose every run scores the same: no ε-improvement, so the oracle must stop the loop."""
    from kit.harness import RunResult, Status

    def flat(source, run_dir, config, monitor=None):
        return RunResult(status=Status.OK, val_bpb=2.5, reason="", training_seconds=1.0, total_seconds=1.0,
                         peak_mem_mb=1.0, num_steps=3, curve=((0.5, 3.0), (1.0, 2.9)), fingerprint={"device": "cpu"},
                         seed=0, run_dir=str(run_dir))

    config = LoopConfig(run_dir=tmp_path / "run", profile="smoke", policy="random", convergence_window=40,
                        convergence_threshold=0.1, iterations=500)
    reason = run_loop(config, environment=flat)
    assert reason.startswith("converged: 0/40 recent experiments improved by more than ε=0.005")
    with Ledger(tmp_path / "run", readonly=True) as ledger:
        assert len(ledger) == 3 + 40  # the noise floor, then exactly the window
