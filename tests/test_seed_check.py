"""kit.seed_check: a train.py whose result ignores the seed it is given is found out by what its models predict."""

import numpy as np
import pytest

from kit.harness import run_experiment
from kit.results import HarnessConfig, Status
from kit.seed_check import ABSOLUTE_NATS, SAME_SHARE, seed_ignored, signature, typical_distance

# Fixed generator state, data of its own order and a fixed number of steps: every run trains the same model. The
# gate refuses each of these (tests/test_gate.py); with it off, the signatures must still give it away.
SEEDLESS = {
    "t_start = time.time()": "t_start = time.time()\ntorch.manual_seed(0)\nimport prepare as frozen\nfrozen.SEED = 0",
    "while training_time < TIME_BUDGET:": "while step < 15:",
    "progress = training_time / TIME_BUDGET": "progress = step / 15",
}


def _signatures(source, tmp_path, seeds, name):
    out = []
    for seed in seeds:
        result = run_experiment(source, tmp_path / f"{name}-{seed}",
                                HarnessConfig(profile="smoke", budget=2, seed=seed, run_gate=False,
                                              contention_limit=1.0))
        assert result.status is Status.OK, result
        out.append(signature(result.run_dir))
    assert all(s is not None and len(s) > 100 for s in out)
    return out


def test_a_train_py_that_ignores_its_seed_is_found_out_and_an_honest_one_is_not(smoke_data, baseline_source,
                                                                                tmp_path):
    honest = _signatures(baseline_source, tmp_path, (1337, 1338, 1339), "honest")
    typical = typical_distance(honest[:2])
    assert seed_ignored(honest[2], honest[:2], typical) is None  # a third seed predicts as differently as ever
    source = baseline_source
    for old, new in SEEDLESS.items():
        assert old in source
        source = source.replace(old, new)
    first, again = _signatures(source, tmp_path, (1337, 1338), "seedless")
    why = seed_ignored(again, [first], typical)
    assert why is not None and "does not depend on the seed" in why, (typical, why)
    # without a noise floor the absolute limit still sees it
    assert seed_ignored(again, [first], None) is not None


def test_the_verdict_follows_the_distance_against_the_noise_floor():
    rng = np.random.default_rng(0)
    honest = [rng.gamma(2.0, 1.0, 4096) for _ in range(3)]
    typical = typical_distance(honest)
    assert typical == pytest.approx(np.median([np.abs(a - b).mean() for a, b in
                                               [(honest[0], honest[1]), (honest[0], honest[2]),
                                                (honest[1], honest[2])]]))
    close = honest[0] + rng.normal(0, 0.5 * SAME_SHARE * typical, 4096)  # drifted a little, same model
    assert seed_ignored(close, [honest[0]], typical) is not None
    assert seed_ignored(honest[1], [honest[0]], typical) is None
    assert seed_ignored(honest[0] + ABSOLUTE_NATS / 2, [honest[0]], None) is not None
    assert seed_ignored(None, [honest[0]], typical) is None and seed_ignored(honest[0], [], typical) is None
