"""kit.policies.samplers: TPE, CMA-ES and the GP stay in range on train.py's knobs, improve on a quadratic, resume,
and start from the runs the loop tells them of."""

import dataclasses
import json

import numpy as np
import pytest

from kit.hyperparams import parse_hyperparameters
from kit.policies import Setup, State, make_policy
from kit.policies.samplers import CMAESPolicy, GPPolicy, SamplerConfig, TPEPolicy

from ..helpers import QUADRATIC, tell


def _sampler(name: str, knobs, seed: int = 0):
    return make_policy(name, Setup(catalog=[], knobs=knobs, observation_size=0, seed=seed))


TARGET = {"A": 0.2, "B": 0.7, "C": 0.9, "LR": 0.3, "N": 0.8}  # in normalized units


@pytest.mark.parametrize("name", ["tpe", "cmaes", "gp"])
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


def _told_of_a_baseline(name: str, values: dict, seed: int = 0):
    """A sampler built on train.py's knobs at these values and told of their noise floor, as the loop does."""
    knobs = [dataclasses.replace(k, value=values[k.name]) for k in parse_hyperparameters(QUADRATIC)]
    policy = _sampler(name, knobs, seed)
    for val_bpb in (1.0, 1.02, 0.98):
        policy.witness(knobs, val_bpb)
    return policy, State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)


LOW = {"A": 0.1, "B": 0.1, "C": -0.8, "LR": 0.0002, "N": 1}
HIGH = {"A": 0.9, "B": 0.9, "C": 0.8, "LR": 0.05, "N": 9}


def _distance(knobs, values, baseline) -> float:
    return sum((k.normalized(values[k.name]) - k.normalized(baseline[k.name])) ** 2 for k in knobs)


def test_cmaes_starts_at_the_baseline_it_is_told_of():
    for own, other in ((LOW, HIGH), (HIGH, LOW)):
        policy, state = _told_of_a_baseline("cmaes", own)
        for _ in range(5):
            proposal = policy.propose(state)
            values = proposal.values
            assert _distance(state.knobs, values, own) < _distance(state.knobs, values, other), values
            tell(policy, state, proposal, 1.0)


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_a_modelling_sampler_models_the_runs_it_is_told_of(name):
    # with Optuna's default start-up of 10 finished trials, the noise floor's 3 count: 7 random proposals, the
    # same under both baselines (one seed, one objective), then the model; only what it was told tells them apart
    first_modelled = []
    for baseline in (LOW, HIGH):
        policy, state = _told_of_a_baseline(name, baseline)
        for _ in range(7):
            proposal = policy.propose(state)
            tell(policy, state, proposal, 1.0 + _distance(state.knobs, proposal.values, TARGET_VALUES))
        first_modelled.append(policy.propose(state).values)
        assert len(policy.study.trials) == 3 + 7 + 1
    assert first_modelled[0] != first_modelled[1]


TARGET_VALUES = {"A": 0.2, "B": 0.7, "C": 0.8, "LR": 0.0016, "N": 8}


def test_a_run_outside_the_declared_ranges_or_without_a_value_is_not_told():
    policy, _ = _told_of_a_baseline("tpe", LOW)
    knobs = parse_hyperparameters(QUADRATIC)
    policy.witness([dataclasses.replace(k, value=20) if k.name == "N" else k for k in knobs], 0.5)
    policy.witness(knobs, None)
    policy.witness(knobs, float("nan"))
    assert [t.value for t in policy.study.trials] == [1.0, 1.02, 0.98]
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    proposal = policy.propose(state)
    tell(policy, state, proposal, 0.2, accepted=True)
    assert policy.study.best_value == 0.2


def test_a_duplicate_proposal_is_told_the_value_of_the_runs_it_repeats_not_a_failure():
    knobs = parse_hyperparameters(QUADRATIC)
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    for policy in (GPPolicy(knobs), CMAESPolicy(knobs), TPEPolicy(knobs)):
        first = policy.propose(state)
        tell(policy, state, first, 1.25)
        policy.witness([dataclasses.replace(k, value=first.values[k.name]) for k in knobs], 1.35)  # a re-run of it
        again = policy.propose(state)
        again.values.update(first.values)  # as if it had proposed the same point: the loop runs nothing
        tell(policy, state, again, None, duplicate=True)
        last = policy.study.trials[-1]
        assert (last.state.name, last.value) == ("COMPLETE", pytest.approx(1.3)), type(policy).__name__
        tell(policy, state, policy.propose(state), None)  # a run that failed is still a failure
        assert policy.study.trials[-1].state.name == "FAIL"
        tell(policy, state, policy.propose(state), None, duplicate=True)  # repeats nothing finished: nothing to tell
        assert policy.study.trials[-1].state.name == "FAIL"


def test_a_pruned_run_is_told_as_its_forecast_or_as_optunas_pruned_state():
    knobs = parse_hyperparameters(QUADRATIC)
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    told = {}
    for pruned_as in ("forecast", "pruned"):
        policy = TPEPolicy(knobs, config=SamplerConfig(pruned_as=pruned_as))
        tell(policy, state, policy.propose(state), 1.3, pruned=True)
        tell(policy, state, policy.propose(state), 1.1)  # a finished run is finished either way
        told[pruned_as] = [(t.state.name, t.value, t.intermediate_values) for t in policy.study.trials]
        resumed = TPEPolicy(knobs, config=SamplerConfig(pruned_as=pruned_as))
        resumed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
        assert [(t.state.name, t.value, t.intermediate_values) for t in resumed.study.trials] == told[pruned_as]
    assert told["forecast"] == [("COMPLETE", 1.3, {}), ("COMPLETE", 1.1, {})]
    assert told["pruned"] == [("PRUNED", 1.3, {0: 1.3}), ("COMPLETE", 1.1, {})]
    with pytest.raises(ValueError, match="pruned_as"):
        SamplerConfig(pruned_as="ignored")


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_an_outcome_proposed_before_a_resume_joins_the_study(name):
    """With several workers a resumed loop runs again what was running, and tells the sampler its outcome: a
    proposal whose trial went with the old process becomes a finished trial instead."""
    knobs = parse_hyperparameters(QUADRATIC)
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    before = _sampler(name, knobs)
    proposal = before.propose(state)
    resumed = _sampler(name, knobs)
    resumed.load_state_dict(json.loads(json.dumps(before.state_dict())))
    tell(resumed, state, proposal, 0.5)
    finished = [t for t in resumed.study.trials if t.state.name == "COMPLETE"]
    assert len(finished) == 1 and finished[0].value == 0.5 and finished[0].params == proposal.values
