"""The dashboard, without a browser: built from a ledger, it follows new records and a running experiment, and
its buttons hold and stop a real loop."""

import dataclasses
import json
import re
import threading
import time
from pathlib import Path

from kit.dashboard import Dashboard, LiveRun, read_snapshot, render_png, run_notebook_loop, show_report
from kit.ledger import Ledger, Record
from kit.loop import LoopConfig, ResearchLoop
from kit.report import counts_line, tally
from kit.stopping import HOLD_FILE, STOP_FILE, LoopStatus, StopConditions, write_status


def record(iteration: int, status: str, val_bpb, accepted=False, policy="ppo", reward=0.1) -> Record:
    curve = [[t, 3.0 - 0.02 * t] for t in range(1, 60)]
    return Record(iteration=iteration, policy=policy, description=f"edit {iteration}", diff="-A = 1\n+A = 2\n",
                  parent_commit=None, commit=None, status=status, reason="", val_bpb=val_bpb, reward=reward,
                  reward_parts={"accuracy": reward}, accepted=accepted, curve=curve, predictions=[], timings={},
                  policy_stats={"losses/policy_loss": 0.01, "losses/approx_kl": 0.002} if iteration % 2 else {},
                  fingerprint={"device": "cpu"}, peak_mem_mb=None, training_seconds=60.0, total_seconds=70.0,
                  seed=1337, code_hash=f"h{iteration}")


def test_dashboard_follows_the_ledger_and_the_running_experiment(tmp_path: Path):
    status = LoopStatus.running(StopConditions(iterations=12))
    write_status(tmp_path, status)  # a loop of this process runs on the directory
    with Ledger(tmp_path) as ledger:
        ledger.append(record(1, "ok", 2.70, accepted=True, policy="noise-floor"))
        ledger.append(record(2, "ok", 2.72))
        ledger.append(record(3, "pruned", None))
        dashboard = Dashboard(tmp_path, budget=60.0)
        snap = dashboard.snapshot
        assert snap.counts == tally(snap.records) == {"noise floor": 1, "kept": 0, "discarded": 1, "pruned": 1,
                                                       "failed": 0, "rejected": 0, "contended": 0}
        assert snap.best == 2.70 and snap.state == "running" and snap.running_dir is None
        assert counts_line(snap.records) in dashboard.text.value  # the same words as summary.md
        assert snap.progress == "experiment 4 of 12"  # the one running now
        assert dashboard.image.value[:8] == b"\x89PNG\r\n\x1a\n"
        assert dashboard.update() is False  # nothing new: nothing redrawn

        ledger.append(record(4, "ok", 2.60, accepted=True, reward=0.5))
        ledger.append(record(5, "crash", None, reward=-1.0))
        running = tmp_path / "experiments" / "00006"  # the experiment the loop is running now
        running.mkdir(parents=True)
        (tmp_path / "repo").mkdir()
        (tmp_path / "repo" / "train.py").write_text("A = 1\n")
        (running / "train.py").write_text("A = 2\n")
        (running / "train.log").write_text("params: 1M\n" + "".join(
            f"@progress {json.dumps({'step': i, 't': i * 0.5, 'loss': 3.0 - 0.01 * i, 'tokens': i})}\n"
            for i in range(1, 41)))
        assert dashboard.update() is True
        snap = dashboard.snapshot
        assert snap.counts["kept"] == 1 and snap.counts["failed"] == 1 and snap.best == 2.60
        assert len(snap.running_curve) == 40 and snap.running_curve[-1] == (20.0, 2.6)
        assert "+A = 2" in snap.running_diff and "+A = 2" in dashboard.diff.value
        assert "2.600000" in dashboard.text.value and "1 failed" in dashboard.text.value
        assert "-1.000" in dashboard.text.value and "approx_kl" in dashboard.text.value
        assert "running 00006: 40 progress reports" in dashboard.text.value
        assert "experiment 6 of 12" in dashboard.text.value

        write_status(tmp_path, status.ended_as("finished", "iterations: 12 experiments recorded (limit 12)"))
        assert dashboard.update() is True
        assert dashboard.snapshot.state == "finished: iterations: 12 experiments recorded (limit 12)"
        assert dashboard.snapshot.running_dir is None  # an experiment directory left behind is not running
        dashboard.close()


def test_the_best_line_is_the_kept_mean_never_a_lucky_single_run(tmp_path: Path):
    with Ledger(tmp_path) as ledger:
        for i, value in enumerate((2.50, 2.52, 2.48), start=1):
            ledger.append(dataclasses.replace(record(i, "ok", value, accepted=i == 1, policy="noise-floor"),
                                              code_hash="baseline"))
        ledger.append(record(4, "ok", 2.30))  # lucky, and never kept
        snapshot = read_snapshot(tmp_path, ledger)
    assert abs(snapshot.best - 2.50) < 1e-9 and snapshot.incumbent.iteration == 1


def test_the_buttons_are_enabled_only_where_they_can_act_and_the_loops_lines_show(tmp_path: Path):
    dashboard = Dashboard(tmp_path)
    enabled = lambda: [b.disabled is False for b in (dashboard.pause_button, dashboard.resume_button,  # noqa: E731
                                                     dashboard.stop_button)]
    assert enabled() == [False, False, False] and dashboard.snapshot.state == "not started"
    status = LoopStatus.running(StopConditions())
    write_status(tmp_path, status)
    dashboard.update()
    assert enabled() == [True, False, True]  # running: pause or stop
    an_hour_in = dataclasses.replace(status, hours=1.5, started=time.time() - 3600)
    write_status(tmp_path, an_hour_in)
    dashboard.update()
    assert re.fullmatch(r"0h (2\dm \d\d|30m 00)s left of 1\.5 h", dashboard.snapshot.progress)  # a slow machine: minutes pass
    dashboard.pause()
    assert enabled() == [False, True, True]  # held: resume or stop
    dashboard.resume()
    write_status(tmp_path, status.ended_as("stopped", "stopped by Ctrl-C"))
    dashboard.update()
    assert enabled() == [False, False, False] and dashboard.snapshot.state == "stopped: stopped by Ctrl-C"
    for i in range(20):
        dashboard.say(f"[{i:4d}] ok <line>")
    assert "[  19] ok &lt;line&gt;" in dashboard.log.value and "[   7]" not in dashboard.log.value  # the latest 12
    dashboard.close()


def test_the_report_waits_for_a_live_loop_and_shows_at_once_otherwise(tmp_path: Path):
    import ipywidgets

    with Ledger(tmp_path) as ledger:
        ledger.append(record(1, "ok", 2.70, accepted=True, policy="noise-floor"))
    shown = []
    show_report(tmp_path, "iterations: 1 experiments recorded", display=shown.append)
    assert "train.py now:" in shown[0].data and (tmp_path / "report.html").exists()

    live = LiveRun(threading.Thread(target=lambda: None), Dashboard(tmp_path), {})
    show_report(tmp_path, live, display=shown.append)
    assert isinstance(shown[1], ipywidgets.HTML) and "appears here when it stops" in shown[1].value
    live._end()  # the loop's thread does this when the loop has ended
    assert "train.py now:" in shown[1].value
    live.dashboard.close()


def test_render_handles_an_empty_run_directory(tmp_path: Path):
    snapshot = read_snapshot(tmp_path, None)
    assert snapshot.records == [] and snapshot.best is None
    assert render_png(snapshot)[:4] == b"\x89PNG"


def test_buttons_hold_and_stop_a_real_loop(tmp_path: Path, smoke_data):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    loop = ResearchLoop(LoopConfig(run_dir=run_dir, profile="smoke", policy="random",
                                   stop=StopConditions(iterations=3)))
    dashboard = Dashboard(run_dir)
    dashboard.pause()
    assert (run_dir / HOLD_FILE).exists()
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("reason", loop.run()))
    thread.start()
    time.sleep(3)
    assert thread.is_alive() and len(loop.ledger) == 0  # held: no experiment started
    dashboard.update()
    assert "on hold" in dashboard.snapshot.state
    dashboard.stop()
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome["reason"].startswith("stopped by the stop file")
    assert len(loop.ledger) == 0 and not (run_dir / STOP_FILE).exists() and not (run_dir / HOLD_FILE).exists()
    loop.close()
    dashboard.close()


def test_live_mode_runs_the_loop_in_the_background_and_shows_the_dashboard(tmp_path: Path, smoke_data):
    shown = []
    run_dir = tmp_path / "live"
    (run_dir).mkdir()
    (run_dir / HOLD_FILE).touch()  # held from the start, so the test needs no training run
    live = run_notebook_loop(LoopConfig(run_dir=run_dir, profile="smoke", policy="random",
                                        stop=StopConditions(iterations=2)),
                             live=True, refresh=0.2, display=shown.append)
    assert shown == [live.dashboard.widget]
    time.sleep(1)
    assert live.thread.is_alive()
    live.dashboard.stop()
    assert live.wait(timeout=60).startswith("stopped by the stop file")


def test_with_several_workers_the_dashboard_shows_each_running_experiment(tmp_path: Path):
    write_status(tmp_path, LoopStatus.running(StopConditions(iterations=12)))
    first = tmp_path / "experiments" / "running-aaaa"
    first.mkdir(parents=True)
    (first / "train.log").write_text("".join(
        f"@progress {json.dumps({'step': i, 't': i * 0.5, 'loss': 3.0 - 0.01 * i, 'tokens': i})}\n" for i in range(1, 11)))
    now = time.time()
    jobs = [{"key": "aaaa", "state": "running", "worker": "host cores 0", "description": "MATRIX_LR ×1.25",
             "started": now - 65, "dir": str(first)},
            {"key": "bbbb", "state": "running", "worker": "host cores 1", "description": "DEPTH +1",
             "started": now - 5, "dir": str(tmp_path / "experiments" / "running-bbbb")},
            {"key": "cccc", "state": "queued", "worker": "", "description": "baseline", "started": None, "dir": ""}]
    (tmp_path / "running.json").write_text(json.dumps({"workers": ["host cores 0", "host cores 1"], "jobs": jobs}))
    with Ledger(tmp_path) as ledger:
        ledger.append(dataclasses.replace(record(1, "ok", 2.70, accepted=True, policy="noise-floor"), created=now - 200,
                                          policy_stats={"worker": "host cores 0"}))
        ledger.append(dataclasses.replace(record(2, "ok", 2.72), created=now - 130,
                                          policy_stats={"worker": "host cores 1"}))
        dashboard = Dashboard(tmp_path, budget=60.0)
        text = dashboard.text.value
        assert "host cores 0: MATRIX_LR ×1.25 (0h 01m" in text and "host cores 1: DEPTH +1 (0h 00m" in text
        assert "baseline" not in text.split("PPO:")[1]  # a queued one is not running
        assert "experiments per hour on 2 workers" in text
        assert dashboard.snapshot.running_dir == first and len(dashboard.snapshot.running_curve) == 10
        dashboard.close()
