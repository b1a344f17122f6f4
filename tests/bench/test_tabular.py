"""The tabular world: proposals snapped to recorded cells, pooled seed noise, recorded failures, anchors' drift."""

from pathlib import Path

import numpy as np
import pytest

from kit import edits
from kit.bench import agents
from kit.bench.tabular import TabularEnvironment
from kit.results import HarnessConfig, Status


def _record(baseline: str, changed: dict, val_bpb, seed: int, kind: str = "lattice", status: str = "ok",
            steps: int = 100) -> dict:
    config = {k.name: changed.get(k.name, k.value) for k in edits.knobs(baseline)}
    curve = [[0.6 * i, 3.0 - 0.005 * i] for i in range(1, steps + 1)]
    return {"kind": kind, "config": config, "changed": changed, "seed": seed, "status": status, "val_bpb": val_bpb,
            "reason": "" if status == "ok" else "loss became NaN", "budget": 60.0, "training_seconds": 60.0,
            "total_seconds": 66.0, "num_steps": steps, "curve": curve, "others_cpu_share": 0.0}


@pytest.fixture(scope="module")
def records(baseline_source):
    b = baseline_source
    return [
        _record(b, {}, 2.50, 1, "anchor"), _record(b, {}, 2.52, 2, "anchor"), _record(b, {}, 2.51, 1, "anchor",
                                                                                        steps=110),
        _record(b, {"MATRIX_LR": 0.04}, 2.44, 1), _record(b, {"MATRIX_LR": 0.04}, 2.46, 2),
        _record(b, {"MATRIX_LR": 0.2}, None, 1, status="crash"), _record(b, {"MATRIX_LR": 0.2}, None, 2,
                                                                         status="crash"),
        _record(b, {"DEPTH": 8}, 2.60, 1),  # one replicate only: not a cell
        {**_record(b, {"DEPTH": 2}, 2.40, 1), "others_cpu_share": 0.2}, _record(b, {"DEPTH": 2}, 2.41, 2),
    ]


def test_cells_are_configs_recorded_alone_at_least_twice(baseline_source, records):
    world = TabularEnvironment(baseline_source, records, min_cells=3)
    assert len(world.cells) == 3  # the baseline, MATRIX_LR 0.04 and 0.2; DEPTH 8 once, DEPTH 2 once alone
    assert world.expected_bpb(baseline_source) == pytest.approx(2.51)
    # pooled within-cell sd: deviations from each cell's own mean over the degrees of freedom left
    deviations = [-0.01, 0.01, 0.0, -0.01, 0.01]
    assert world.noise_sd == pytest.approx(np.sqrt(np.sum(np.square(deviations)) / 3))
    assert world.drift() == pytest.approx(0.1) and "3 baseline anchors" in world.describe()


def test_any_train_py_snaps_to_the_nearest_cell(baseline_source, records):
    world = TabularEnvironment(baseline_source, records, min_cells=3)
    near = edits.set_values(baseline_source, {"MATRIX_LR": 0.035, "WEIGHT_DECAY": 0.12})  # never recorded
    assert world.expected_bpb(near) == pytest.approx(2.45)
    far = edits.set_values(baseline_source, {"DEPTH": 16, "MODEL_DIM": 1024})  # no extrapolation: a recorded cell
    assert world.expected_bpb(far) in {c.worth for c in world.cells}


def test_runs_are_the_cells_worth_plus_fresh_noise_per_seed(baseline_source, records):
    world = TabularEnvironment(baseline_source, records, min_cells=3)
    source = edits.set_values(baseline_source, {"MATRIX_LR": 0.04})
    runs = [world(source, Path("unused"), HarnessConfig(seed=s)) for s in range(200)]
    assert runs[3] == world(source, Path("unused"), HarnessConfig(seed=3))  # deterministic per seed
    values = [r.val_bpb for r in runs]
    assert np.mean(values) == pytest.approx(2.45, abs=0.003) and np.std(values) == pytest.approx(world.noise_sd,
                                                                                                   rel=0.2)
    assert all(r.status is Status.OK and r.curve[-1][1] != 3.0 - 0.5 for r in runs[:3])  # the curve moved to end there
    crashed = world(edits.set_values(baseline_source, {"MATRIX_LR": 0.19}), Path("unused"), HarnessConfig(seed=0))
    assert crashed.status is Status.CRASH and "recorded cell" in crashed.reason
    pruned = world(source, Path("unused"), HarnessConfig(seed=0), monitor=lambda c: "stop" if len(c) == 7 else None)
    assert pruned.status is Status.PRUNED and len(pruned.curve) == 7


def test_a_world_without_a_twice_recorded_baseline_is_refused(baseline_source, records):
    with pytest.raises(ValueError, match="--design"):
        TabularEnvironment(baseline_source, records[3:], min_cells=1)
    with pytest.raises(ValueError, match="needs 20 cells .* has 3"):  # too few cells to judge a search
        TabularEnvironment(baseline_source, records)


def test_the_loop_runs_on_it(baseline_source, records, tmp_path: Path):
    world = TabularEnvironment(baseline_source, records, min_cells=3)
    t = agents.run_one("random", 0, world, 6, world.budget, tmp_path)
    assert len(t.best) == 6 and t.baseline_worth == pytest.approx(2.51)
    assert t.kept in {c.worth for c in world.cells}


def test_the_agents_benchmark_runs_on_a_recorded_design(baseline_source, records, tmp_path: Path):
    import gzip
    import json

    from kit.cli import main

    rates = np.geomspace(0.005, 0.08, 20)
    design = records[:3] + [_record(baseline_source, {"MATRIX_LR": float(lr)}, 2.40 + 2 * abs(np.log(lr / 0.03)) / 10
                                    + 0.01 * seed, seed) for lr in rates for seed in (1, 2)]
    path = tmp_path / "design.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in design)
    out = tmp_path / "agents.md"
    assert main(["bench", "agents", "--environment", "tabular", "--design", str(path), "--policies", "random,greedy",
                 "--seeds", "2", "--experiments", "3", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    text = out.read_text()
    assert "tabular: 21 recorded cells" in text and "surrogate, fitted to this design" in text
    assert sum(line.startswith("| random |") for line in text.splitlines()) == 2
