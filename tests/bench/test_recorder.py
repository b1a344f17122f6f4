"""The recorded-curves dataset: what gets recorded, and that a killed recording loses nothing it finished."""

import gzip
import json
from pathlib import Path

import pytest

from kit import REPO_ROOT, edits, gate
from kit.bench import recorder


def test_plans_are_reproducible_valid_and_mixed(baseline_source):
    plans = [recorder.plan_run(i, baseline_source, 1337) for i in range(60)]
    assert plans == [recorder.plan_run(i, baseline_source, 1337) for i in range(60)]  # a resume continues the same
    assert plans[0] == recorder.Plan("baseline", "baseline", {}, 1337)
    assert {p.kind for p in plans} == set(recorder.KIND_SHARES)
    assert recorder.plan_run(5, baseline_source, 1337, seed=1) != plans[5]
    for plan in plans:
        source = edits.set_values(baseline_source, plan.values)
        assert gate.check_source(source).ok, plan
        if plan.kind == "baseline":
            assert plan.values == {} and (plan.seed != 1337 or plan is plans[0])
        else:
            assert plan.values and plan.seed == 1337  # edits run with the frozen seed, as the loop's do


def _row(i: int) -> dict:
    return {"index": i, "curve": [[0.5, 3.0], [1.0, 2.5]], "status": "ok"}


def test_dataset_appends_and_survives_a_torn_last_record(tmp_path: Path):
    path = tmp_path / "curves.jsonl.gz"
    assert recorder.read_dataset(path) == []
    for i in range(3):
        recorder._append(path, _row(i))
    assert [r["index"] for r in recorder.read_dataset(path)] == [0, 1, 2]
    with gzip.open(path) as f:  # an ordinary gzip reader sees one JSON line per run
        assert [json.loads(line)["index"] for line in f] == [0, 1, 2]
    whole = path.read_bytes()
    path.write_bytes(whole + gzip.compress(json.dumps(_row(3)).encode())[:-7])  # killed while writing run 3
    assert [r["index"] for r in recorder.read_dataset(path)] == [0, 1, 2]
    recorder._append(path, _row(3))  # the torn member is cut off, not built upon
    assert [r["index"] for r in recorder.read_dataset(path)] == [0, 1, 2, 3]
    assert path.read_bytes().startswith(whole)


@pytest.mark.slow
def test_record_runs_full_experiments_and_resumes(tmp_path: Path, smoke_data):
    out = tmp_path / "curves-smoke.jsonl.gz"
    first = recorder.record(out, 2, profile="smoke", budget=2.0, work_dir=tmp_path / "work", log=lambda line: None)
    assert [r["index"] for r in first] == [0, 1]
    assert first[0]["kind"] == "baseline" and first[0]["changed"] == {}
    for r in first:
        assert r["status"] in ("ok", "crash", "timeout")
        assert r["budget"] == 2.0 and r["profile"] == "smoke" and r["others_cpu_share"] == r["timings"]["others_share"]
        assert set(r["config"]) == {k.name for k in edits.knobs((REPO_ROOT / "train.py").read_text())}
        if r["status"] == "ok":
            assert r["val_bpb"] > 0 and len(r["curve"]) >= 1
    assert not any((tmp_path / "work").rglob("model.pt2"))  # hand-off files are not kept
    again = recorder.record(out, 3, profile="smoke", budget=2.0, work_dir=tmp_path / "work", log=lambda line: None)
    shared = [r["index"] for r in first if not recorder.ran_alone(r)]  # a busy machine may share any run
    assert again[:2] == first and [r["index"] for r in again[2:]] == [*shared, 2]  # only those and the new one run
    # index 3 recorded while other work shared the machine (the runs before it made alone, whatever this machine did)
    resumed = tmp_path / "resumed.jsonl.gz"
    alone = [{**r, "others_cpu_share": 0.0} for r in [*first, again[-1]]]
    for row in [*alone, {**again[-1], "index": 3, "others_cpu_share": 0.5}]:
        recorder._append(resumed, row)
    last = recorder.record(resumed, 4, profile="smoke", budget=2.0, work_dir=tmp_path / "work", log=lambda _: None)
    assert [r["index"] for r in last] == [0, 1, 2, 3, 3]  # run again; the shared one is kept
    assert last[3]["others_cpu_share"] == 0.5


def test_a_design_records_whole_cells_under_shared_seeds_inside_its_box(baseline_source):
    count = 2 * (recorder.ANCHOR_EVERY + 1)
    plans = [recorder.plan_design(i, baseline_source, 1337) for i in range(count)]
    assert plans == [recorder.plan_design(i, baseline_source, 1337) for i in range(count)]  # a resume continues
    cells = plans[::2]
    assert [p.kind for p in cells] == ["anchor", *["lattice", "sobol"] * 3, "lattice", "anchor"]
    assert cells[0].values == {} == cells[recorder.ANCHOR_EVERY].values  # the baseline again, to see drift
    seeds = [recorder.design_seed(1337, r) for r in range(recorder.DESIGN_SEEDS)]
    for cell in range(0, count, recorder.DESIGN_SEEDS):  # a cell's replicates: the same values, the shared seeds
        assert [p.values for p in plans[cell:cell + 2]] == [plans[cell].values] * 2
        assert [p.seed for p in plans[cell:cell + 2]] == seeds and 1337 not in seeds
    walks = [p for i in range(1, 40) if (p := recorder.plan_run(i, baseline_source, 1337)).kind == "walk"]
    assert cells[1].values == walks[0].values and cells[3].values == walks[1].values  # the catalog's walks
    knobs = {k.name: k for k in edits.knobs(baseline_source)}
    for plan in plans:
        assert gate.check_source(edits.set_values(baseline_source, plan.values)).ok, plan
        if plan.kind == "sobol":
            assert len(plan.values) > len(knobs) / 2  # a whole config, not one edit
            for name, value in plan.values.items():
                if knobs[name].choices is None:
                    low, high = recorder.design_box(knobs[name])
                    assert low <= value <= high, (name, value)
    assert recorder.design_box(knobs["MATRIX_LR"]) == pytest.approx((0.02 / 3, 0.06))
