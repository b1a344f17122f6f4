"""The early-stopping replay: its accounting on runs whose outcome is known, Optuna's pruners on the same runs,
and the report."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kit import REPO_ROOT, predictor
from kit.bench import early_stopping

BUDGET = 60.0


def record(index: int, c: float, val_bpb: float, seed: int, kind: str = "walk") -> dict:
    rng = np.random.default_rng(seed)
    u = np.linspace(0.005, 1.0, 120)
    loss = 0.8 * u ** -0.5 + c + rng.normal(0, 0.02, len(u))
    return {"index": index, "kind": kind, "status": "ok", "val_bpb": val_bpb, "budget": BUDGET,
            "curve": [[float(t), float(y)] for t, y in zip(u * BUDGET, loss, strict=True)],
            "total_seconds": 70.0, "training_seconds": BUDGET, "timings": {"first_progress": 5.0},
            "profile": "cpu", "device": "cpu"}


def dataset(n: int = 12, step: float = 0.05) -> list[dict]:
    """n edited runs, each `step` of loss (1.4 × step of val_bpb) apart, and three baseline runs worse than all of
    them whose val_bpb spread makes a noise margin of 0.02 (val_bpb in proportion to the final loss, as the rules
    assume when they map a forecast to val_bpb)."""
    edited = [record(i, 1.0 + step * i, 1.4 * (1.8 + step * i), i) for i in range(n)]
    worst = 1.0 + step * n
    baselines = [record(100 + j, worst, 1.4 * (0.8 + worst) + d, 100 + j, "baseline")
                 for j, d in enumerate((0.0, 0.01, -0.01))]
    return baselines + edited


def stream(records: list[dict]) -> early_stopping.Stream:
    return early_stopping.Stream.of(early_stopping.load_runs(records))


class StopAtFirstCheck(predictor.Rule):
    config = predictor.CheckConfig(interval=0.5, min_progress=0.1)

    def _decide(self, u, y, incumbent):
        return predictor.Decision(True, None, "always")


def test_the_noise_margin_is_the_loops_two_baseline_deviations():
    assert stream(dataset()).margin == pytest.approx(0.02)
    with pytest.raises(ValueError, match="2 baseline runs"):
        stream(dataset()[2:])
    with pytest.raises(ValueError, match="noise-sigmas"):
        early_stopping.Stream.of(early_stopping.load_runs(dataset()), noise_sigmas=-1)


def test_no_stopping_costs_everything_and_loses_nothing():
    s = stream(dataset())
    order = early_stopping.Order(0, np.arange(len(s.candidates))[::-1])  # worst first: every run is kept
    out = early_stopping.replay_rule(s, order, lambda: early_stopping._NeverStop(BUDGET))
    assert out.spent_training == out.full_training and out.stopped == 0
    assert out.would_be_kept == len(s.candidates) and out.false_prunes == 0
    assert out.best == min(r.val_bpb for r in s.candidates)


def test_stopping_everything_is_counted_as_it_happens():
    s = stream(dataset(4))
    order = early_stopping.Order(0, np.array([3, 2, 1, 0]))  # each later run would be kept
    out = early_stopping.replay_rule(s, order, lambda: StopAtFirstCheck(BUDGET))
    assert out.compared == 4 and out.stopped == 4 and out.false_prunes == 4 and out.would_be_kept == 4
    curve = s.candidates[0].curve
    first_check = curve[next(i for i, (t, _) in enumerate(curve) if t / BUDGET >= 0.1)][0]
    assert out.spent_training == pytest.approx(4 * first_check)
    assert out.spent_wall == pytest.approx(4 * (5.0 + first_check))  # start-up + its training, no evaluation
    assert out.best == s.starts[0].val_bpb  # the incumbent never changed
    summary = early_stopping.summarize("all", "-", [out], [s.candidates[0].val_bpb], 0.0)
    assert summary.false_prune_rate == 1.0 and summary.regret == s.starts[0].val_bpb - s.candidates[0].val_bpb


def test_a_gain_inside_the_noise_margin_is_not_kept_so_stopping_it_is_no_false_prune():
    s = stream(dataset(4, step=0.01))  # 0.014 val_bpb apart, less than the 0.02 margin
    order = early_stopping.Order(1, np.array([3, 2, 1, 0]))  # the 0.01-worse baseline: only run 3 clears it
    kept = early_stopping.replay_rule(s, order, lambda: early_stopping._NeverStop(BUDGET))
    assert kept.would_gain == 4 and kept.would_be_kept == 2  # run 3, then run 1 (two steps below run 3)
    # with everything stopped the incumbent stays the baseline, which every run clears by the margin
    stopped = early_stopping.replay_rule(s, order, lambda: StopAtFirstCheck(BUDGET))
    assert stopped.stopped_gains == stopped.would_gain == 4 and stopped.false_prunes == stopped.would_be_kept == 4


def test_kit_rules_and_optuna_pruners_replay_the_same_orders(tmp_path: Path):
    records = dataset(16)
    s = stream(records)
    summaries = early_stopping.run_benchmark(s, orders=3, log=lambda line: None)
    names = {x.name for x in summaries}
    assert {"no stopping", "power-law, equal progress", "optuna median", "optuna wilcoxon",
            "optuna hyperband"} <= names
    none = summaries[0]
    assert none.throughput_training == 1.0 and none.false_prune_rate == 0.0 and none.regret == 0.0
    for x in summaries:
        assert x.throughput_training >= 1.0 and 0 <= x.false_prune_rate <= 1
    # these curves are well separated: the equal-progress power law stops most runs and loses no kept run
    power = next(x for x in summaries if x.name == "power-law, equal progress" and x.setting == "z=2")
    assert power.stopped_share > 0.5 and power.false_prune_rate == 0.0 and power.regret == 0.0
    assert power.forecast_mae[0.5] < 0.05
    out = early_stopping.write_report(summaries, s, records, 3, tmp_path / "early_stopping.md", "test", "cmd")
    text = out.read_text()
    assert text.count("\n| ") >= len(summaries) + 2 and (tmp_path / "early_stopping.png").stat().st_size > 0


def test_cli_says_what_to_do_without_curves(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "kit", "bench", "early-stopping", "--curves",
                           str(tmp_path / "none.jsonl.gz")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "python -m kit bench record" in done.stderr
