"""The synthetic family: held-out members, coupled knobs, crossing curves, optima off the catalog's lattice."""

from pathlib import Path

import numpy as np
import pytest

from kit import edits
from kit.bench import family
from kit.bench.family import FamilyConfig, SyntheticFamily
from kit.results import HarnessConfig, Status

MEMBERS = range(8)  # development members only: the benchmark's members are never used here


def _world(baseline_source: str, member: int) -> SyntheticFamily:
    assert member in family.DEVELOPMENT
    return SyntheticFamily(baseline_source, FamilyConfig(member=member))


def _run(world, source: str, seed: int = 0, monitor=None):
    return world(source, Path("unused"), HarnessConfig(seed=seed), monitor=monitor)


def test_the_benchmarks_members_are_never_development_members():
    assert all(family.held_out_member(seed) not in family.DEVELOPMENT for seed in range(1000))
    assert len({family.held_out_member(seed) for seed in range(50)}) == 50


def test_members_differ_and_each_is_deterministic(baseline_source):
    worlds = [_world(baseline_source, m) for m in MEMBERS]
    assert len({tuple(w.names) for w in worlds}) > 1 and len({round(w.optimum, 6) for w in worlds}) == len(worlds)
    again = _world(baseline_source, 3)
    assert _run(again, baseline_source, seed=5) == _run(worlds[3], baseline_source, seed=5)
    runs = [_run(worlds[3], baseline_source, seed=s).val_bpb for s in range(40)]
    assert np.std(runs) == pytest.approx(worlds[3].noise, rel=0.35)  # cpu-like seed noise
    assert 0.01 < worlds[3].noise < 0.04


def test_the_optimum_is_well_below_anything_one_catalog_edit_reaches(baseline_source):
    catalog = edits.build_catalog(baseline_source)
    closed = []
    for member in MEMBERS:
        world = _world(baseline_source, member)
        baseline = world.expected_bpb(baseline_source)
        neighbours = [world.expected_bpb(edits.apply_edit(baseline_source, e)) for e in catalog
                      if edits.edit_mask(baseline_source, [e])[0]]
        best_config = world.expected_bpb(edits.set_values(baseline_source, world.optimum_values))
        assert best_config == pytest.approx(world.optimum, abs=0.01)
        closed.append((baseline - min(neighbours)) / (baseline - world.optimum))
    # the best single edit closes part of the gap; the rest needs several knobs moved together
    assert max(closed) < 0.9 and np.median(closed) < 0.6, closed


def test_the_best_learning_rate_moves_with_the_batch_size(baseline_source):
    world = _world(baseline_source, 1)
    lrs = np.geomspace(0.003, 0.1, 60)

    def best_lr(batch: int) -> float:
        values = dict(world.optimum_values, BATCH_SIZE=batch)
        return float(lrs[np.argmin([world.expected_bpb(edits.set_values(baseline_source, dict(values, MATRIX_LR=lr)))
                                    for lr in lrs])])

    assert best_lr(4) != best_lr(64)


def test_curves_cross_and_big_models_report_few_points(baseline_source):
    world = _world(baseline_source, 2)
    catalog = edits.build_catalog(baseline_source)
    runs = [_run(world, edits.apply_edit(baseline_source, e)) for e in catalog
            if edits.edit_mask(baseline_source, [e])[0]]
    runs = [r for r in runs if r.status is Status.OK and len(r.curve) >= 10]
    early = {i: r.curve[len(r.curve) // 5][1] for i, r in enumerate(runs)}
    crossed = sum(1 for i in early for j in early
                  if early[i] < early[j] and runs[i].val_bpb > runs[j].val_bpb + 0.02)
    assert crossed > 0  # a run that leads at a fifth of the budget can end behind
    big = _run(world, edits.set_values(baseline_source, {"DEPTH": 12, "MODEL_DIM": 512}))
    assert 2 <= len(big.curve) < 5 < len(_run(world, baseline_source).curve)


def test_learning_rates_diverge_and_a_monitor_prunes(baseline_source):
    world = _world(baseline_source, 0)
    assert _run(world, edits.set_values(baseline_source, {"MATRIX_LR": 0.2})).status is Status.CRASH
    pruned = _run(world, baseline_source, monitor=lambda curve: "stop" if len(curve) >= 5 else None)
    assert pruned.status is Status.PRUNED and len(pruned.curve) == 5
    rejected = _run(world, baseline_source + "\nimport os\nos.system('true')\n")
    assert rejected.status is Status.REJECTED
