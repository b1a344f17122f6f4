"""The default agent: an actor-critic that picks the next experiment, one edit of the catalog or CMA-ES's next
sample, trained with PPO on the loop's rewards.

Owns: `OperatorPolicy`, CleanRL's actor-critic shape (orthogonal init, tanh layers, a critic over the observation)
with a masked categorical head over the catalog and one more action, "ask CMA-ES", whose logits come from shared
edit features, and its rollout (kit.ppo.Rollout: one update every num_steps proposals). CMA-ES is told every run:
its own samples, the policy's catalog edits as what ran in the place of a sample (as the cmaes-llm hybrid tells an
LLM's values, kit/policies/hybrid.py), so its search follows what the edits found; the loop's other runs as
witnessed trials. It starts from the shipped pre-trained weights
(kit/policies/pretrained.py) and goes on learning in the run, or, from scratch, from random ones.
Does not own: the update rule (kit/ppo.py), the features (kit.edits.edit_features), the reward (kit/reward.py),
CMA-ES (kit/policies/samplers.py) or the pre-training (kit/bench/pretrain.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from kit import edits
from kit.policies import pretrained
from kit.policies.base import Outcome, Policy, Proposal, Setup, State, edit_proposal
from kit.policies.samplers import CMAESPolicy
from kit.ppo import PPOConfig, Rollout


def _layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


HISTORY = ("effect", "recency", "knob_effect", "knob_recency")
"""What the policy remembers of each edit in this run: how its latest trial went against the incumbent of the time,
tanh(EFFECT_SCALE * log(incumbent / val_bpb)), -1 for a failure; how recent that trial was, exp(-proposals since /
RECENCY), 0 if never tried; and the same two of the latest trial of any edit of its knob, the effect signed to this
edit's direction (raising a learning rate that paid reads as a gain for the edits that raise it, a loss for those that
lower it). Edits are relative moves, so what one did on one train.py says something about it and its siblings on the
next: this is what lets a policy learn, before the run, how to search within it."""
EFFECT_SCALE = 10.0  # a 5 % gain reads about 0.46
RECENCY = 32.0


class OperatorPolicy(nn.Module, Policy):
    """CleanRL-style actor-critic over the catalog and CMA-ES: the critic is a tanh MLP over the observation; the
    actor scores every edit with one shared tanh MLP over (the state's embedding, the edit's features, where its knob
    stands now), and the action "ask CMA-ES" (the last one) as an edit of its own kind, plus a learned bias that
    starts it at half the probability (a whole-config sample is what wins most often on these worlds, a single-knob
    edit what a learned policy can aim).

    Sharing the scorer is what lets a few hundred experiments teach it anything: an edit is usually tried once per
    incumbent (a repeat is a duplicate), so a head with one free logit per edit would learn nothing it can reuse,
    while features (knob, kind, signed size of the move; kit.edits.edit_features) carry "raising this learning rate
    paid" over to the other edits that raise it. Without edit features each edit is its own one-hot feature, which
    is the plain categorical head.

    The scorer also reads the policy's memory of each edit in this run (HISTORY), which the policy appends to the
    observation it acts on and stores; a network input of the observation alone reads as an empty memory.

    Without a sampler (no ranged knob) the last action is masked and the policy is the plain catalog one."""

    name = "ppo"
    edits_catalog = True

    def __init__(self, observation_size: int, catalog_size: int, seed: int = 0, hidden_size: int = 64,
                 actor_init_std: float = 0.01, edit_features: np.ndarray | None = None,
                 edit_knobs: np.ndarray | None = None, ppo: PPOConfig | None = None,
                 sampler: CMAESPolicy | None = None):
        """hidden_size: width of the two hidden layers of actor and critic; actor_init_std: orthogonal-init gain of
        the edit scorer's last layer (near-uniform first proposals); ppo: the update and its rollout length
        (PPOConfig() when None); sampler: the CMA-ES the last action asks (None: that action is never taken)."""
        super().__init__()
        if observation_size < 1 or catalog_size < 1 or hidden_size < 1 or not actor_init_std > 0:
            raise ValueError(f"OperatorPolicy needs observation_size, catalog_size, hidden_size >= 1 and "
                             f"actor_init_std > 0, got {observation_size=}, {catalog_size=}, {hidden_size=}, "
                             f"{actor_init_std=}")
        signed = edit_features is not None
        if edit_features is None:
            edit_features = np.eye(catalog_size, dtype=np.float32)
        if edit_knobs is None:
            edit_knobs = np.full(catalog_size, -1)
        edit_features, edit_knobs = np.asarray(edit_features, np.float32), np.asarray(edit_knobs, np.int64)
        if edit_features.ndim != 2 or len(edit_features) != catalog_size or edit_knobs.shape != (catalog_size,) \
                or edit_knobs.max(initial=-1) >= observation_size:
            raise ValueError(f"edit_features needs one row and edit_knobs one observation index (or -1) per edit, "
                             f"got {edit_features.shape=}, {edit_knobs.shape=} for {catalog_size=}")
        # the direction of each edit's move (the signed size in kit.edits.edit_features), 1 for a set or a toggle
        direction = np.where(edit_features[:, -2] < 0, -1.0, 1.0) if signed else np.ones(catalog_size)
        self.direction = np.append(direction, 1.0).astype(np.float32)
        # the actions: the catalog's edits, then "ask CMA-ES", an edit of its own kind (the last feature column)
        actions = catalog_size + 1
        features = np.zeros((actions, edit_features.shape[1] + 1), dtype=np.float32)
        features[:catalog_size, :-1], features[-1, -1] = edit_features, 1.0
        edit_features, edit_knobs = features, np.append(edit_knobs, -1)
        h = hidden_size
        with torch.random.fork_rng(devices=[]):  # same seed, same initial weights; the global RNG is left alone
            torch.manual_seed(seed)
            self.critic = nn.Sequential(_layer_init(nn.Linear(observation_size, h)), nn.Tanh(),
                                        _layer_init(nn.Linear(h, h)), nn.Tanh(), _layer_init(nn.Linear(h, 1), std=1.0))
            self.state_net = nn.Sequential(_layer_init(nn.Linear(observation_size, h)), nn.Tanh(),
                                           _layer_init(nn.Linear(h, h)), nn.Tanh())
            self.edit_net = nn.Sequential(_layer_init(nn.Linear(edit_features.shape[1] + 1 + len(HISTORY), h)),
                                          nn.Tanh(), _layer_init(nn.Linear(h, h), std=actor_init_std))
        self.sampler_bias = nn.Parameter(torch.tensor(math.log(catalog_size)))
        self.register_buffer("edit_features", torch.from_numpy(edit_features))
        self.register_buffer("edit_knobs", torch.from_numpy(edit_knobs))
        self.observation_size, self.catalog_size, self.actions = observation_size, catalog_size, actions
        self.sampler = sampler
        self.asked: list[tuple[Proposal, Proposal]] = []  # (proposal made, what the sampler is told of it), unsettled
        self.generator = torch.Generator().manual_seed(seed)
        self.rollout = Rollout(self, ppo or PPOConfig(), generator=self.generator)  # a seed fixes its updates too
        self.forget()

    @classmethod
    def build(cls, setup: Setup) -> OperatorPolicy:
        """The policy, starting from the shipped pre-trained weights unless setup.from_scratch."""
        features, knob_index = setup.edit_features if setup.edit_features is not None else (None, None)
        sampler = CMAESPolicy(setup.knobs, seed=setup.seed) if any(k.has_range for k in setup.knobs) else None
        policy = cls(setup.observation_size, len(setup.catalog), seed=setup.seed, edit_features=features,
                     edit_knobs=knob_index, ppo=setup.ppo, sampler=sampler)
        if not setup.from_scratch:
            policy.start_from(pretrained.WEIGHTS, pretrained.signature(setup.knobs, setup.catalog,
                                                                       setup.observation_size, setup.reward))
        return policy

    def start_from(self, path, expects: str) -> dict:
        """Take the weights saved at path (kit/policies/pretrained.py) if they were made for what `expects` says;
        how they were made. The sampling generator and the optimizer start afresh."""
        parameters, about = pretrained.load(path, expects)
        own = dict(self.named_parameters())
        if sorted(parameters) != sorted(own) or any(parameters[n].shape != p.shape for n, p in own.items()):
            raise pretrained.WeightsMismatch(f"the weights in {path} are of another network shape; run with "
                                             "--from-scratch, or pre-train again with `python -m kit bench pretrain`")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(parameters[name])
        return about

    def parameters_to_save(self) -> dict[str, torch.Tensor]:
        """The weights alone (no generator, no optimizer): what kit/policies/pretrained.py ships."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    # the network ----------------------------------------------------------------------------------------------

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(observation, memory of each action (batch, actions, len(HISTORY))) of a network input."""
        obs, memory = x[:, :self.observation_size], x[:, self.observation_size:]
        if memory.shape[1] == 0:
            return obs, x.new_zeros(x.shape[0], self.actions, len(HISTORY))
        return obs, memory.reshape(x.shape[0], self.actions, len(HISTORY))

    def actor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the actions (the catalog, then "ask CMA-ES"), shape (batch, catalog_size + 1)."""
        obs, memory = self._split(x)
        batch, n = x.shape[0], self.actions
        features = self.edit_features[None].expand(batch, n, -1)
        where = obs[:, self.edit_knobs.clamp(min=0)] * (self.edit_knobs >= 0)  # the knob's normalized value now
        scored = self.edit_net(torch.cat([features, where[..., None], memory], dim=-1))  # (batch, n, h)
        logits = (scored * self.state_net(obs)[:, None, :]).sum(-1)
        return torch.cat([logits[:, :-1], logits[:, -1:] + self.sampler_bias], dim=1)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self._split(x)[0])

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None,
                             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(action, logprob, entropy, value) for a batch of observations; mask (bool, True = allowed) sets the
        logits of forbidden actions to -inf, so they are never sampled and carry no entropy."""
        logits = self.actor(x)
        if mask is not None:
            logits = logits.masked_fill(~mask.to(device=logits.device, dtype=torch.bool), -math.inf)
        probs = Categorical(logits=logits)
        if action is None:
            # sample on the CPU generator, so a seed fixes the proposals on any device
            action = torch.multinomial(probs.probs.detach().cpu(), 1, generator=self.generator).view(-1)
            action = action.to(logits.device)
        return action, probs.log_prob(action), probs.entropy(), self.get_value(x)

    # the memory of this run's edits --------------------------------------------------------------------------

    def forget(self) -> None:
        """An empty memory of edits, as at the start of a run."""
        self.effect = np.zeros(self.actions, dtype=np.float32)
        self.tried_at = np.full(self.actions, -1, dtype=np.int64)
        self.latest_of_knob = np.full(self.observation_size, -1, dtype=np.int64)  # the edit of its latest trial
        self.proposals = 0

    def remembering(self, observation: np.ndarray) -> np.ndarray:
        """The network input: the observation, then the memory of each action (HISTORY)."""
        recency = self._recency(self.tried_at)
        knobs = self.edit_knobs.cpu().numpy()  # the buffer follows the network to its device
        latest = np.where(knobs >= 0, self.latest_of_knob[knobs.clip(min=0)], -1)  # per edit, its knob's latest edit
        seen = latest >= 0
        latest = latest.clip(min=0)
        knob_effect = np.where(seen, self.effect[latest] * self.direction[latest] * self.direction, 0.0)
        knob_recency = np.where(seen, recency[latest], 0.0)
        memory = np.stack([self.effect, recency, knob_effect, knob_recency], axis=1).astype(np.float32)
        return np.concatenate([np.asarray(observation, dtype=np.float32).reshape(-1), memory.reshape(-1)])

    def _recency(self, tried_at: np.ndarray) -> np.ndarray:
        return np.where(tried_at >= 0, np.exp(-(self.proposals - tried_at) / RECENCY), 0.0)

    def _remember(self, outcome: Outcome) -> None:
        self.proposals += 1
        if outcome.duplicate:  # never run: it says nothing new about the edit
            return
        action, incumbent, value = outcome.proposal.action, outcome.state.incumbent, outcome.val_bpb
        if value is None or not value > 0:
            self.effect[action] = -1.0
        else:
            self.effect[action] = math.tanh(EFFECT_SCALE * math.log(incumbent / value)) if incumbent else 0.0
        self.tried_at[action] = self.proposals
        if (knob := int(self.edit_knobs[action])) >= 0:
            self.latest_of_knob[knob] = action

    # the protocol ---------------------------------------------------------------------------------------------

    def propose(self, state: State) -> Proposal:
        mask = self._mask(state)
        if np.size(state.observation) != self.observation_size:
            raise ValueError(f"the policy was built for observations of {self.observation_size} features, got "
                             f"{np.size(state.observation)=}")
        obs = torch.as_tensor(self.remembering(state.observation)).reshape(1, -1)
        device = next(self.parameters()).device
        with torch.no_grad():
            action, logprob, _, value = self.get_action_and_value(obs.to(device),
                                                                  mask=torch.as_tensor(mask)[None].to(device))
        action, logprob, value = int(action.item()), float(logprob.item()), float(value.item())
        seen = obs[0].numpy()
        if action == self.catalog_size:
            sampled = self.sampler.propose(state)
            proposal = dataclasses.replace(sampled, action=action, logprob=logprob, value=value, seen=seen)
            self.asked.append((proposal, self.sampler.instead(proposal, replaced=False)))
            return proposal
        proposal = dataclasses.replace(edit_proposal(state, action, logprob, value), seen=seen)
        if self.sampler is not None and (values := self._values_of(state.source, proposal)) is not None:
            self.sampler.propose(state)  # the trial of CMA-ES whose place the edit takes
            told = Proposal(edit=None, values=values, action=None, logprob=0.0, value=0.0,
                            description=proposal.description)
            self.asked.append((proposal, self.sampler.instead(told, replaced=True)))
        return proposal

    def _mask(self, state: State) -> np.ndarray:
        """The actions allowed: the catalog's as the loop masks them, and "ask CMA-ES" where there is a sampler."""
        if len(state.catalog) != self.catalog_size or np.shape(state.mask) != (self.catalog_size,):
            raise ValueError(f"the policy was built for {self.catalog_size} edits, got {len(state.catalog)=} and "
                             f"{np.shape(state.mask)=}")
        mask = np.append(np.asarray(state.mask, dtype=bool), self.sampler is not None)
        if not mask.any():
            raise ValueError("no edit in the catalog applies to train.py; widen the ranges in its comments")
        return mask

    def _values_of(self, source: str, proposal: Proposal) -> dict | None:
        """The ranged knobs' values of the train.py the edit makes, or None where CMA-ES cannot be told them (the edit
        does not apply, or a value leaves its declared range)."""
        try:
            knobs = {k.name: k for k in edits.knobs(edits.apply_edit(source, proposal.edit))}
        except edits.EditError:
            return None
        names = self.sampler.distributions
        if not all(n in knobs and knobs[n].in_range(knobs[n].value) for n in names):
            return None
        return {n: knobs[n].value for n in names}

    def observe(self, outcome: Outcome) -> dict:
        """Store the transition and tell CMA-ES what ran; every num_steps transitions, one PPO update (its losses are
        returned)."""
        p = outcome.proposal
        if p.action is None:
            return {}
        for i, (made, told) in enumerate(self.asked):
            if made is p:  # (after a resume the sampler asked afresh, and an unsettled proposal is not its own)
                del self.asked[i]
                self.sampler.observe(dataclasses.replace(outcome, proposal=told))
                break
        # the input it proposed from (the importance ratio of a late outcome, proposed before others were learned
        # from, is taken against it); a proposal from before a resume has none and is seen as the memory is now
        acted_on = p.seen if p.seen is not None else self.remembering(outcome.state.observation)
        self._remember(outcome)
        return self.rollout.add(acted_on, p.action, p.logprob, p.value, outcome.reward, self._mask(outcome.state),
                                lambda: self.remembering(outcome.next_observation()))

    def witness(self, knobs, val_bpb: float | None) -> None:
        if self.sampler is not None:
            self.sampler.witness(knobs, val_bpb)

    def checkpoint(self) -> dict:
        sampler = {"sampler": self.sampler.state_dict()} if self.sampler is not None else {}
        return {"policy": self.state_dict(), **self.rollout.state_dict(), **sampler}

    def restore(self, saved: dict) -> None:
        self.load_state_dict(saved["policy"])
        self.rollout.load_state_dict(saved)
        if self.sampler is not None and "sampler" in saved:
            self.sampler.load_state_dict(saved["sampler"])
        self.asked = []

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), "effect": self.effect.tolist(),
                "tried_at": self.tried_at.tolist(), "latest_of_knob": self.latest_of_knob.tolist(),
                "proposals": self.proposals}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "effect" in state:
            self.effect = np.asarray(state["effect"], dtype=np.float32)
            self.tried_at = np.asarray(state["tried_at"], dtype=np.int64)
            self.proposals = int(state["proposals"])
            if "latest_of_knob" in state:
                self.latest_of_knob = np.asarray(state["latest_of_knob"], dtype=np.int64)
