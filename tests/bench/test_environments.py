"""kit.bench.environments: the synthetic objective is deterministic, has the optimum it claims, fails and prunes like a
real run, and every policy finds its optimum through the unchanged loop."""

import contextlib
import io
from pathlib import Path

import pytest

from kit import REPO_ROOT, edits
from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
from kit.ledger import Ledger
from kit.loop import LoopConfig, run_loop
from kit.results import HarnessConfig, Status
from kit.stopping import StopConditions

BASELINE = (REPO_ROOT / "train.py").read_text()


@pytest.fixture(scope="module")
def env() -> SyntheticEnvironment:
    return SyntheticEnvironment(BASELINE, SyntheticConfig(seed=1))


def test_the_optimum_is_where_it_says_and_the_baseline_a_gap_above(env):
    c = env.config
    assert env.expected_bpb(env.optimum_source) == pytest.approx(c.floor)
    assert env.expected_bpb(BASELINE) == pytest.approx(c.floor + c.gap)
    # moving any important knob away from its optimum costs; an unimportant knob costs nothing
    for name in env.optimum_values:
        other = next(k for k in edits.knobs(BASELINE) if k.name == name).value
        assert env.expected_bpb(edits.set_values(env.optimum_source, {name: other})) > c.floor
    unimportant = next(k for k in edits.knobs(BASELINE) if k.name not in env.optimum_values and k.kind == "bool")
    flipped = edits.set_values(env.optimum_source, {unimportant.name: not unimportant.value})
    assert env.expected_bpb(flipped) == pytest.approx(c.floor)


def test_runs_are_deterministic_and_noisy_across_seeds(env, tmp_path: Path):
    a = env(BASELINE, tmp_path, HarnessConfig(budget=60.0, seed=1))
    b = env(BASELINE, tmp_path, HarnessConfig(budget=60.0, seed=1))
    c = env(BASELINE, tmp_path, HarnessConfig(budget=60.0, seed=2))
    assert a == b and a.status is Status.OK and a.val_bpb != c.val_bpb
    assert abs(a.val_bpb - env.expected_bpb(BASELINE)) < 5 * env.config.noise
    assert len(a.curve) == env.config.points and a.curve[-1][0] == 60.0 and a.total_seconds > 60.0
    losses = [loss for _, loss in a.curve]
    assert losses[0] > losses[-1] + 2  # a learning curve, falling toward the final value


def test_a_diverging_learning_rate_crashes_and_the_gate_still_rejects(env, tmp_path: Path):
    lr = next(k for k in edits.knobs(BASELINE) if k.name == "MATRIX_LR")
    crash = env(edits.set_values(BASELINE, {"MATRIX_LR": lr.high}), tmp_path)
    assert crash.status is Status.CRASH and "NaN" in crash.reason and crash.val_bpb is None
    rejected = env(BASELINE + "\nimport subprocess\n", tmp_path)
    assert rejected.status is Status.REJECTED and "gate" in rejected.reason


def test_a_monitor_prunes_the_run_where_it_asks(env, tmp_path: Path):
    seen = []

    def monitor(curve):
        seen.append(len(curve))
        return "forecast worse than the incumbent" if len(curve) == 12 else None

    result = env(BASELINE, tmp_path, HarnessConfig(budget=60.0), monitor)
    assert result.status is Status.PRUNED and len(result.curve) == 12 and seen == list(range(1, 13))
    assert result.training_seconds == pytest.approx(12.0) and result.val_bpb is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="important"):
        SyntheticConfig(important=0)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ppo", "random", "greedy", "tpe", "cmaes"])
def test_every_policy_finds_the_synthetic_optimum(env, policy, tmp_path: Path):
    """Through the real loop (gate, early stopping, noise-aware acceptance, git, ledger), 150 experiments (the
    catalog policies get under the bar after 79-89 of them, the warm-started samplers after 7-15)."""
    with contextlib.redirect_stdout(io.StringIO()):
        run_loop(LoopConfig(run_dir=tmp_path, profile="smoke", policy=policy, budget=60.0, seed=0,
                            stop=StopConditions(iterations=150)),
                 environment=env)
    with Ledger(tmp_path, readonly=True) as ledger:
        best = min(r.val_bpb for r in ledger.records() if r.val_bpb is not None)
    c = env.config
    assert best < c.floor + 0.2 * c.gap, f"{policy} reached {best:.4f}; {env.describe()}"


def test_catalog_policies_never_repeat_an_experiment(env, tmp_path: Path):
    """Random edits of a hill-climbed train.py soon hit configs already run; the loop masks those before it asks."""
    with contextlib.redirect_stdout(io.StringIO()):
        run_loop(LoopConfig(run_dir=tmp_path, profile="smoke", policy="random", budget=60.0,
                            stop=StopConditions(iterations=80)),
                 environment=env)
    with Ledger(tmp_path, readonly=True) as ledger:
        records = ledger.records()
    assert len(records) == 80 and not [r for r in records if "duplicate" in r.reason]
