"""kit.bench.replay: recorded runs come back exactly, unrecorded configs get deterministic surrogate draws, and the
surrogate recovers an objective it was fitted to. The records are made the way `bench record` makes them (the same
run plan), answered by the synthetic objective, whose truth is known."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from kit import REPO_ROOT, edits
from kit.bench import recorder
from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
from kit.bench.replay import ReplayConfig, ReplayEnvironment
from kit.ledger import Ledger
from kit.loop import LoopConfig, run_loop
from kit.results import HarnessConfig, Status
from kit.stopping import StopConditions

BASELINE = (REPO_ROOT / "train.py").read_text()
PROFILE_SEED = 1337


def recorded(env: SyntheticEnvironment, runs: int) -> list[dict]:
    records = []
    for index in range(runs):
        plan = recorder.plan_run(index, BASELINE, PROFILE_SEED)
        source = edits.set_values(BASELINE, plan.values)
        r = env(source, Path("."), HarnessConfig(budget=60.0, seed=plan.seed))
        records.append({"index": index, "kind": plan.kind, "seed": plan.seed, "status": r.status.value,
                        "val_bpb": r.val_bpb, "reason": r.reason, "budget": 60.0,
                        "config": {k.name: plan.values.get(k.name, k.value) for k in edits.knobs(BASELINE)},
                        "curve": [list(p) for p in r.curve], "training_seconds": r.training_seconds,
                        "total_seconds": r.total_seconds, "others_cpu_share": 0.0})
    return records


@pytest.fixture(scope="module")
def world():
    truth = SyntheticEnvironment(BASELINE, SyntheticConfig(seed=3))
    records = recorded(truth, 120)
    # a reach shorter than the default, so that a config with every knob at its top lies beyond it
    return truth, records, ReplayEnvironment(BASELINE, records, ReplayConfig(reach=1.0))


def test_recorded_configs_come_back_exactly(world, tmp_path: Path):
    _, records, replay = world
    for r in records[:40]:
        source = edits.set_values(BASELINE, {k: v for k, v in r["config"].items()})
        got = replay(source, tmp_path, HarnessConfig(seed=r["seed"]))
        assert got.status.value == r["status"] and got.val_bpb == r["val_bpb"], r["index"]
        assert [list(p) for p in got.curve] == r["curve"] and got.total_seconds == r["total_seconds"]


def test_the_profile_seed_is_the_default_and_a_new_seed_is_a_fresh_draw_not_a_recorded_repeat(world, tmp_path: Path):
    _, records, replay = world
    baseline = next(r for r in records if r["index"] == 0)
    assert replay(BASELINE, tmp_path).val_bpb == baseline["val_bpb"]  # no seed: the profile's, as in the loop
    fresh = [replay(BASELINE, tmp_path, HarnessConfig(seed=s)).val_bpb for s in (99, 100)]
    repeats = {r["val_bpb"] for r in records if r["kind"] == "baseline"}
    # a near miss re-run under a new seed must be able to come out differently from the run it repeats
    assert fresh[0] != fresh[1] and not set(fresh) & repeats
    assert abs(fresh[0] - replay.expected_bpb(BASELINE)) < 5 * replay.surrogate.noise_sd


def test_unrecorded_configs_are_deterministic_and_noisy_only_across_seeds(world, tmp_path: Path):
    _, _, replay = world
    source = edits.set_values(BASELINE, {"MATRIX_LR": 0.0301, "WEIGHT_DECAY": 0.07})
    a, b = replay(source, tmp_path, HarnessConfig(seed=5)), replay(source, tmp_path, HarnessConfig(seed=5))
    c = replay(source, tmp_path, HarnessConfig(seed=6))
    assert a == b and a.status is Status.OK and a.val_bpb != c.val_bpb
    assert abs(a.val_bpb - c.val_bpb) < 10 * replay.surrogate.noise_sd + 1e-3
    assert a.curve[-1][1] != a.curve[0][1] and len(a.curve) > 10


def test_the_surrogate_recovers_a_known_objective(world):
    truth, _, replay = world
    scores = replay.cross_validate(folds=4)
    # most recorded configs leave the important knobs alone, so their true values tie and ranks among them are
    # noise; the errors against a constant predictor are the fair measure
    assert scores["mae"] < 0.6 * scores["constant_mae"] and scores["rmse"] < 0.6 * scores["constant_rmse"], scores
    multi = scores["by_kind"]["multi-edit"]
    assert multi["gp"] < 0.4 * multi["constant"], multi  # the GP alone recovers it best; the forest and the
    assert multi["world"] < multi["constant"] and multi["forest"] < multi["constant"], multi
    assert scores["spearman"] > 0.4, scores
    assert scores["noise_sd"] < 3 * truth.config.noise + 0.01
    near = edits.set_values(BASELINE, dict(truth.optimum_values))
    mean, _ = replay.surrogate.predict({k.name: k.value for k in edits.knobs(near)})
    assert mean < truth.expected_bpb(BASELINE)  # the optimum is predicted better than the baseline


def test_held_out_error_is_told_by_how_far_configs_move_and_per_model_family(world):
    _, records, replay = world
    by_kind = replay.cross_validate(folds=4)["by_kind"]
    assert set(by_kind) == {"one-edit", "multi-edit", "far"}
    moved = [sum(not edits._same(r["config"][k], v) for k, v in records[0]["config"].items()) for r in records
             if r["status"] == "ok"]
    assert by_kind["one-edit"]["runs"] == moved.count(1) > 0 and by_kind["multi-edit"]["runs"] > 0
    for kind in ("one-edit", "multi-edit"):
        assert all(0 < by_kind[kind][name] < 1 for name in ("world", "gp", "forest", "constant")), by_kind
    assert by_kind["far"]["runs"] == 0 and np.isnan(by_kind["far"]["world"])  # the recorder's plan moves at most 6


def test_far_from_every_recorded_run_the_world_falls_back_to_the_baselines_value(world):
    _, records, replay = world
    s = replay.surrogate
    recorded_ok = next(r for r in records if r["status"] == "ok" and r["kind"] == "walk")
    assert s.trust(recorded_ok["config"]) == pytest.approx(1.0)
    assert not replay.unsure(edits.set_values(BASELINE, recorded_ok["config"]))
    far = {k.name: (k.high if k.low is not None else k.value) for k in edits.knobs(BASELINE)}  # every knob at its top
    far_source = edits.set_values(BASELINE, far)
    assert s.trust(far) < 0.15 and replay.unsure(far_source)
    # the baseline's recorded runs, not the typical recorded run: a search that goes where nothing was recorded
    # neither gains nor loses against the baseline
    baseline = float(np.exp(np.mean(np.log([r["val_bpb"] for r in records if r["kind"] == "baseline"
                                            and r["status"] == "ok"]))))
    typical = float(np.exp(np.mean(np.log([r["val_bpb"] for r in records if r["status"] == "ok"]))))
    assert abs(baseline - typical) > 0.01  # the two differ in this world, so the check below can tell them apart
    unbounded = ReplayEnvironment(BASELINE, records, ReplayConfig(reach=1e9))  # the models' own word, everywhere
    assert unbounded.surrogate.trust(far) == pytest.approx(1.0)
    assert abs(replay.expected_bpb(far_source) - baseline) < 0.2 * abs(unbounded.expected_bpb(far_source) - baseline)
    near_only = ReplayEnvironment(BASELINE, records, ReplayConfig(reach=0.2))  # nothing carries as far as `far`
    assert near_only.surrogate.trust(far) < 1e-6
    assert near_only.expected_bpb(far_source) == pytest.approx(baseline, abs=1e-4)
    gp_only = ReplayEnvironment(BASELINE, records, ReplayConfig(model="gp"))
    near = edits.set_values(BASELINE, {"MATRIX_LR": 0.0301, "WEIGHT_DECAY": 0.07})
    assert gp_only.expected_bpb(near) != replay.expected_bpb(near)  # the forest has a say
    with pytest.raises(ValueError, match="model in"):
        ReplayConfig(model="oracle")


def test_a_monitor_prunes_a_replayed_run(world, tmp_path: Path):
    _, _, replay = world
    result = replay(BASELINE, tmp_path, monitor=lambda curve: "stop" if len(curve) == 5 else None)
    assert result.status is Status.PRUNED and len(result.curve) == 5 and result.val_bpb is None


def test_runs_that_shared_the_machine_are_left_out(world):
    truth, records, _ = world
    shared = [{**r, "others_cpu_share": 0.5} if r["index"] == 0 else r for r in records]
    replay = ReplayEnvironment(BASELINE, shared)
    assert all(r["index"] != 0 for rs in replay.recorded.values() for r in rs)
    with pytest.raises(ValueError, match="record some"):
        ReplayEnvironment(BASELINE, [{**r, "status": "crash"} for r in records])


def test_the_loop_runs_unchanged_on_a_replayed_world(world, tmp_path: Path):
    _, records, replay = world
    with contextlib.redirect_stdout(io.StringIO()):
        run_loop(LoopConfig(run_dir=tmp_path, profile="smoke", policy="greedy", budget=60.0,
                            stop=StopConditions(iterations=12)),
                 environment=replay)
    with Ledger(tmp_path, readonly=True) as ledger:
        rows = ledger.records()
    assert len(rows) == 12 and rows[0].val_bpb == records[0]["val_bpb"]  # the noise floor's first run is recorded
    assert {r.status for r in rows} <= {"ok", "pruned", "crash", "timeout", "rejected"}
