"""Forecasts and stop rules on curves whose truth is known, and one live run pruned through the harness."""

from pathlib import Path

import numpy as np
import pytest

from kit import REPO_ROOT
from kit.harness import run_experiment
from kit.predictor import (
    EarlyStopper,
    PowerLawConfig,
    Reference,
    fit_power_law,
    make_rule,
)
from kit.results import HarnessConfig, Status

BUDGET = 60.0


def power_law_curve(a, b, c, noise, seed, points=200, budget=BUDGET, warmdown=0.0):
    """(t, loss) points of a·u^-b + c with Gaussian noise; warmdown subtracts a drop that grows linearly over the
    last 40 % of the budget (what a learning-rate decay does to a real curve)."""
    rng = np.random.default_rng(seed)
    u = np.linspace(1 / points, 1.0, points)
    loss = a * u ** -b + c + rng.normal(0, noise, points) - warmdown * np.clip((u - 0.6) / 0.4, 0, 1)
    return [(float(x * budget), float(y)) for x, y in zip(u, loss, strict=True)]


def run_rule(rule, curve, incumbent):
    stopper = EarlyStopper(rule, incumbent)
    growing = []
    for point in curve:
        growing.append(point)
        if stopper(growing):
            return point[0] / BUDGET, stopper
    return None, stopper


@pytest.mark.parametrize("a,b,c", [(0.8, 0.5, 1.2), (2.0, 0.3, 0.5), (0.3, 1.0, 2.5)])
def test_fit_recovers_known_power_laws(a, b, c):
    errors = []
    for seed in range(10):
        u, y = np.array(power_law_curve(a, b, c, 0.02, seed)).T
        fit = fit_power_law(u / BUDGET, y)
        errors.append((abs(fit.a - a) / a, abs(fit.b - b) / b, abs(fit.c - c)))
        assert abs(fit.sigma - 0.02) < 0.005  # the residual spread is the noise put in
    rel_a, rel_b, abs_c = np.median(errors, axis=0)
    assert rel_a < 0.05 and rel_b < 0.05 and abs_c < 0.03, errors


def test_forecast_from_half_a_curve_lands_near_the_end():
    for seed in range(10):
        t, y = np.array(power_law_curve(0.8, 0.5, 1.2, 0.02, seed)).T
        u = t / BUDGET
        half = u <= 0.5
        fit = fit_power_law(u[half], y[half])
        assert abs(fit(1.0) - 2.0) < 0.05
        assert fit.stderr(1.0) < 0.05


def test_fit_needs_enough_points_and_respects_the_signs():
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law(np.array([0.1, 0.2, 0.3]), np.array([3.0, 2.5, 2.2]))
    rising = fit_power_law(np.linspace(0.1, 1, 20), np.linspace(2, 3, 20))  # no decreasing law fits: a flat one
    assert rising.a >= 0 and rising.b >= 0 and rising.c >= 0


def test_a_run_that_ends_below_the_incumbent_is_never_stopped():
    # The incumbent learns fast and plateaus high; the challenger starts worse and ends lower (they cross at ~50 %).
    # Both have a warm-down the fits cannot see.
    rule = make_rule("power-law", BUDGET)
    for seed in range(10):
        incumbent_curve = power_law_curve(0.4, 0.5, 1.6, 0.03, seed, warmdown=0.1)
        incumbent = Reference(tuple(incumbent_curve), 2.70, BUDGET)
        challenger = power_law_curve(0.9, 0.5, 0.9, 0.03, seed + 100, warmdown=0.1)
        assert np.mean([y for t, y in challenger[-10:]]) < incumbent.final_loss
        stopped_at, stopper = run_rule(rule, challenger, incumbent)
        assert stopped_at is None, [d.reason for d in stopper.decisions]
        assert len(stopper.decisions) == 9  # every 10 % from 10 % to 90 %


def test_a_clearly_worse_run_is_stopped_early_and_its_forecast_is_close():
    rule = make_rule("power-law", BUDGET)
    incumbent = Reference(tuple(power_law_curve(0.8, 0.5, 1.2, 0.03, 0, warmdown=0.1)), 2.60, BUDGET)
    worse = power_law_curve(0.8, 0.5, 1.6, 0.03, 1, warmdown=0.1)
    stopped_at, stopper = run_rule(rule, worse, incumbent)
    assert stopped_at is not None and stopped_at <= 0.3
    # the forecast in val_bpb: the incumbent's ratio val_bpb / final loss applied to the forecast loss
    final_worse = np.mean([y for t, y in worse if t >= 0.95 * BUDGET])
    truth = 2.60 * final_worse / incumbent.final_loss
    assert abs(stopper.decisions[-1].predicted - truth) / truth < 0.04


def test_equal_progress_cancels_the_warm_down_the_paper_rule_misses():
    # Same law, same warm-down: the same run again. The paper's rule compares its forecast (blind to the warm-down)
    # with the incumbent's actual end and wrongly stops it; the equal-progress rule does not.
    incumbent = Reference(tuple(power_law_curve(0.8, 0.5, 1.2, 0.01, 0, warmdown=0.3)), 2.60, BUDGET)
    same = power_law_curve(0.8, 0.5, 1.2, 0.01, 1, warmdown=0.3)
    paper = make_rule("power-law", BUDGET, equal_progress=False)
    assert run_rule(paper, same, incumbent)[0] is not None
    assert run_rule(make_rule("power-law", BUDGET), same, incumbent)[0] is None


def test_linear_and_same_progress_rules():
    incumbent = Reference(tuple(power_law_curve(0.8, 0.5, 1.2, 0.02, 0)), 2.6, BUDGET)
    much_worse = power_law_curve(0.8, 0.5, 2.2, 0.02, 1)
    for name in ("linear", "same-progress"):
        stopped_at, stopper = run_rule(make_rule(name, BUDGET), much_worse, incumbent)
        assert stopped_at is not None, name
        assert run_rule(make_rule(name, BUDGET), list(incumbent.curve), incumbent)[0] is None, name
    # the linear rule needs `window` checks before it says anything
    stopped_at, stopper = run_rule(make_rule("linear", BUDGET, window=5), much_worse, incumbent)
    assert stopped_at >= 0.3
    assert all(d.predicted is None for d in stopper.decisions[:4]) and stopper.decisions[4].predicted is not None


def test_a_run_that_logs_few_points_can_still_be_stopped():
    # a config so slow that it logs one point per tenth of the budget: a 5 % window would hold one point at most,
    # whose standard error is infinite, and the run could never be stopped however bad it is
    incumbent = Reference(tuple(power_law_curve(0.8, 0.5, 1.2, 0.02, 0)), 2.6, BUDGET)
    slow_and_worse = power_law_curve(0.8, 0.5, 2.2, 0.02, 1, points=10)
    slow_and_as_good = power_law_curve(0.8, 0.5, 1.2, 0.02, 2, points=10)
    for name in ("same-progress", "linear", "power-law"):
        assert run_rule(make_rule(name, BUDGET), slow_and_worse, incumbent)[0] is not None, name
        assert run_rule(make_rule(name, BUDGET), slow_and_as_good, incumbent)[0] is None, name


def test_stopper_asks_at_its_check_points_and_never_without_an_incumbent():
    rule = make_rule("same-progress", BUDGET, interval=0.25, min_progress=0.2)
    curve = power_law_curve(0.8, 0.5, 1.2, 0.02, 0)
    _, stopper = run_rule(rule, curve, Reference(tuple(curve), 2.6, BUDGET))
    assert [round(d.progress, 2) for d in stopper.decisions] == [0.2, 0.45, 0.7, 0.95]
    _, lonely = run_rule(rule, curve, None)
    assert lonely.decisions == [] and lonely.last_prediction is None
    with pytest.raises(ValueError, match="unknown stop rule"):
        make_rule("oracle", BUDGET)
    with pytest.raises(ValueError, match="interval"):
        PowerLawConfig(interval=0)


@pytest.mark.slow
def test_live_run_is_pruned_when_clearly_worse_and_not_when_best(tmp_path: Path, smoke_data):
    """Through the real harness, with references no real run can come near (so a busy machine changes nothing but
    when): a run far behind its incumbent is stopped as soon as the rule has enough points, one far ahead runs to
    the end."""
    baseline = (REPO_ROOT / "train.py").read_text()
    config = HarnessConfig(profile="smoke", budget=4.0)
    rule = make_rule("power-law", 4.0)
    points = [(4.0 * i / 40, loss) for i, loss in enumerate(np.linspace(0.02, 0.01, 41))]
    unbeatable = Reference(tuple(points), 0.01, 4.0)
    pruned = run_experiment(baseline, tmp_path / "behind", config, monitor=EarlyStopper(rule, unbeatable))
    assert pruned.status is Status.PRUNED, pruned.reason
    assert pruned.val_bpb is None and pruned.reason.startswith("early stop at ")
    assert pruned.training_seconds < 4.0 and not (tmp_path / "behind" / "model.pt2").exists()

    hopeless = Reference(tuple((t, loss + 50.0) for t, loss in points), 60.0, 4.0)
    best = EarlyStopper(rule, hopeless)
    result = run_experiment(baseline, tmp_path / "ahead", config, monitor=best)
    assert result.status is Status.OK, result.reason
    assert best.decisions and not any(d.stop for d in best.decisions)


def test_calibrated_rule_learns_from_finished_runs_before_it_stops_anything():
    rule = make_rule("calibrated", BUDGET, min_history=6)
    incumbent = Reference(tuple(power_law_curve(0.8, 0.5, 1.2, 0.02, 0)), 1.4 * 2.0, BUDGET)
    worse = power_law_curve(0.8, 0.5, 1.6, 0.02, 1)
    assert run_rule(rule, worse, incumbent)[0] is None  # nothing learned yet: it never stops
    for i in range(6):  # finished runs whose val_bpb follows their final loss, as real ones do
        c = 1.0 + 0.1 * i
        rule.learn(Reference(tuple(power_law_curve(0.8, 0.5, c, 0.02, 10 + i)), 1.4 * (0.8 + c), BUDGET))
    stopped_at, stopper = run_rule(rule, worse, incumbent)
    assert stopped_at == pytest.approx(0.1, abs=0.01)
    assert stopper.decisions[0].predicted == pytest.approx(1.4 * 2.4, rel=0.03)
    better = power_law_curve(0.8, 0.5, 1.1, 0.02, 2)
    assert run_rule(rule, better, incumbent)[0] is None
