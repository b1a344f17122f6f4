"""kit.mirror: every record of the ledger as a trial of the run directory's Optuna study, in order, kept in step by
the loop and rebuilt from the ledger alone."""

import optuna
from optuna.trial import TrialState

from kit import edits
from kit.ledger import Ledger
from kit.loop import run_loop
from kit.mirror import STUDY_FILE, Mirror, rebuild_from, side_by_side, storage_url

from .helpers import TRAIN_PY, StandIn, loop_config, make_record

BASELINE = TRAIN_PY.read_text()


def study_of(run_dir):
    return optuna.load_study(study_name=run_dir.name, storage=storage_url(run_dir))


def test_each_status_becomes_the_trial_state_optuna_dashboard_shows(tmp_path):
    edited = edits.set_values(BASELINE, {"MATRIX_LR": 0.04, "DEPTH": 6})
    sources = {"ok": edited, "pruned": edited, "crash": edited, "contended": edited}
    records = [make_record(iteration=i + 1, status=status, val_bpb=value, accepted=status == "ok",
                           curve=[[0.4, 3.0], [0.9, 2.9], [1.5, 2.7], [2.2, float("nan")]])
               for i, (status, value) in enumerate([("ok", 2.5), ("pruned", 2.9), ("crash", None),
                                                    ("contended", None), ("rejected", None)])]
    records[-1].diff = ""  # a proposal refused before it made a train.py
    mirror = Mirror(tmp_path, BASELINE, lambda record: sources.get(record.status))
    assert mirror.sync(records) == 5 and mirror.sync(records) == 0  # a second sync adds nothing

    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL,
                                         TrialState.FAIL]
    assert trials[0].value == 2.5 and trials[1].value is None  # only a finished run has a value
    assert trials[0].params["MATRIX_LR"] == 0.04 and trials[0].params["DEPTH"] == 6
    assert trials[0].params["HEAD_DIM"] == 32 and len(trials[0].params) == len(mirror.distributions)
    assert trials[4].params == {}  # nothing ran: no config to show
    assert trials[1].intermediate_values == {0: 2.9, 1: 2.7}  # the latest loss in each second; NaN left out
    attrs = trials[2].user_attrs
    assert attrs["status"] == "crash" and attrs["iteration"] == 3 and attrs["seed"] == records[2].seed
    assert attrs["diff"] == records[2].diff and attrs["commit"] == records[2].commit and attrs["kept"] is False
    assert trials[0].datetime_complete > trials[0].datetime_start


def test_a_value_outside_the_declared_range_is_left_out_not_refused(tmp_path):
    wide = BASELINE.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.5")
    mirror = Mirror(tmp_path, BASELINE, lambda record: wide)
    mirror.sync([make_record(iteration=1, status="ok", val_bpb=2.5)])
    params = study_of(tmp_path).trials[0].params
    assert "MATRIX_LR" not in params and params["DEPTH"] == 4


def test_the_loop_keeps_the_mirror_in_step_and_a_deleted_mirror_is_rebuilt_from_the_ledger(tmp_path):
    world = StandIn(BASELINE, first=2.40, later=2.41)
    config = loop_config(tmp_path, iterations=6)
    run_loop(config, environment=world, say=lambda line: None)
    with Ledger(config.run_dir, readonly=True) as ledger:
        records = ledger.records()
    trials = study_of(config.run_dir).trials
    assert len(trials) == len(records) == 6
    assert [t.user_attrs["iteration"] for t in trials] == [r.iteration for r in records]
    assert [t.value for t in trials] == [r.val_bpb if r.status == "ok" else None for r in records]

    (config.run_dir / STUDY_FILE).unlink()
    assert rebuild_from(config.run_dir) == 6
    rebuilt = study_of(config.run_dir).trials
    assert [(t.state, t.value, t.params, t.user_attrs) for t in rebuilt] == \
        [(t.state, t.value, t.params, t.user_attrs) for t in trials]

    run_loop(loop_config(tmp_path, iterations=8), environment=world, say=lambda line: None)  # resumed
    assert len(study_of(config.run_dir).trials) == 8


def test_several_run_directories_side_by_side_are_a_study_each_in_one_storage(tmp_path):
    world = StandIn(BASELINE, first=2.40, later=2.41)
    dirs = []
    for i, policy in enumerate(("random", "greedy", "random")):
        config = loop_config(tmp_path / f"{i}" / ("ppo" if i < 2 else "cmaes"), iterations=4 + i, policy=policy,
                             mirror=False)  # as the benchmarks leave them: no mirror of their own
        run_loop(config, environment=world, say=lambda line: None)
        dirs.append(config.run_dir)
    assert not any((d / STUDY_FILE).exists() for d in dirs)
    combined = tmp_path / "side-by-side.sqlite3"
    mirrors = side_by_side(dirs, combined)
    assert [m.name for m in mirrors] == ["0/ppo/run", "1/ppo/run", "2/cmaes/run"]  # as much path as tells them apart
    assert [m.follow_ledger() for m in mirrors] == [4, 5, 6]
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage_url(combined))}
    assert studies == {"0/ppo/run": 4, "1/ppo/run": 5, "2/cmaes/run": 6}


def test_the_dashboard_command_refuses_a_directory_without_a_ledger_in_one_line(tmp_path, capsys):
    from kit.cli import main

    assert main(["dashboard", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: no ledger in {tmp_path / 'nowhere'}: give the --run-dir of a loop\n"
