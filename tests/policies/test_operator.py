"""kit.policies.operator: the actor-critic masks, leaves the global RNG alone, shares what one edit taught with its
kin, learns from its rollout every num_steps outcomes, and beats random search on a small edit world."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from kit.policies.operator import HISTORY, OperatorPolicy
from kit.policies.search import RandomPolicy
from kit.ppo import PPOConfig, make_batch, make_optimizer, ppo_step

from ..helpers import CATALOG, HIGH, state_of, tell

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_masked_logits_carry_no_probability():
    policy = OperatorPolicy(3, 6, seed=0)
    x = torch.randn(200, 3)
    mask = torch.tensor([True, False, True, False, False, True, False]).expand(200, 7)  # the last: ask CMA-ES
    actions, logprob, entropy, value = policy.get_action_and_value(x, mask=mask)
    assert mask[0, actions].all() and value.shape == (200, 1)
    assert torch.isfinite(logprob).all() and torch.isfinite(entropy).all()
    _, forbidden_logprob, _, _ = policy.get_action_and_value(x[:1], torch.tensor([1]), mask=mask[:1])
    assert forbidden_logprob.item() == -math.inf


def test_operator_policy_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    OperatorPolicy(3, len(CATALOG), seed=9).propose(state_of(np.array([1, 2, 3])))
    assert torch.equal(torch.rand(3), expected)


def test_the_rollout_updates_every_num_steps_outcomes_and_survives_a_checkpoint():
    policy = OperatorPolicy(3, len(CATALOG), seed=0, ppo=PPOConfig(num_steps=4))
    state = state_of(np.array([3, 3, 3]))
    stats = [tell(policy, state, policy.propose(state), None, reward=float(i)) for i in range(7)]
    assert [bool(s) for s in stats] == [False, False, False, True, False, False, False]
    assert "losses/approx_kl" in stats[3] and len(policy.rollout.buffer) == 3
    resumed = OperatorPolicy(3, len(CATALOG), seed=0, ppo=PPOConfig(num_steps=4))
    resumed.restore(policy.checkpoint())
    assert resumed.rollout.buffer == policy.rollout.buffer
    assert resumed.rollout.optimizer.state_dict()["state"].keys() == policy.rollout.optimizer.state_dict()["state"].keys()
    proposal = resumed.propose(state)
    assert tell(resumed, state, proposal, None, reward=1.0)  # the fourth transition: the update comes on time


# -- PPO against random on a small edit world -------------------------------------------------------------------


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
            state = state_of(config)
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
                                               proposal.value, starts_episode, np.append(state.mask, False)),
                                strict=True):  # no sampler: "ask CMA-ES" is masked
                    rollout[key].append(item)
                starts_episode = 0.0
                if len(rollout["obs"]) == every:
                    with torch.no_grad():
                        next_value = policy.get_value(torch.as_tensor(state_of(config).observation)[None]).item()
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


def test_the_policy_remembers_how_each_edit_went_in_this_run_and_reads_it():
    policy = OperatorPolicy(3, len(CATALOG), seed=0, ppo=PPOConfig(num_steps=64))
    state = dataclasses.replace(state_of(np.array([3, 3, 3])), incumbent=2.0)
    empty = policy.remembering(state.observation)
    actions = len(CATALOG) + 1  # the last: ask CMA-ES (never, without a sampler)
    assert empty.shape == (3 + len(HISTORY) * actions,) and not empty[3:].any()  # nothing tried yet
    first, second = policy.propose(state), policy.propose(state)
    tell(policy, state, first, 1.9)  # better than the incumbent of the time
    tell(policy, state, second, None)  # failed
    memory = policy.remembering(state.observation)[3:].reshape(actions, len(HISTORY))
    if first.action != second.action:
        assert memory[first.action, 0] == pytest.approx(math.tanh(10 * math.log(2.0 / 1.9)))
        assert memory[first.action, 1] == pytest.approx(math.exp(-1 / 32))  # one proposal ago
    assert memory[second.action, 0] == -1.0 and memory[second.action, 1] == 1.0
    assert not np.delete(memory, [first.action, second.action], axis=0).any()
    x = torch.as_tensor(policy.remembering(state.observation))[None]
    assert not torch.allclose(policy.actor(x), policy.actor(x[:, :3]))  # the scorer reads it
    resumed = OperatorPolicy(3, len(CATALOG), seed=5)
    resumed.restore(policy.checkpoint())
    np.testing.assert_array_equal(resumed.remembering(state.observation), policy.remembering(state.observation))
    policy.forget()
    np.testing.assert_array_equal(policy.remembering(state.observation), empty)


def test_what_an_edit_did_is_read_for_its_siblings_signed_to_their_direction():
    # edits 0, 1: knob 0 up by a little and down by a lot; edit 2: knob 1 up. Edit 0 paid: edit 1 (same knob, the
    # other way) reads it as a loss, edit 2 (another knob) reads nothing.
    features = np.array([[1, 0, 0.3, 0], [1, 0, -1.0, 0], [0, 1, 1.0, 0]], dtype=np.float32)
    policy = OperatorPolicy(3, 3, seed=0, edit_features=features, edit_knobs=[0, 0, 1])
    state = dataclasses.replace(state_of(np.array([1, 1, 1])), catalog=CATALOG[:3], mask=np.ones(3, bool),
                                incumbent=2.0)
    proposal = dataclasses.replace(policy.propose(state), action=0)
    tell(policy, state, proposal, 1.9)
    memory = policy.remembering(state.observation)[3:].reshape(4, len(HISTORY))  # and "ask CMA-ES", of no knob
    paid = math.tanh(10 * math.log(2.0 / 1.9))
    np.testing.assert_allclose(memory[:, 2], [paid, -paid, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(memory[:, 3], [1.0, 1.0, 0.0, 0.0])
