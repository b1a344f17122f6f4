"""kit.reward: the progress reward pays only kept gains and charges compute; the source's composite, each term as
the formula says; penalties under both; no NaN in the total."""

import math

import pytest

from kit.results import Status
from kit.reward import REWARDS, Reward, RewardConfig, compute_reward, efficiency_score, stability_score

# ten points; the last two (20% of 10) have losses 2.0 and 2.2: population variance 0.01
CURVE = [(float(t), 4.0 - 0.2 * t) for t in range(8)] + [(8.0, 2.0), (9.0, 2.2)]
COMPOSITE = RewardConfig(kind="composite")


def composite(*args, **kwargs):
    """compute_reward under the source's composite reward."""
    return compute_reward(*args, **{"config": COMPOSITE, **kwargs})


# progress: what the loop keeps is what counts ---------------------------------------------------------------------


def test_progress_pays_a_kept_run_its_confirmed_gain_and_every_run_its_compute():
    kept = compute_reward("ok", 0.9, 1.0, 45.0, 60.0, CURVE, gain=math.log(1.0 / 0.95))
    assert kept.parts == pytest.approx({"progress": 100 * math.log(1.0 / 0.95), "compute": -0.01 * 45 / 60})
    # better than the incumbent but not kept (not clear of the noise): no gain, whatever its own value says
    assert compute_reward("ok", 0.9, 1.0, 45.0, 60.0, CURVE).parts == pytest.approx({"compute": -0.0075})
    assert compute_reward("ok", 0.9, 1.0, 90.0, 60.0, CURVE).parts == pytest.approx({"compute": -0.015})


def test_under_progress_no_run_the_loop_did_not_keep_earns_more_than_nothing():
    # the composite pays a fast, stable, worse run, and a bad one for being stopped; progress pays neither
    for status, seconds in (("ok", 10.0), ("ok", 60.0), ("pruned", 5.0), ("pruned", 30.0)):
        for value in (0.5, 1.0, 1.5):
            assert compute_reward(status, value, 1.0, seconds, 60.0, CURVE, predicted=value).total <= 0
            assert compute_reward(status, value, 1.0, seconds, 60.0, CURVE, predicted=value, rerun=True).total <= 0
    assert composite("ok", 1.05, 1.0, 10.0, 60.0, CURVE).total > 0
    assert composite("pruned", None, 1.0, 5.0, 60.0, CURVE, predicted=1.5).total > 0
    # stopped at once, a run saves at most one budget's compute (0.01): what a kept 0.01 % gain earns
    stopped, finished = (compute_reward(s, 1.5, 1.0, t, 60.0, CURVE) for s, t in (("pruned", 0.0), ("ok", 60.0)))
    assert stopped.total - finished.total == pytest.approx(0.01)


def test_a_re_run_pays_its_compute_and_the_gain_once_it_confirms_the_keep_and_nothing_under_the_composite():
    assert compute_reward("ok", 0.97, 1.0, 60.0, 60.0, CURVE, rerun=True).parts == pytest.approx({"compute": -0.01})
    confirmed = compute_reward("ok", 0.97, 1.0, 60.0, 60.0, CURVE, rerun=True, gain=0.02)
    assert confirmed.parts == pytest.approx({"compute": -0.01, "progress": 2.0})
    assert composite("ok", 0.97, 1.0, 60.0, 60.0, CURVE, rerun=True).parts == {}
    assert composite("crash", None, 1.0, 6.0, 60.0, [], rerun=True).parts == {"crash": -1.0}


def test_progress_keeps_the_penalties_and_refuses_a_negative_gain_or_an_unknown_kind():
    assert compute_reward("timeout", None, 1.0, 70.0, 60.0, CURVE).parts == {"timeout": -2.0}
    assert compute_reward("rejected", None, 1.0, 0.0, 60.0, []).parts == {"rejected": -1.0}
    assert compute_reward("crash", None, 1.0, 9.0, 60.0, [], duplicate=True).total == -1.5
    assert compute_reward("pruned", None, 1.0, None, 60.0, []).parts == {"compute": -0.01}  # time unknown: a budget
    with pytest.raises(ValueError, match="gain"):
        compute_reward("ok", 1.1, 1.0, 60.0, 60.0, CURVE, gain=-0.1)
    with pytest.raises(ValueError, match="progress, composite"):
        RewardConfig(kind="accuracy")
    with pytest.raises(ValueError, match="compute_cost"):
        RewardConfig(compute_cost=-1.0)


# composite: the source's reward ------------------------------------------------------------------------------------


def test_ok_run_terms_match_hand_computed_values():
    r = composite("ok", val_bpb=0.9, incumbent=1.0, total_seconds=45.0, budget=60.0, curve=CURVE)
    assert r.parts["accuracy"] == pytest.approx(0.7 * math.log(1.0 / 0.9))  # 0.0737524
    assert r.parts["accuracy"] == pytest.approx(0.0737524, abs=1e-7)
    assert r.parts["efficiency"] == pytest.approx(0.2 * 0.25)  # a quarter of the budget left
    assert r.parts["stability"] == pytest.approx(0.1 * math.exp(-0.01))  # 0.0990050
    assert set(r.parts) == {"accuracy", "efficiency", "stability"}
    assert r.total == pytest.approx(0.0737524 + 0.05 + 0.0990050, abs=1e-6)


def test_worse_run_loses_accuracy_reward():
    r = composite("ok", val_bpb=1.1, incumbent=1.0, total_seconds=60.0, budget=60.0, curve=[])
    assert r.parts["accuracy"] == pytest.approx(0.7 * math.log(1 / 1.1))  # -0.0667171
    assert r.parts["efficiency"] == 0 and r.parts["stability"] == 0  # no time left, no curve
    assert r.total == pytest.approx(-0.0667171, abs=1e-7)


def test_first_run_has_no_accuracy_term():
    r = composite("ok", val_bpb=1.3, incumbent=None, total_seconds=30.0, budget=60.0, curve=CURVE)
    assert r.parts["accuracy"] == 0
    assert r.total == pytest.approx(0.2 * 0.5 + 0.1 * math.exp(-0.01))


def test_better_val_bpb_earns_more_at_the_same_time():
    values = [0.8, 0.9, 0.99, 1.0, 1.01, 1.2]
    totals = [composite("ok", v, 1.0, 50.0, 60.0, CURVE).total for v in values]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)


def test_faster_runs_earn_more_efficiency():
    times = [0.0, 15.0, 30.0, 59.0, 60.0, 90.0]
    parts = [composite("ok", 0.95, 1.0, t, 60.0, CURVE).parts["efficiency"] for t in times]
    assert parts == pytest.approx([0.2, 0.15, 0.1, 0.2 / 60, 0.0, 0.0])  # over-budget runs are clamped at 0


def test_stability_window_and_noisy_curves():
    assert stability_score(CURVE, 0.2) == pytest.approx(math.exp(-0.01))
    # the whole curve: losses 4.0, 3.8, ..., 2.6, 2.0, 2.2
    losses = [loss for _, loss in CURVE]
    mean = sum(losses) / len(losses)
    assert stability_score(CURVE, 1.0) == pytest.approx(math.exp(-sum((x - mean) ** 2 for x in losses) / len(losses)))
    # ceil(0.25 * 10) = 3 points: 2.6, 2.0, 2.2
    tail = [2.6, 2.0, 2.2]
    m = sum(tail) / 3
    assert stability_score(CURVE, 0.25) == pytest.approx(math.exp(-sum((x - m) ** 2 for x in tail) / 3))
    flat = [(float(t), 3.0) for t in range(10)]
    noisy = [(float(t), 3.0 + (1.0 if t % 2 else -1.0)) for t in range(10)]
    assert stability_score(flat, 0.2) == 1.0
    assert stability_score(noisy, 0.2) == pytest.approx(math.exp(-1.0))
    assert stability_score([(0.0, 3.0)], 0.2) == 0.0  # one point says nothing
    assert stability_score(flat[:-1] + [(9.0, float("nan"))], 0.2) == 0.0  # diverged at the end
    assert stability_score(flat[:-1] + [(9.0, None)], 0.2) == 0.0


@pytest.mark.parametrize("status, key, penalty", [
    ("crash", "crash", -1.0), ("timeout", "timeout", -2.0), ("rejected", "rejected", -1.0),
    ("tampered", "tampered", -2.0), (Status.TIMEOUT, "timeout", -2.0),
])
def test_failures_get_their_penalty(status, key, penalty):
    r = compute_reward(status, val_bpb=None, incumbent=1.0, total_seconds=5.0, budget=60.0, curve=CURVE)
    assert r.parts == {key: penalty} and r.total == penalty
    # whatever the run printed, a failure does not earn accuracy
    assert compute_reward(status, 0.5, 1.0, 5.0, 60.0, CURVE).total == penalty


def test_duplicate_penalty_is_added_to_what_the_status_earned():
    ok = composite("ok", 0.9, 1.0, 45.0, 60.0, CURVE)
    dup = composite("ok", 0.9, 1.0, 45.0, 60.0, CURVE, duplicate=True)
    assert dup.parts["duplicate"] == -0.5 and dup.total == pytest.approx(ok.total - 0.5)
    crash = composite("crash", None, 1.0, 5.0, 60.0, [], duplicate=True)
    assert crash.parts == {"crash": -1.0, "duplicate": -0.5} and crash.total == -1.5


def test_pruned_run_uses_the_forecast_and_gets_the_bonus():
    r = composite("pruned", val_bpb=None, incumbent=1.0, total_seconds=20.0, budget=60.0, curve=CURVE,
                       predicted=1.05)
    assert r.parts["accuracy"] == pytest.approx(0.7 * math.log(1 / 1.05))
    assert r.parts["efficiency"] == pytest.approx(0.2 * (1 - 20 / 60))
    assert r.parts["early_stop"] == 0.1
    assert r.total == pytest.approx(0.7 * math.log(1 / 1.05) + 0.2 * 2 / 3 + 0.1 * math.exp(-0.01) + 0.1)
    # the same forecast run to the end would have cost the whole budget and earned no bonus
    full = composite("ok", 1.05, 1.0, 60.0, 60.0, CURVE)
    assert r.total > full.total
    # the forecast wins over a partial val_bpb; without one the reported value is used
    assert composite("pruned", 0.5, 1.0, 20.0, 60.0, CURVE, predicted=1.05).parts == r.parts
    assert composite("pruned", 1.05, 1.0, 20.0, 60.0, CURVE).parts == pytest.approx(r.parts)
    no_value = composite("pruned", None, 1.0, 20.0, 60.0, CURVE, predicted=float("nan"))
    assert no_value.parts["accuracy"] == 0 and math.isfinite(no_value.total)


def test_without_credit_for_early_stops_a_pruned_bad_run_earns_less_than_a_full_tie():
    paper = composite("pruned", None, 1.0, 20.0, 60.0, CURVE, predicted=1.05)
    tie = composite("ok", 1.0, 1.0, 66.0, 60.0, CURVE)
    assert paper.total > tie.total  # the paper's weights pay the proposal for being stopped
    config = RewardConfig(kind="composite", credit_early_stops=False)
    honest = composite("pruned", None, 1.0, 20.0, 60.0, CURVE, predicted=1.05, config=config)
    assert honest.parts["efficiency"] == 0.0 and "early_stop" not in honest.parts
    assert honest.parts["accuracy"] == paper.parts["accuracy"] < 0
    assert honest.total < composite("ok", 1.0, 1.0, 66.0, 60.0, CURVE, config=config).total


@pytest.mark.parametrize("val_bpb, incumbent, total_seconds, curve, predicted", [
    (None, 1.0, 10.0, CURVE, None),
    (float("nan"), 1.0, 10.0, CURVE, None),
    (0.9, float("nan"), float("nan"), [(0.0, float("nan")), (1.0, float("inf"))], None),
    (0.9, None, None, None, None),
    (0.9, 0.0, float("inf"), [], float("nan")),
    (-1.0, 1.0, -5.0, CURVE, None),
])
@pytest.mark.parametrize("status", ["ok", "pruned", "crash"])
@pytest.mark.parametrize("kind", REWARDS)
def test_nan_and_none_never_leak_into_the_total(kind, status, val_bpb, incumbent, total_seconds, curve, predicted):
    r = compute_reward(status, val_bpb, incumbent, total_seconds, 60.0, curve, predicted=predicted,
                       config=RewardConfig(kind=kind))
    assert isinstance(r, Reward) and math.isfinite(r.total)
    assert all(math.isfinite(v) for v in r.parts.values())
    assert r.total == pytest.approx(sum(r.parts.values()))


def test_ok_without_a_usable_val_bpb_is_scored_as_a_crash():
    assert compute_reward("ok", None, 1.0, 10.0, 60.0, CURVE).parts == {"crash": -1.0}
    assert compute_reward("ok", float("nan"), 1.0, 10.0, 60.0, CURVE).parts == {"crash": -1.0}


def test_custom_weights_and_validation():
    cfg = RewardConfig(kind="composite", accuracy=1.0, efficiency=0.0, stability=0.0, crash=-3.0)
    assert compute_reward("ok", 0.5, 1.0, 0.0, 60.0, CURVE, config=cfg).total == pytest.approx(math.log(2))
    assert compute_reward("crash", None, None, 0.0, 60.0, [], config=cfg).total == -3.0
    with pytest.raises(ValueError, match="accuracy"):
        RewardConfig(accuracy=-0.1)
    with pytest.raises(ValueError, match="timeout"):
        RewardConfig(timeout=1.0)
    with pytest.raises(ValueError, match="stability_window"):
        RewardConfig(stability_window=0.0)
    with pytest.raises(ValueError, match="status"):
        compute_reward("fine", 1.0, 1.0, 1.0, 60.0, [])
    with pytest.raises(ValueError, match="budget"):
        compute_reward("ok", 1.0, 1.0, 1.0, 0.0, [])
    assert efficiency_score(None, 60.0) == 0.0
