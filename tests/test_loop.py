"""kit.loop: the research loop end to end: every policy on the smoke profile, the report, rollback, pause, stop,
resume after SIGKILL, near misses re-run under new seeds, the convergence oracle, and one-line errors."""

import dataclasses
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit.ledger import Ledger
from kit.loop import CANDIDATE_FILE, ResumeError, run_loop
from kit.memory import code_hash
from kit.report import TSV_HEADER
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, runs_of
from kit.stopping import StopConditions, read_status

from .helpers import REPO, TRAIN_PY, StandIn, flat, ledger_records, loop_config, processes_naming

FAST = ["--profile", "smoke", "--budget", "1.5"]


def _kit_loop(run_dir, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "kit", "loop", *FAST, "--run-dir", str(run_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _check_run_dir(run_dir: Path, expected: int) -> list:
    ran = ledger_records(run_dir)
    assert [r.iteration for r in ran] == list(range(1, expected + 1))
    rows = (run_dir / "results.tsv").read_text().splitlines()
    assert rows[0] == TSV_HEADER and len(rows) == expected + 1
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val_bpb" in (run_dir / "summary.md").read_text()
    assert "<h2>Where it stands</h2>" in (run_dir / "report.html").read_text()
    # train.py on the branch is the last accepted one, and every accepted record is a commit of it
    accepted = [r for r in ran if r.accepted]
    assert accepted, "the first noise-floor run (the baseline) is always kept"
    head = subprocess.run(["git", "-C", str(run_dir / "repo"), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert head == accepted[-1].commit
    assert code_hash((run_dir / "repo" / "train.py").read_text()) == accepted[-1].code_hash
    # each kept train.py is measured by the mean of its ok runs (the noise floor's for the baseline); the means only
    # go down
    means = [statistics.fmean(r.val_bpb for r in ran if r.code_hash == a.code_hash and r.status == "ok")
             for a in accepted]
    assert all(a > b for a, b in zip(means, means[1:], strict=False)), "kept edits only improve"
    return ran


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ppo", "random", "greedy", "tpe", "cmaes"])
def test_every_policy_runs_five_iterations_and_reports(smoke_data, policy, tmp_path):
    done = _kit_loop(tmp_path / "run", "--policy", policy, "--iterations", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "iterations: 5 experiments recorded" in done.stdout
    ran = _check_run_dir(tmp_path / "run", 5)
    assert sum(r.policy == NOISE_POLICY for r in ran) == 3
    agent = [r for r in ran if r.policy == policy]
    assert len(agent) + sum(r.policy == CONFIRM_POLICY for r in ran) == 2 and agent
    assert all(r.description for r in agent)
    assert all(r.diff.startswith("---") for r in agent if r.status != "rejected" or "duplicate" in r.reason)
    assert all(isinstance(r.reward, float) for r in ran)


def test_a_baseline_that_always_fails_pauses_after_three_and_resumes(smoke_data, baseline_source, tmp_path):
    broken = tmp_path / "train.py"
    broken.write_text(baseline_source.replace("t_start = time.time()", "t_start = time.time()\nraise ValueError('broken')"))
    run_dir = tmp_path / "run"
    reason = run_loop(loop_config(tmp_path, budget=1.0, train_py=broken, early_stopping="same-progress"))
    assert reason.startswith("paused: 3 failures in a row (last: crash: ValueError: broken)")
    assert (run_dir / "PAUSED").exists() and read_status(run_dir).state == "paused"
    # running again resumes: the pause is lifted, the strikes start over
    again = loop_config(tmp_path, iterations=4, budget=1.0, train_py=broken, early_stopping="same-progress")
    assert run_loop(again).startswith("iterations: 4")
    assert not (run_dir / "PAUSED").exists() and read_status(run_dir).state == "finished"


def test_the_stop_file_stops_before_the_next_experiment(smoke_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "STOP").write_text("")
    reason = run_loop(loop_config(tmp_path, budget=1.0))
    assert reason == f"stopped by the stop file {run_dir.resolve() / 'STOP'}"
    assert not (run_dir / "STOP").exists()
    status = read_status(run_dir)
    assert (status.state, status.reason, status.pid) == ("stopped", reason, os.getpid()) and not status.alive
    with Ledger(run_dir, readonly=True) as ledger:
        assert len(ledger) == 0


def test_a_second_loop_on_the_same_run_directory_is_refused(smoke_data, tmp_path):
    run_dir = tmp_path / "run"
    with Ledger(run_dir):
        done = _kit_loop(run_dir, "--policy", "random", "--iterations", "1")
    assert done.returncode == 2
    assert done.stderr.startswith("error: another loop is running on this run directory")


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
        assert processes_naming(str(run_dir)) == [], "a process of the killed loop survived it"
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
    """A stand-in world whose every run scores the same: no ε-improvement, so the oracle must stop the loop."""
    from kit.stopping import StopConditions

    config = loop_config(tmp_path, stop=StopConditions(iterations=500, convergence_window=40,
                                                       convergence_threshold=0.1))
    reason = run_loop(config, environment=flat)
    assert reason.startswith("converged: 0/40 recent experiments improved by more than ε=0.005")
    with Ledger(tmp_path / "run", readonly=True) as ledger:
        assert len(ledger) == 3 + 40  # the noise floor, then exactly the window


# near misses: re-run under new seeds, kept on the mean ------------------------------------------------------------


def test_a_near_miss_confirmed_under_a_new_seed_is_kept(tmp_path):
    world = StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47)
    run_loop(loop_config(tmp_path, iterations=5), environment=world)
    records = ledger_records(tmp_path / "run")
    assert [r.policy for r in records] == [NOISE_POLICY] * 3 + ["random", CONFIRM_POLICY]
    first, again = records[3], records[4]
    assert not first.accepted and again.accepted and again.commit
    assert again.code_hash == first.code_hash and again.seed == world.frozen + 1
    assert "run 2 of at most 3" in again.description
    assert code_hash((tmp_path / "run" / "repo" / "train.py").read_text()) == first.code_hash
    assert not (tmp_path / "run" / CANDIDATE_FILE).exists()


def test_a_lucky_first_run_is_found_out_and_dropped(tmp_path):
    baseline = TRAIN_PY.read_text()
    run_loop(loop_config(tmp_path, iterations=5), environment=StandIn(baseline, first=2.47, later=2.56))
    records = ledger_records(tmp_path / "run")
    assert records[4].policy == CONFIRM_POLICY and not records[4].accepted
    assert (tmp_path / "run" / "repo" / "train.py").read_text() == baseline


def test_without_confirmations_a_near_miss_is_simply_not_kept(tmp_path):
    world = StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47)
    run_loop(loop_config(tmp_path, iterations=6, confirm_runs=0), environment=world)
    assert [r.policy for r in ledger_records(tmp_path / "run")][3:] == ["random"] * 3
    assert not any(r.accepted for r in ledger_records(tmp_path / "run")[3:])


def test_a_near_miss_earns_its_confirmed_gain_and_its_proposal_is_told_the_sum_once_it_is_kept(tmp_path,
                                                                                                 monkeypatch):
    import prepare
    from kit.policies.search import RandomPolicy

    told = []
    monkeypatch.setattr(RandomPolicy, "observe", lambda self, outcome: told.append(outcome) or {})
    run_loop(loop_config(tmp_path, iterations=5), environment=StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47))
    first, again = ledger_records(tmp_path / "run")[3:]
    cost = -0.01 * 1.0 / prepare.get_profile("smoke").time_budget  # each stand-in run takes a second
    assert first.reward_parts == pytest.approx({"compute": cost})
    # the noise floor's mean was 2.50; the kept edit's runs average 2.47
    assert again.reward_parts == pytest.approx({"compute": cost, "progress": 100 * math.log(2.50 / 2.47)})
    assert len(told) == 1 and told[0].accepted and told[0].reward == pytest.approx(first.reward + again.reward)
    assert told[0].val_bpb == 2.47 and told[0].proposal.description == first.description


def test_a_lucky_first_run_earns_only_its_cost_and_its_proposal_is_told_once_it_is_dropped(tmp_path, monkeypatch):
    from kit.policies.search import RandomPolicy

    told = []
    monkeypatch.setattr(RandomPolicy, "observe", lambda self, outcome: told.append(outcome) or {})
    run_loop(loop_config(tmp_path, iterations=5), environment=StandIn(TRAIN_PY.read_text(), first=2.47, later=2.56))
    first, again = ledger_records(tmp_path / "run")[3:]
    assert set(first.reward_parts) == set(again.reward_parts) == {"compute"}
    assert len(told) == 1 and not told[0].accepted and told[0].reward == pytest.approx(first.reward + again.reward)
    assert told[0].reward < 0


def test_the_progress_rewards_of_a_run_add_up_to_the_gain_of_the_train_py_it_ends_with(tmp_path):
    from kit.bench.environments import SyntheticConfig, SyntheticEnvironment

    world = SyntheticEnvironment(TRAIN_PY.read_text(), SyntheticConfig(seed=1))
    run_loop(loop_config(tmp_path, iterations=40, policy="greedy", budget=60.0), environment=world)
    records = ledger_records(tmp_path / "run")
    kept = [r for r in records if r.accepted]
    assert len(kept) >= 3, "the baseline and at least two edits"

    def mean(record):
        return statistics.fmean(runs_of(records, record.code_hash))

    gained = sum(r.reward_parts.get("progress", 0.0) for r in records)
    assert gained == pytest.approx(100 * math.log(mean(kept[0]) / mean(kept[-1])))
    assert all(r.reward <= 0 for r in records if "progress" not in r.reward_parts)


def test_a_loop_stopped_between_a_near_miss_and_its_confirmation_resumes_it(tmp_path):
    world = StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47)
    run_loop(loop_config(tmp_path, iterations=4), environment=world)
    assert (tmp_path / "run" / CANDIDATE_FILE).exists()
    run_loop(loop_config(tmp_path, iterations=5), environment=world)
    records = ledger_records(tmp_path / "run")
    assert records[4].policy == CONFIRM_POLICY and records[4].accepted
    assert records[4].code_hash == records[3].code_hash


def test_a_policy_checkpoint_of_another_shape_stops_the_resume_with_what_to_do(tmp_path):
    import torch

    world = StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47)
    run_loop(loop_config(tmp_path, iterations=4, policy="ppo"), environment=world)
    checkpoint = tmp_path / "run" / "policy.pt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["policy"] = {"actor.0.weight": torch.zeros(3, 3)}  # as an older kit's actor would have saved it
    torch.save(saved, checkpoint)
    with pytest.raises(ResumeError, match="move it away to start the policy afresh"):
        run_loop(loop_config(tmp_path, iterations=5, policy="ppo"), environment=world)
    assert len(ledger_records(tmp_path / "run")) == 4  # nothing recorded is lost or added
    status = read_status(tmp_path / "run")  # and no view says the earlier run's "finished"
    assert status.state == "failed" and status.reason.startswith("ResumeError: ") and "afresh" in status.reason


def test_the_cli_says_so_in_one_line(smoke_data, tmp_path, capsys):
    import torch

    from kit.cli import main

    run_loop(loop_config(tmp_path, iterations=4, policy="ppo"),
             environment=StandIn(TRAIN_PY.read_text(), first=2.47, later=2.47))
    checkpoint = tmp_path / "run" / "policy.pt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["policy"] = {"actor.0.weight": torch.zeros(3, 3)}
    torch.save(saved, checkpoint)
    code = main(["loop", "--profile", "smoke", "--policy", "ppo", "--iterations", "5", "--run-dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "move it away" in err


def _hog() -> subprocess.Popen:
    """A process spinning on one of the loop's cores (it inherits their affinity)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_a_contended_run_is_recorded_not_judged_and_run_again_once_the_machine_is_quiet(smoke_data, tmp_path):
    hog = _hog()

    def on_event(event):  # the machine is freed as soon as the loop says the run was contended
        if event["event"] == "contended":
            hog.kill()

    try:
        reason = run_loop(loop_config(tmp_path, iterations=2, budget=1.0, noise_repeats=1, quiet_wait=60,
                                      contention_limit=0.10),
                          on_event=on_event)
    finally:
        hog.kill()
        hog.wait()
    assert reason.startswith("iterations: 2")
    first, again = ledger_records(tmp_path / "run")
    assert first.status == "contended" and first.val_bpb is None and not first.accepted
    assert "(contended: attempt 1 of 3)" in first.description
    # the same experiment again: the baseline's first noise-floor run, kept as the incumbent
    assert again.status == "ok" and again.accepted and again.policy == NOISE_POLICY
    assert again.code_hash == first.code_hash and again.seed == first.seed
    assert "contended" in (tmp_path / "run" / "results.tsv").read_text()


def test_a_machine_that_stays_busy_pauses_the_loop_and_names_what_uses_it(smoke_data, tmp_path):
    hog = _hog()
    try:
        reason = run_loop(loop_config(tmp_path, iterations=5, budget=1.0, contended_reruns=1, quiet_wait=1,
                                      contention_limit=0.10))
    finally:
        hog.kill()
        hog.wait()
    assert reason.startswith("paused: 2 runs in a row could not get the machine to themselves"), reason
    assert f"pid {hog.pid}" in reason and (tmp_path / "run" / "PAUSED").exists()
    assert [r.status for r in ledger_records(tmp_path / "run")] == ["contended", "contended"]


def test_a_run_slower_than_earlier_runs_of_its_code_is_contended_and_run_again(tmp_path):
    """What the share of the cores cannot show (a shared GPU, a throttled core): the second noise-floor run makes 40 %
    of the steps per second the first made, so it is not judged; its re-run at the usual pace is."""
    paces = iter([50.0, 20.0, 48.0, 52.0])

    def world(source, run_dir, config, monitor=None):
        result = flat(source, run_dir, config)
        return dataclasses.replace(result, timings={"steps_per_second": next(paces)})

    run_loop(loop_config(tmp_path, iterations=4, noise_repeats=3, quiet_wait=0, pace_limit=0.75), environment=world)
    ran = ledger_records(tmp_path / "run")
    assert [r.status for r in ran] == ["ok", "contended", "ok", "ok"]
    assert all(r.policy == NOISE_POLICY for r in ran) and ran[1].seed == ran[2].seed
    assert ran[1].reason.startswith("made 20 steps/s, 40% of the 50 its 1 earlier run(s) made (under 75%)")
    assert "it would have been ok, val_bpb 2.500000" in ran[1].reason


def test_the_noise_free_reward_pays_each_kept_edit_the_gain_the_world_knows_is_there(tmp_path):
    from kit.bench.family import FamilyConfig, SyntheticFamily
    from kit.reward import RewardConfig

    world, sources = SyntheticFamily(TRAIN_PY.read_text(), FamilyConfig(member=3)), {}

    def remembering(source, run_dir, config, monitor=None):
        sources[code_hash(source)] = source
        return world(source, run_dir, config, monitor=monitor)

    remembering.expected_bpb = world.expected_bpb
    run_loop(loop_config(tmp_path, iterations=40, policy="greedy", budget=60.0,
                         reward=RewardConfig(noise_free=True)), environment=remembering)
    kept = [r for r in ledger_records(tmp_path / "run") if r.accepted]
    assert len(kept) >= 2, "the baseline and at least one edit"
    for before, after in zip(kept, kept[1:], strict=False):
        truth = math.log(world.expected_bpb(sources[before.code_hash]) / world.expected_bpb(sources[after.code_hash]))
        assert after.reward_parts.get("progress", 0.0) == pytest.approx(100 * max(0.0, truth))
    with pytest.raises(ValueError, match="noise-free"):
        run_loop(loop_config(tmp_path / "real", iterations=1, reward=RewardConfig(noise_free=True)))


def test_ppo_asks_cmaes_for_some_experiments_and_tells_it_every_run(tmp_path):
    import torch

    from kit.bench.family import FamilyConfig, SyntheticFamily

    world = SyntheticFamily(TRAIN_PY.read_text(), FamilyConfig(member=3))
    run_loop(loop_config(tmp_path, iterations=23, policy="ppo", from_scratch=True, budget=60.0), environment=world)
    records = ledger_records(tmp_path / "run")
    agent = [r for r in records if r.policy == "ppo"]
    asked = [r for r in agent if r.description.startswith("cmaes:")]
    confirms = sum(r.policy == CONFIRM_POLICY for r in records)
    assert len(agent) + confirms == 20 and 0 < len(asked) < len(agent), "from scratch it asks CMA-ES about half the time"
    study = torch.load(tmp_path / "run" / "policy.pt", weights_only=False)["sampler"]["trials"]
    generations = [t for t in study if t["state"] == "COMPLETE" and any("generation" in k for k in t["system_attrs"])]
    witnessed = [t for t in study if t["state"] == "COMPLETE" and not t["system_attrs"]]
    ran = [r for r in agent if r.status in ("ok", "pruned")]  # a pruned run is told its forecast
    assert len(witnessed) == 3 + confirms, "the noise floor's runs and a near miss's re-runs"
    assert len(generations) == len(ran), "its own samples and the catalog edits, each as a member of a generation"


def test_loop_json_says_it_runs_then_how_it_ended_and_its_lines_go_where_it_is_told(tmp_path):
    seen, lines = [], []

    def world(source, run_dir, config, monitor=None):
        seen.append(read_status(tmp_path / "run"))
        if len(seen) == 4:
            raise RuntimeError("the world broke")
        return StandIn(TRAIN_PY.read_text(), first=2.4, later=2.4)(source, run_dir, config, monitor)

    config = loop_config(tmp_path, iterations=10, stop=StopConditions(iterations=10, hours=2.0))
    with pytest.raises(RuntimeError, match="the world broke"):
        run_loop(config, environment=world, say=lines.append)
    running = seen[0]
    assert running.state == "running" and running.alive and (running.iterations, running.hours) == (10, 2.0)
    ended = read_status(config.run_dir)
    assert ended.state == "failed" and ended.reason == "RuntimeError: the world broke" and not ended.alive
    assert [line[:10] for line in lines] == ["[   1] ok ", "[   2] ok ", "[   3] ok "]
    assert (config.run_dir / "report.html").exists()  # the report is written however it ended


def test_a_mirror_that_fails_is_said_once_and_the_run_goes_on(tmp_path, monkeypatch):
    from kit.mirror import Mirror

    def broken(self, records, wait=True):
        raise OSError("disk full")

    monkeypatch.setattr(Mirror, "sync", broken)
    lines = []
    reason = run_loop(loop_config(tmp_path, iterations=5), environment=StandIn(TRAIN_PY.read_text(), 2.4, 2.4),
                      say=lines.append)
    assert reason.startswith("iterations: 5") and len(ledger_records(tmp_path / "run")) == 5
    said = [line for line in lines if "mirror" in line]
    assert len(said) == 1 and "OSError: disk full" in said[0] and "python -m kit dashboard" in said[0]
