"""The early-stopping replay: its accounting on runs whose outcome is known, Optuna's pruners on the same runs,
and the report."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kit import predictor, stopping_bench
from kit.harness import REPO_ROOT

BUDGET = 60.0


def record(index: int, c: float, val_bpb: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    u = np.linspace(0.005, 1.0, 120)
    loss = 0.8 * u ** -0.5 + c + rng.normal(0, 0.02, len(u))
    return {"index": index, "kind": "walk", "status": "ok", "val_bpb": val_bpb, "budget": BUDGET,
            "curve": [[float(t), float(y)] for t, y in zip(u * BUDGET, loss, strict=True)],
            "total_seconds": 70.0, "training_seconds": BUDGET, "timings": {"first_progress": 5.0},
            "profile": "cpu", "device": "cpu"}


def dataset(n: int = 12) -> list[dict]:
    # val_bpb in proportion to the final loss (0.8 + c), as the rules assume when they map a forecast to val_bpb
    return [record(i, 1.0 + 0.05 * i, 1.4 * (1.8 + 0.05 * i), i) for i in range(n)]


class StopAtFirstCheck(predictor.Rule):
    config = predictor.CheckConfig(interval=0.5, min_progress=0.1)

    def _decide(self, u, y, incumbent):
        return predictor.Decision(True, None, "always")


def test_no_stopping_costs_everything_and_loses_nothing():
    runs = stopping_bench.load_runs(dataset())
    order = np.arange(len(runs))[::-1]  # worst first: every run is a new best
    out = stopping_bench.replay_rule(runs, order, lambda: stopping_bench._NeverStop(BUDGET))
    assert out.spent_training == out.full_training and out.stopped == 0
    assert out.would_be_best == len(runs) - 1 and out.false_prunes == 0
    assert out.best == min(r.val_bpb for r in runs)


def test_stopping_everything_is_counted_as_it_happens():
    runs = stopping_bench.load_runs(dataset(4))
    order = np.array([3, 2, 1, 0])  # each later run would be the new best
    out = stopping_bench.replay_rule(runs, order, lambda: StopAtFirstCheck(BUDGET))
    assert out.compared == 3 and out.stopped == 3 and out.false_prunes == 3 and out.would_be_best == 3
    first_check = runs[0].curve[next(i for i, (t, _) in enumerate(runs[0].curve) if t / BUDGET >= 0.1)][0]
    assert out.spent_training == pytest.approx(BUDGET + 3 * first_check)
    assert out.spent_wall == pytest.approx(70.0 + 3 * (5.0 + first_check))  # a stopped run: start-up + its training, no evaluation
    assert out.best == runs[3].val_bpb  # the incumbent never changed
    summary = stopping_bench.summarize("all", "-", [out], [runs[0].val_bpb], 0.0)
    assert summary.false_prune_rate == 1.0 and summary.regret == runs[3].val_bpb - runs[0].val_bpb


def test_kit_rules_and_optuna_pruners_replay_the_same_orders(tmp_path: Path):
    records = dataset(16)
    runs = stopping_bench.load_runs(records)
    summaries = stopping_bench.run_benchmark(runs, orders=3, log=lambda line: None)
    names = {s.name for s in summaries}
    assert {"no stopping", "power-law, equal progress", "optuna median", "optuna wilcoxon",
            "optuna hyperband"} <= names
    none = summaries[0]
    assert none.throughput_training == 1.0 and none.false_prune_rate == 0.0 and none.regret == 0.0
    for s in summaries:
        assert s.throughput_training >= 1.0 and 0 <= s.false_prune_rate <= 1 and s.regret >= 0
    # these curves are well separated: the equal-progress power law stops most runs and loses no new best
    power = next(s for s in summaries if s.name == "power-law, equal progress" and s.setting == "z=2")
    assert power.stopped_share > 0.5 and power.false_prune_rate == 0.0
    assert power.forecast_mae[0.5] < 0.05
    out = stopping_bench.write_report(summaries, runs, records, 3, tmp_path / "early_stopping.md", "test", "cmd")
    text = out.read_text()
    assert text.count("\n| ") >= len(summaries) + 2 and (tmp_path / "early_stopping.png").stat().st_size > 0


def test_cli_says_what_to_do_without_curves(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "kit", "bench", "early-stopping", "--curves",
                           str(tmp_path / "none.jsonl.gz")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "python -m kit bench record" in done.stderr
