"""PPO: generalized advantage estimation, the clipped-objective update of an actor-critic, and the rollout that
feeds it.

Owns: `PPOConfig`, `compute_gae`, `make_batch` (a finished rollout -> the `b_*` batch), `ppo_loss` (the loss of one
minibatch and its statistics), `ppo_step` (epochs of shuffled minibatches over one batch) and `Rollout` (the
storage, the optimizer and when to update, over one research run). The math and the names follow CleanRL's ppo.py:
`logratio`, `ratio`, `pg_loss`, `v_loss_clipped`, `approx_kl`, `clipfrac`, `explained_var`.
Does not own: the networks (kit/policies/operator.py) or what a transition is worth (kit/reward.py).

The agent is anything with `get_action_and_value(x, action=None, mask=None) -> (action, logprob, entropy, value)`
and `get_value(x)`, where `mask` is a bool tensor that is True for the actions that may be taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

BATCH_KEYS = ("b_obs", "b_actions", "b_logprobs", "b_advantages", "b_returns", "b_values")  # b_masks is optional


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of the PPO update: CleanRL's defaults for discrete actions, but for the discount, the value
    clipping and the rollout length, which pre-training on development members chose (bench/pretrain.md)."""

    clip_coef: float = 0.2  # the surrogate clipping coefficient: ratios outside [1 - c, 1 + c] earn nothing more
    vf_coef: float = 0.5  # weight of the value loss in the total loss
    ent_coef: float = 0.01  # weight of the entropy bonus (subtracted from the loss)
    gamma: float = 0.9  # an edit is credited with the gains of about the next ten experiments, not the whole run's
    gae_lambda: float = 0.9  # lambda of generalized advantage estimation
    update_epochs: int = 4  # passes over the batch per ppo_step
    num_minibatches: int = 2  # minibatches per pass (a batch smaller than this gets one-sample minibatches)
    learning_rate: float = 3e-4  # Adam step size for the optimizer the caller builds (see make_optimizer)
    max_grad_norm: float = 0.5  # global gradient-norm clip per minibatch update
    norm_adv: bool = True  # normalize advantages per minibatch (skipped for one-sample minibatches)
    clip_vloss: bool = False  # clipping the value update at clip_coef kept the critic from reaching returns of ~5
    target_kl: float | None = None  # stop the epochs early once approx_kl exceeds this; None never stops
    num_steps: int = 64  # transitions per rollout: one update every num_steps proposals

    def __post_init__(self):
        for name in ("clip_coef", "vf_coef", "ent_coef", "learning_rate", "max_grad_norm"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
                raise ValueError(f"PPOConfig.{name} must be a finite number >= 0, got {x=}")
        for name in ("gamma", "gae_lambda"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and 0.0 <= x <= 1.0):
                raise ValueError(f"PPOConfig.{name} must lie in [0, 1], got {x=}")
        for name, least in (("update_epochs", 1), ("num_minibatches", 1), ("num_steps", 2)):
            x = getattr(self, name)
            if not (isinstance(x, int) and not isinstance(x, bool) and x >= least):
                raise ValueError(f"PPOConfig.{name} must be an int >= {least}, got {x=}")
        x = self.target_kl
        if x is not None and not (isinstance(x, (int, float)) and x > 0):
            raise ValueError(f"PPOConfig.target_kl must be None or > 0, got {x=}")


def make_optimizer(policy: nn.Module, cfg: PPOConfig) -> torch.optim.Optimizer:
    """Adam with CleanRL's epsilon (1e-5) at cfg.learning_rate over every parameter of policy."""
    return torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5)


def compute_gae(rewards: Tensor, values: Tensor, dones: Tensor, next_value: Tensor | float, next_done: Tensor | float,
                gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimates and returns (advantages + values) over a rollout of T steps.

    rewards, values and dones have shape (T,) or (T, num_envs). CleanRL's convention for dones: dones[t] is 1 when
    observation t is the first of a new episode (the step before it ended one), so step t bootstraps from step t + 1
    only when dones[t + 1] is 0. next_value and next_done describe the observation after the last step.
    """
    if not (rewards.shape == values.shape == dones.shape) or rewards.ndim not in (1, 2) or len(rewards) == 0:
        raise ValueError(f"rewards, values and dones need one equal shape (T,) or (T, N), got "
                         f"{tuple(rewards.shape)=}, {tuple(values.shape)=}, {tuple(dones.shape)=}")
    rewards, values, dones = rewards.float(), values.float(), dones.float()
    next_value = torch.as_tensor(next_value, dtype=torch.float32, device=values.device)
    next_done = torch.as_tensor(next_done, dtype=torch.float32, device=values.device)
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        if t == len(rewards) - 1:
            nextnonterminal, nextvalues = 1.0 - next_done, next_value
        else:
            nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
    return advantages, advantages + values


def make_batch(obs: Any, actions: Any, logprobs: Any, rewards: Any, values: Any, dones: Any, next_value: float,
               next_done: float, cfg: PPOConfig, masks: Any = None) -> dict[str, Tensor]:
    """Turn one rollout of T single-environment steps (lists or arrays, step t in row t) into ppo_step's batch.

    obs: (T, obs_dim); actions, logprobs, rewards, values, dones: (T,); masks: (T, num_actions) bools or None.
    """
    b = {
        "b_obs": torch.as_tensor(np.asarray(obs, dtype=np.float32)),
        "b_actions": torch.as_tensor(np.asarray(actions, dtype=np.int64)),
        "b_logprobs": torch.as_tensor(np.asarray(logprobs, dtype=np.float32)),
        "b_values": torch.as_tensor(np.asarray(values, dtype=np.float32)),
    }
    rewards_t = torch.as_tensor(np.asarray(rewards, dtype=np.float32))
    dones_t = torch.as_tensor(np.asarray(dones, dtype=np.float32))
    b["b_advantages"], b["b_returns"] = compute_gae(rewards_t, b["b_values"], dones_t, next_value, next_done,
                                                    cfg.gamma, cfg.gae_lambda)
    if masks is not None:
        b["b_masks"] = torch.as_tensor(np.asarray(masks, dtype=bool))
    return b


def ppo_loss(policy: nn.Module, mb: dict[str, Tensor], cfg: PPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's total loss on one minibatch (keys as in ppo_step) and its parts, detached, under CleanRL's names."""
    _, newlogprob, entropy, newvalue = policy.get_action_and_value(mb["b_obs"], mb["b_actions"].long(),
                                                                   mask=mb.get("b_masks"))
    logratio = newlogprob - mb["b_logprobs"]
    ratio = logratio.exp()
    with torch.no_grad():
        old_approx_kl = (-logratio).mean()
        approx_kl = ((ratio - 1) - logratio).mean()  # the low-variance k3 estimator of KL(old || new)
        clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()

    mb_advantages = mb["b_advantages"]
    if cfg.norm_adv and len(mb_advantages) > 1:
        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    newvalue = newvalue.view(-1)
    if cfg.clip_vloss:
        v_loss_unclipped = (newvalue - mb["b_returns"]) ** 2
        v_clipped = mb["b_values"] + torch.clamp(newvalue - mb["b_values"], -cfg.clip_coef, cfg.clip_coef)
        v_loss_clipped = (v_clipped - mb["b_returns"]) ** 2
        v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = 0.5 * ((newvalue - mb["b_returns"]) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - cfg.ent_coef * entropy_loss + v_loss * cfg.vf_coef
    parts = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy_loss, "old_approx_kl": old_approx_kl,
             "approx_kl": approx_kl, "clipfrac": clipfrac}
    return loss, {k: v.detach() for k, v in parts.items()}


def ppo_step(policy: nn.Module, batch: dict[str, Tensor], optimizer: torch.optim.Optimizer, cfg: PPOConfig,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Update policy on one batch: cfg.update_epochs passes of shuffled minibatches, each a clipped-objective step.

    batch holds b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values (first dimension = batch) and
    optionally b_masks (bool, batch x num_actions, True = allowed). generator fixes the minibatch order.
    Returns the last minibatch's losses (as CleanRL logs them), the mean clip fraction over all minibatches and the
    value function's explained variance on the batch, all under `losses/`.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"ppo_step's batch lacks {missing}; build it with kit.ppo.make_batch, got {sorted(batch)=}")
    batch_size = len(batch["b_obs"])
    if batch_size == 0 or any(len(v) != batch_size for v in batch.values() if v is not None):
        raise ValueError(f"ppo_step needs a non-empty batch with one length for every b_* tensor, got "
                         f"{ {k: len(v) for k, v in batch.items() if v is not None} }")
    device = next(policy.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if v is not None}
    minibatch_size = max(1, math.ceil(batch_size / cfg.num_minibatches))

    was_training = policy.training
    policy.train()
    clipfracs: list[float] = []
    parts: dict[str, Tensor] = {}
    stop = False
    for _epoch in range(cfg.update_epochs):
        b_inds = torch.randperm(batch_size, generator=generator).to(device)
        for start in range(0, batch_size, minibatch_size):
            mb_inds = b_inds[start:start + minibatch_size]
            loss, parts = ppo_loss(policy, {k: v[mb_inds] for k, v in batch.items()}, cfg)
            clipfracs.append(parts["clipfrac"].item())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            if cfg.target_kl is not None and parts["approx_kl"].item() > cfg.target_kl:
                stop = True
                break
        if stop:
            break
    policy.train(was_training)

    y_pred, y_true = batch["b_values"].cpu().numpy(), batch["b_returns"].cpu().numpy()
    var_y = np.var(y_true)
    explained_var = math.nan if var_y == 0 else float(1 - np.var(y_true - y_pred) / var_y)
    stats = {f"losses/{k}": float(v.item()) for k, v in parts.items() if k != "clipfrac"}
    stats["losses/clipfrac"] = float(np.mean(clipfracs))
    stats["losses/explained_variance"] = explained_var
    return stats


class Rollout:
    """PPO's storage over one research run, the episode: transitions are kept until cfg.num_steps are in, then one
    ppo_step over them, with advantages bootstrapped from the critic's value of the state after the last one, and
    the storage starts over; finish() ends the episode (pre-training does, kit/bench/pretrain.py; a loop that stops
    keeps its transitions for a resume). It holds the optimizer, and its state_dict (the buffer and
    the optimizer's state) goes into RUN_DIR/policy.pt beside the agent's weights."""

    def __init__(self, agent: nn.Module, cfg: PPOConfig, generator: torch.Generator | None = None):
        """generator: the minibatch order's (the global one when None); the owner keeps its state for a resume."""
        self.agent, self.cfg, self.generator = agent, cfg, generator
        self.optimizer = make_optimizer(agent, cfg)
        self.buffer: list[dict[str, Any]] = []

    def add(self, obs: np.ndarray, action: int, logprob: float, value: float, reward: float, mask: np.ndarray,
            next_obs: Callable[[], np.ndarray]) -> dict[str, float]:
        """Store one transition; once num_steps are stored, update the agent and return its losses (else {})."""
        self.buffer.append({"obs": np.asarray(obs).tolist(), "action": int(action), "logprob": float(logprob),
                            "value": float(value), "reward": float(reward), "mask": np.asarray(mask).tolist()})
        if len(self.buffer) < self.cfg.num_steps:
            return {}
        with torch.no_grad():  # the task goes on after the last transition: bootstrap from the state it left
            next_value = self.agent.get_value(torch.as_tensor(next_obs(), dtype=torch.float32)[None]).item()
        return self._update(next_value, next_done=0.0)

    def finish(self) -> dict[str, float]:
        """The episode (a research run) is over: one update over what is stored, with nothing after the last
        transition to bootstrap from; its losses, or {} when nothing was stored."""
        return self._update(0.0, next_done=1.0) if self.buffer else {}

    def _update(self, next_value: float, next_done: float) -> dict[str, float]:
        b = self.buffer
        batch = make_batch([t["obs"] for t in b], [t["action"] for t in b], [t["logprob"] for t in b],
                           [t["reward"] for t in b], [t["value"] for t in b], dones=np.zeros(len(b)),
                           next_value=next_value, next_done=next_done, cfg=self.cfg, masks=[t["mask"] for t in b])
        stats = ppo_step(self.agent, batch, self.optimizer, self.cfg, generator=self.generator)
        self.buffer = []
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("optimizer"):
            self.optimizer.load_state_dict(d["optimizer"])
        self.buffer = d.get("buffer", [])
