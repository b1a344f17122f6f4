"""kit.ppo: GAE against hand-computed values, a PPO step that lowers the loss and follows the advantages, and the
rollout that feeds it."""

import math

import numpy as np
import pytest
import torch

from kit.policies.operator import OperatorPolicy
from kit.ppo import PPOConfig, Rollout, compute_gae, make_batch, make_optimizer, ppo_loss, ppo_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_config_validates():
    PPOConfig()
    for bad in ({"clip_coef": -0.1}, {"gamma": 1.5}, {"update_epochs": 0}, {"num_minibatches": 1.5},
                {"target_kl": 0.0}, {"learning_rate": math.nan}, {"num_steps": 1}):
        with pytest.raises(ValueError, match="got"):
            PPOConfig(**bad)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, -1.0, 0.25])
    dones = torch.zeros(3)
    adv, ret = compute_gae(rewards, values, dones, next_value=4.0, next_done=0.0, gamma=0.5, gae_lambda=1.0)
    expected_returns = torch.tensor([1 + 0.5 * 0 + 0.25 * 2 + 0.125 * 4, 0 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4])
    torch.testing.assert_close(ret, expected_returns)
    torch.testing.assert_close(adv, expected_returns - values)


def test_gae_lambda_zero_is_the_td_error_and_dones_cut_the_bootstrap():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    values = torch.tensor([2.0, 3.0, 5.0])
    dones = torch.tensor([0.0, 0.0, 1.0])  # observation 2 starts a new episode
    adv, _ = compute_gae(rewards, values, dones, next_value=7.0, next_done=1.0, gamma=0.9, gae_lambda=0.0)
    torch.testing.assert_close(adv, torch.tensor([1 + 0.9 * 3 - 2, 1 - 3.0, 1 - 5.0]))
    adv2, _ = compute_gae(rewards, values, dones, next_value=7.0, next_done=1.0, gamma=0.9, gae_lambda=0.95)
    assert adv2[1] == pytest.approx(-2.0)  # nothing flows back across the episode boundary


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        compute_gae(torch.zeros(3), torch.zeros(4), torch.zeros(3), 0.0, 0.0, 0.99, 0.95)


def _fixed_batch(policy: OperatorPolicy, good_action: int = 2, n: int = 64):
    """Observations from a fixed distribution; the good action earns +1, every other one -1."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, policy.observation_size, generator=g)
    with torch.no_grad():
        actions, logprobs, _, values = policy.get_action_and_value(obs)
    rewards = torch.where(actions == good_action, 1.0, -1.0)
    return make_batch(obs.numpy(), actions.numpy(), logprobs.numpy(), rewards.numpy(), values.view(-1).numpy(),
                      torch.ones(n).numpy(), next_value=0.0, next_done=1.0, cfg=PPOConfig())


def test_ppo_step_lowers_the_loss_and_moves_probability_to_the_advantageous_action():
    policy = OperatorPolicy(observation_size=5, catalog_size=4, seed=1)
    cfg = PPOConfig(learning_rate=1e-2, update_epochs=4, num_minibatches=2)
    batch = _fixed_batch(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    with torch.no_grad():
        loss_before, _ = ppo_loss(policy, batch, cfg)
        p_good_before = policy.get_action_and_value(batch["b_obs"], torch.full((64,), 2))[1].exp().mean()

    stats = ppo_step(policy, batch, make_optimizer(policy, cfg), cfg, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        loss_after, _ = ppo_loss(policy, batch, cfg)
        p_good_after = policy.get_action_and_value(batch["b_obs"], torch.full((64,), 2))[1].exp().mean()
    assert loss_after < loss_before
    assert p_good_after > p_good_before + 0.05
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance"):
        assert math.isfinite(stats[f"losses/{key}"]), key
    assert 0.0 <= stats["losses/clipfrac"] <= 1.0


def test_ppo_step_with_masks_keeps_probability_off_forbidden_actions():
    policy = OperatorPolicy(observation_size=3, catalog_size=5, seed=2)
    cfg = PPOConfig(learning_rate=1e-2)
    obs = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    masks = torch.tensor([[True, True, False, True, False, False]] * 16)  # the last action: ask CMA-ES
    with torch.no_grad():
        actions, logprobs, entropy, values = policy.get_action_and_value(obs, mask=masks)
    assert masks[torch.arange(16), actions].all()
    assert (entropy <= math.log(3) + 1e-5).all()  # three allowed actions: at most log 3 nats
    batch = make_batch(obs.numpy(), actions.numpy(), logprobs.numpy(), torch.randn(16).numpy(), values.view(-1).numpy(),
                       torch.zeros(16).numpy(), 0.0, 0.0, cfg, masks=masks.numpy())
    stats = ppo_step(policy, batch, make_optimizer(policy, cfg), cfg)
    assert all(math.isfinite(v) for k, v in stats.items() if k != "losses/explained_variance")


class CountingAdam(torch.optim.Adam):
    steps = 0

    def step(self, *args, **kwargs):
        self.steps += 1
        return super().step(*args, **kwargs)


def test_target_kl_stops_the_epochs_early():
    steps = {}
    for target_kl in (None, 1e-9):
        policy = OperatorPolicy(observation_size=5, catalog_size=4, seed=3)
        batch = _fixed_batch(policy)
        cfg = PPOConfig(learning_rate=1e-2, update_epochs=4, num_minibatches=2, target_kl=target_kl)
        optimizer = CountingAdam(policy.parameters(), lr=cfg.learning_rate)
        ppo_step(policy, batch, optimizer, cfg)
        steps[target_kl] = optimizer.steps
    assert steps[None] == 8
    assert steps[1e-9] == 2  # the first minibatch changes nothing yet (ratio 1); the second exceeds the target


def test_ppo_step_rejects_an_incomplete_batch():
    policy = OperatorPolicy(observation_size=2, catalog_size=2)
    cfg = PPOConfig()
    with pytest.raises(ValueError, match="b_returns"):
        ppo_step(policy, {"b_obs": torch.zeros(2, 2)}, make_optimizer(policy, cfg), cfg)


def test_the_rollout_is_gae_bootstrapped_from_the_next_state_then_one_ppo_step():
    """Rollout.add four times does what the update's math says: the batch of those transitions, advantages
    bootstrapped from the critic's value of the state after the last one (the task does not end), one ppo_step."""
    cfg = PPOConfig(num_steps=4, learning_rate=1e-2)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    masks = np.ones((4, 6), dtype=bool)  # 5 edits and "ask CMA-ES"
    a, b = OperatorPolicy(3, 5, seed=4), OperatorPolicy(3, 5, seed=4)
    with torch.no_grad():
        actions, logprobs, _, values = a.get_action_and_value(torch.from_numpy(obs[:4]))
    rewards = [0.5, -1.0, 0.25, 1.0]
    rollout = Rollout(a, cfg)
    torch.manual_seed(11)  # ppo_step shuffles with the global generator
    stats = [rollout.add(obs[t], int(actions[t]), float(logprobs[t]), float(values[t]), rewards[t], masks[t],
                         next_obs=lambda: obs[4]) for t in range(4)]
    assert stats[:3] == [{}, {}, {}] and "losses/policy_loss" in stats[3] and rollout.buffer == []

    with torch.no_grad():
        next_value = b.get_value(torch.from_numpy(obs[4])[None]).item()
    batch = make_batch(obs[:4], actions.numpy(), logprobs.numpy(), rewards, values.view(-1).numpy(), np.zeros(4),
                       next_value, 0.0, cfg, masks=masks)
    torch.manual_seed(11)
    expected = ppo_step(b, batch, make_optimizer(b, cfg), cfg)
    assert stats[3] == expected
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_finishing_the_episode_updates_on_what_is_stored_with_nothing_to_bootstrap_from():
    cfg = PPOConfig(num_steps=8, learning_rate=1e-2)
    obs = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    masks = np.ones((3, 6), dtype=bool)  # 5 edits and "ask CMA-ES"
    a, b = OperatorPolicy(3, 5, seed=2), OperatorPolicy(3, 5, seed=2)
    with torch.no_grad():
        actions, logprobs, _, values = a.get_action_and_value(torch.from_numpy(obs))
    rollout = Rollout(a, cfg)
    assert rollout.finish() == {}  # nothing stored, nothing to learn
    for t in range(3):
        assert rollout.add(obs[t], int(actions[t]), float(logprobs[t]), float(values[t]), 1.0, masks[t],
                           next_obs=lambda: pytest.fail("a finished episode has no next state")) == {}
    torch.manual_seed(5)
    stats = rollout.finish()
    assert "losses/policy_loss" in stats and rollout.buffer == []
    batch = make_batch(obs, actions.numpy(), logprobs.numpy(), [1.0] * 3, values.view(-1).numpy(), np.zeros(3),
                       0.0, 1.0, cfg, masks=masks)
    torch.manual_seed(5)
    assert stats == ppo_step(b, batch, make_optimizer(b, cfg), cfg)
