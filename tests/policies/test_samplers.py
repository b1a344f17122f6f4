"""kit.policies.samplers: TPE and CMA-ES stay in range on train.py's knobs, improve on a quadratic, resume, and
start from a known result."""

import json

import numpy as np
import pytest

from kit.hyperparams import parse_hyperparameters
from kit.policies import Setup, State, make_policy

from ..helpers import QUADRATIC, tell


def _sampler(name: str, knobs, seed: int = 0):
    return make_policy(name, Setup(catalog=[], knobs=knobs, observation_size=0, seed=seed))


TARGET = {"A": 0.2, "B": 0.7, "C": 0.9, "LR": 0.3, "N": 0.8}  # in normalized units


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_search_policies_propose_in_range_on_train_py(name, baseline_source):
    knobs = [k for k in parse_hyperparameters(baseline_source) if k.has_range]
    policy = _sampler(name, knobs)
    state = State(baseline_source, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    for i in range(15):
        proposal = policy.propose(state)
        assert set(proposal.values) == {k.name for k in knobs}
        for k in knobs:
            assert k.in_range(proposal.values[k.name]), (k.name, proposal.values[k.name])
        assert proposal.edit is None and proposal.action is None and proposal.description.startswith(name)
        tell(policy, state, proposal, 1.0 + 0.01 * i if i % 4 else None)  # failures are told too


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_search_policies_improve_on_a_quadratic_and_resume(name):
    knobs = parse_hyperparameters(QUADRATIC)
    objective = lambda values: sum((k.normalized(values[k.name]) - TARGET[k.name]) ** 2 for k in knobs)
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    for seed in range(2):
        policy = _sampler(name, knobs, seed)
        scores = []
        for _ in range(40):
            proposal = policy.propose(state)
            scores.append(objective(proposal.values))
            tell(policy, state, proposal, scores[-1])
        assert np.mean(scores[-10:]) < 0.5 * np.mean(scores[:10]), (seed, scores)
        assert min(scores) < min(scores[:10])

        resumed = _sampler(name, knobs, seed)
        resumed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
        assert len(resumed.study.trials) == 40 and resumed.study.best_value == pytest.approx(min(scores))
        proposal = resumed.propose(state)
        assert all(k.in_range(proposal.values[k.name]) for k in knobs)


def test_search_policies_take_the_baseline_as_a_known_result():
    knobs = parse_hyperparameters(QUADRATIC)
    policy = _sampler("tpe", knobs)
    policy.add_result({k.name: k.value for k in knobs}, 0.25)
    assert len(policy.study.trials) == 1 and policy.study.best_params["N"] == 5 and policy.study.best_value == 0.25
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    proposal = policy.propose(state)
    tell(policy, state, proposal, 0.2, accepted=True)
    assert policy.study.best_value == 0.2
