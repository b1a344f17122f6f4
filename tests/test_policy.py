"""kit.policy: masking, seeding and resume for every policy; PPO beats random on a synthetic edit environment;
TPE and CMA-ES stay in range on train.py's knobs and improve on a quadratic."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from kit.hyperparams import parse_hyperparameters
from kit.policy import POLICIES, GreedyPolicy, OperatorPolicy, PolicyConfig, RandomPolicy, State, make_policy
from kit.ppo import PPOConfig, make_batch, make_optimizer, ppo_step


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks run fastest on one thread, and the machine may be shared
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Step:
    """A stand-in for kit.edits.Edit: move knob `knob` by `delta`."""

    knob: int
    delta: int

    def describe(self) -> str:
        return f"K{self.knob} {self.delta:+d}"


CATALOG = [Step(k, d) for k in range(3) for d in (-1, 1)]
HIGH = 6  # every knob lives in [0, HIGH]


def _mask(config: np.ndarray) -> np.ndarray:
    return np.array([0 <= config[e.knob] + e.delta <= HIGH for e in CATALOG])


def _state(config: np.ndarray, mask: np.ndarray | None = None) -> State:
    mask = _mask(config) if mask is None else mask
    return State(f"K = {config.tolist()}", CATALOG, mask, (config / HIGH).astype(np.float32), [])


def _edit_policies(seed: int = 0):
    return [OperatorPolicy(3, len(CATALOG), seed=seed), RandomPolicy(seed), GreedyPolicy(seed)]


def test_masking_never_chooses_an_invalid_edit():
    rng = np.random.default_rng(0)
    for policy in _edit_policies():
        for _ in range(300):
            mask = rng.random(len(CATALOG)) < 0.3
            mask[rng.integers(len(CATALOG))] = True
            proposal = policy.propose(_state(rng.integers(0, HIGH + 1, 3), mask))
            assert mask[proposal.action], policy.name
            assert proposal.edit is CATALOG[proposal.action] and proposal.values is None
            assert proposal.description == proposal.edit.describe()


def test_masked_logits_carry_no_probability():
    policy = OperatorPolicy(3, 6, seed=0)
    x = torch.randn(200, 3)
    mask = torch.tensor([True, False, True, False, False, True]).expand(200, 6)
    actions, logprob, entropy, value = policy.get_action_and_value(x, mask=mask)
    assert mask[0, actions].all() and value.shape == (200, 1)
    assert torch.isfinite(logprob).all() and torch.isfinite(entropy).all()
    _, forbidden_logprob, _, _ = policy.get_action_and_value(x[:1], torch.tensor([1]), mask=mask[:1])
    assert forbidden_logprob.item() == -math.inf


def test_no_valid_edit_is_a_clear_error():
    for policy in _edit_policies():
        with pytest.raises(ValueError, match="no edit in the catalog applies"):
            policy.propose(_state(np.zeros(3, int), np.zeros(len(CATALOG), bool)))


def test_seeded_policies_replay_and_resume_exactly():
    config = np.array([3, 3, 3])
    for make in (lambda: OperatorPolicy(3, len(CATALOG), seed=7), lambda: RandomPolicy(7), lambda: GreedyPolicy(7)):
        a, b = make(), make()
        first = [a.propose(_state(config)).action for _ in range(20)]
        assert first == [b.propose(_state(config)).action for _ in range(20)]
        saved = a.state_dict()
        if not isinstance(a, OperatorPolicy):
            saved = json.loads(json.dumps(saved))  # the ledger stores loop state as JSON
        rest = [a.propose(_state(config)).action for _ in range(20)]
        c = make()
        c.load_state_dict(saved)
        assert [c.propose(_state(config)).action for _ in range(20)] == rest


def test_operator_policy_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    OperatorPolicy(3, len(CATALOG), seed=9).propose(_state(np.array([1, 2, 3])))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_skips_rejected_edits_and_repeats_accepted_ones():
    policy = GreedyPolicy(seed=0)
    state = _state(np.array([3, 3, 3]))  # all six edits valid
    seen = []
    for _ in range(len(CATALOG)):
        proposal = policy.propose(state)
        seen.append(proposal.action)
        policy.observe(proposal, 1.0, accepted=False)
    assert sorted(seen) == list(range(len(CATALOG)))  # every neighbour once before any repeat
    proposal = policy.propose(state)
    policy.observe(proposal, 0.5, accepted=True)
    assert policy.propose(_state(np.array([3, 3, 3]))).action == proposal.action


# -- PPO against random on a synthetic environment -------------------------------------------------------------------


def _run_episodes(policy, seed: int, episodes: int, length: int, cfg: PPOConfig | None, every: int = 96) -> np.ndarray:
    """Hill-climb toward a hidden optimum of 3 knobs in [0, 6]: an edit is kept when its noisy value (L1 distance to
    the optimum) beats the incumbent, as the loop keeps an improved train.py. With cfg, PPO learns every `every` steps.
    Returns, per episode, whether the optimum was reached within `length` steps."""
    rng = np.random.default_rng(seed)
    optimum = rng.integers(0, HIGH + 1, 3)
    optimizer = make_optimizer(policy, cfg) if cfg else None
    generator = torch.Generator().manual_seed(seed)
    rollout = {k: [] for k in ("obs", "actions", "logprobs", "rewards", "values", "dones", "masks")}
    reached, starts_episode = [], 1.0
    for _ in range(episodes):
        config = rng.integers(0, HIGH + 1, 3)
        while (config == optimum).all():
            config = rng.integers(0, HIGH + 1, 3)
        incumbent = np.abs(config - optimum).sum() + 0.1 * rng.normal()
        hit = False
        for t in range(length):
            state = _state(config)
            proposal = policy.propose(state)
            candidate = config.copy()
            candidate[proposal.edit.knob] += proposal.edit.delta
            val = np.abs(candidate - optimum).sum() + 0.1 * rng.normal()
            reward = incumbent - val
            if val < incumbent:
                config, incumbent = candidate, val
            hit = bool((config == optimum).all())
            if cfg:
                for key, item in zip(rollout, (state.observation, proposal.action, proposal.logprob, reward,
                                               proposal.value, starts_episode, state.mask), strict=True):
                    rollout[key].append(item)
                starts_episode = 0.0
                if len(rollout["obs"]) == every:
                    with torch.no_grad():
                        next_value = policy.get_value(torch.as_tensor(_state(config).observation)[None]).item()
                    ends = float(hit or t == length - 1)
                    batch = make_batch(*(rollout[k] for k in ("obs", "actions", "logprobs", "rewards", "values",
                                                              "dones")), next_value, ends, cfg, masks=rollout["masks"])
                    ppo_step(policy, batch, optimizer, cfg, generator=generator)
                    rollout = {k: [] for k in rollout}
            if hit:
                break
        starts_episode = 1.0
        reached.append(hit)
    return np.array(reached)


def test_ppo_finds_the_optimum_more_often_than_random():
    cfg = PPOConfig(learning_rate=1e-2, gamma=0.9, num_minibatches=4)
    ppo_hits, random_hits = 0, 0
    for seed in range(3):
        ppo = _run_episodes(OperatorPolicy(3, len(CATALOG), seed=seed), seed, episodes=120, length=12, cfg=cfg)
        rnd = _run_episodes(RandomPolicy(seed), seed, episodes=120, length=12, cfg=None)
        assert ppo[-30:].sum() > rnd[-30:].sum(), seed
        ppo_hits, random_hits = ppo_hits + ppo[-30:].sum(), random_hits + rnd[-30:].sum()
    assert ppo_hits >= 2 * random_hits and ppo_hits >= 0.6 * 90


# -- TPE and CMA-ES ----------------------------------------------------------------------------------------------------

QUADRATIC = """
A = 0.5        # first [0.0, 1.0]
B = 0.5        # second [0.0, 1.0]
C = 0.5        # third [-1.0, 1.0]
LR = 0.01      # a log-scaled one [0.0001, 0.1]
N = 5          # an integer [0, 10]
"""
TARGET = {"A": 0.2, "B": 0.7, "C": 0.9, "LR": 0.3, "N": 0.8}  # in normalized units


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_search_policies_propose_in_range_on_train_py(name, baseline_source):
    knobs = [k for k in parse_hyperparameters(baseline_source) if k.has_range]
    policy = make_policy(name, catalog_size=0, observation_size=0, knobs=knobs, seed=0)
    state = State(baseline_source, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    for i in range(15):
        proposal = policy.propose(state)
        assert set(proposal.values) == {k.name for k in knobs}
        for k in knobs:
            assert k.in_range(proposal.values[k.name]), (k.name, proposal.values[k.name])
        assert proposal.edit is None and proposal.action is None and proposal.description.startswith(name)
        policy.observe(proposal, 1.0 + 0.01 * i if i % 4 else None, accepted=False)  # failures are told too


@pytest.mark.parametrize("name", ["tpe", "cmaes"])
def test_search_policies_improve_on_a_quadratic_and_resume(name):
    knobs = parse_hyperparameters(QUADRATIC)
    objective = lambda values: sum((k.normalized(values[k.name]) - TARGET[k.name]) ** 2 for k in knobs)
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    for seed in range(2):
        policy = make_policy(name, 0, 0, knobs, seed)
        scores = []
        for _ in range(40):
            proposal = policy.propose(state)
            scores.append(objective(proposal.values))
            policy.observe(proposal, scores[-1], accepted=False)
        assert np.mean(scores[-10:]) < 0.5 * np.mean(scores[:10]), (seed, scores)
        assert min(scores) < min(scores[:10])

        resumed = make_policy(name, 0, 0, knobs, seed)
        resumed.load_state_dict(json.loads(json.dumps(policy.state_dict())))
        assert len(resumed.study.trials) == 40 and resumed.study.best_value == pytest.approx(min(scores))
        proposal = resumed.propose(state)
        assert all(k.in_range(proposal.values[k.name]) for k in knobs)


def test_search_policies_take_the_baseline_as_a_known_result():
    knobs = parse_hyperparameters(QUADRATIC)
    policy = make_policy("tpe", 0, 0, knobs, seed=0)
    policy.add_result({k.name: k.value for k in knobs}, 0.25)
    assert len(policy.study.trials) == 1 and policy.study.best_params["N"] == 5 and policy.study.best_value == 0.25
    state = State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), knobs)
    proposal = policy.propose(state)
    policy.observe(proposal, 0.2, accepted=True)
    assert policy.study.best_value == 0.2


def test_make_policy_builds_every_named_policy():
    knobs = parse_hyperparameters(QUADRATIC)
    for name in POLICIES:
        if name in ("lm", "llm"):  # built from a model or an endpoint: tests/test_lm_policy.py, test_llm_proposer.py
            continue
        assert make_policy(name, 6, 3, knobs, seed=0).name == name
    with pytest.raises(ValueError, match="--lm-model"):
        make_policy("lm", 6, 3, knobs, seed=0)
    with pytest.raises(ValueError, match="--llm-url"):
        make_policy("llm", 6, 3, knobs, seed=0)
    with pytest.raises(ValueError, match="choose one of"):
        make_policy("sgd", 6, 3, knobs, seed=0)
    with pytest.raises(ValueError, match="ranged"):
        make_policy("tpe", 6, 3, [], seed=0)
    with pytest.raises(ValueError, match="hidden_size"):
        PolicyConfig(hidden_size=0)


def test_edit_features_carry_what_one_edit_taught_over_to_its_kin():
    # edits 0, 1: knob 0 up by a little and by a lot; edit 2: knob 1 down. A step toward edit 0 must raise edit 1
    # (same knob, same direction) against edit 2; with one-hot features (no kin) the two move alike.
    features = np.array([[1, 0, 0.3], [1, 0, 1.0], [0, 1, -1.0]], dtype=np.float32)
    obs = torch.zeros(1, 3)

    def logit_change(policy: OperatorPolicy) -> np.ndarray:
        with torch.no_grad():
            before = policy.actor(obs)[0].clone()
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        _, logprob, _, _ = policy.get_action_and_value(obs, torch.tensor([0]))
        (-logprob.sum()).backward()
        optimizer.step()
        with torch.no_grad():
            return (policy.actor(obs)[0] - before).numpy()

    for seed in range(3):
        shared = logit_change(OperatorPolicy(3, 3, seed=seed, edit_features=features, edit_knobs=[0, 0, 1]))
        assert shared[0] > 0 and shared[1] - shared[2] > 0.2 * shared[0], seed
        alone = logit_change(OperatorPolicy(3, 3, seed=seed))
        assert abs(alone[1] - alone[2]) < 0.2 * alone[0], seed


def test_operator_policy_refuses_features_of_the_wrong_shape():
    with pytest.raises(ValueError, match="edit_features"):
        OperatorPolicy(3, 3, edit_features=np.zeros((2, 4)), edit_knobs=[0, 0])
