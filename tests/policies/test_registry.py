"""kit.policies: the registry builds every policy by name; every catalog policy masks, fails clearly and replays."""

import json

import numpy as np
import pytest

from kit.hyperparams import parse_hyperparameters
from kit.policies import POLICIES, REGISTRY, Setup, make_policy, policy_class

from ..helpers import CATALOG, HIGH, QUADRATIC, setup, state_of

CATALOG_POLICIES = [name for name in POLICIES if policy_class(name).edits_catalog]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_catalog_policies_are_ppo_random_and_greedy():
    assert CATALOG_POLICIES == ["ppo", "random", "greedy"]


def test_masking_never_chooses_an_invalid_edit():
    rng = np.random.default_rng(0)
    for policy in (make_policy(name, setup()) for name in CATALOG_POLICIES):
        for _ in range(300):
            mask = rng.random(len(CATALOG)) < 0.3
            mask[rng.integers(len(CATALOG))] = True
            proposal = policy.propose(state_of(rng.integers(0, HIGH + 1, 3), mask))
            assert mask[proposal.action], policy.name
            assert proposal.edit is CATALOG[proposal.action] and proposal.values is None
            assert proposal.description == proposal.edit.describe()


def test_no_valid_edit_is_a_clear_error():
    for policy in (make_policy(name, setup()) for name in CATALOG_POLICIES):
        with pytest.raises(ValueError, match="no edit in the catalog applies"):
            policy.propose(state_of(np.zeros(3, int), np.zeros(len(CATALOG), bool)))


def test_seeded_policies_replay_and_resume_exactly():
    config = np.array([3, 3, 3])
    for name in CATALOG_POLICIES:
        make = lambda name=name: make_policy(name, setup(seed=7))  # noqa: E731
        a, b = make(), make()
        first = [a.propose(state_of(config)).action for _ in range(20)]
        assert first == [b.propose(state_of(config)).action for _ in range(20)]
        saved = a.checkpoint()
        if name != "ppo":
            saved = json.loads(json.dumps(saved))  # plain values: JSON survives, as it must
        rest = [a.propose(state_of(config)).action for _ in range(20)]
        c = make()
        c.restore(saved)
        assert [c.propose(state_of(config)).action for _ in range(20)] == rest


def test_make_policy_builds_every_named_policy():
    knobs = parse_hyperparameters(QUADRATIC)
    for name in POLICIES:
        if REGISTRY[name].needs:  # built from a model or an endpoint: tests/policies/test_lm.py, test_llm.py
            continue
        assert make_policy(name, Setup(catalog=CATALOG, knobs=knobs, observation_size=3, from_scratch=True)).name == name
    with pytest.raises(ValueError, match="--lm-model"):
        make_policy("lm", Setup(catalog=CATALOG, knobs=knobs, observation_size=3))
    with pytest.raises(ValueError, match="--llm-url"):
        make_policy("llm", Setup(catalog=CATALOG, knobs=knobs, observation_size=3))
    with pytest.raises(ValueError, match="choose one of"):
        make_policy("sgd", Setup(catalog=CATALOG, knobs=knobs, observation_size=3))
    with pytest.raises(ValueError, match="ranged"):
        make_policy("tpe", Setup(catalog=CATALOG, knobs=[], observation_size=3))


def test_every_registered_policy_is_a_class_of_that_name():
    for name in POLICIES:
        assert policy_class(name).name == name, REGISTRY[name].target


