"""Policies: what to try next, behind one protocol.

Owns: `Proposal` and `State` (what a policy sees and says), the `Policy` protocol, `OperatorPolicy` (a small
actor-critic over the observation with a masked categorical head over the edit catalog, the default), the baselines
`RandomPolicy`, `GreedyPolicy`, `TPEPolicy` and `CMAESPolicy` (Optuna ask/tell over the knobs), and `make_policy`.
Does not own: the catalog or applying edits (kit.edits), the update rule (kit.ppo), rollouts and acceptance (kit.loop).

Catalog-based policies return an index into State.catalog (masked entries are never chosen); TPE and CMA-ES return a
full assignment of the knobs in Proposal.values. Every policy is seeded, so a run replays exactly, and
state_dict()/load_state_dict() carry what a resumed loop needs (plain JSON values, except OperatorPolicy's tensors).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical

from kit.hyperparams import Hyperparameter

if TYPE_CHECKING:
    from kit.edits import Edit

POLICIES = ("ppo", "random", "greedy", "tpe", "cmaes", "lm", "llm")


@dataclass
class Proposal:
    """One thing to try: a catalog edit (action = its index) or a full set of knob values."""

    edit: Edit | None  # the catalog entry to apply, or None for value-based policies
    values: dict[str, Any] | None  # every knob's value (TPE/CMA-ES), or None for edit-based policies
    action: int | None  # index of edit in State.catalog
    logprob: float  # log-probability of the action under the policy that chose it (0 where meaningless)
    value: float  # the critic's estimate for the state (0 without a critic)
    description: str  # one line for the ledger, e.g. "MATRIX_LR ×1.25"
    candidate: str | None = None  # a whole new train.py (language-model policies), or None
    error: str | None = None  # why no train.py could be made of what the policy wrote (a rejected record)
    tokens: dict | None = None  # what a language-model policy needs to learn from this proposal


@dataclass
class State:
    """What a policy sees before proposing."""

    source: str  # train.py as it stands (the current best under hill-climbing)
    catalog: list[Edit]  # every edit the action space holds, fixed for the run
    mask: np.ndarray  # bool per catalog entry: True where the edit applies to source
    observation: np.ndarray  # float32 features: concat(config vector, memory observation)
    knobs: list[Hyperparameter]  # the ranged hyperparameters of source, with their current values
    memory: Any = None  # the loop's kit.memory.Memory (language-model policies render it into their prompt)


class Policy(Protocol):
    name: str

    def propose(self, state: State) -> Proposal: ...

    def observe(self, proposal: Proposal, val_bpb: float | None, accepted: bool) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


@dataclass(frozen=True)
class PolicyConfig:
    """Shape of OperatorPolicy's networks and the search baselines' settings."""

    hidden_size: int = 64  # width of the two hidden layers of actor and critic
    actor_init_std: float = 0.01  # orthogonal-init gain of the logits layer: near-uniform first proposals
    tpe_startup_trials: int = 10  # random trials before TPE starts modelling
    significant_digits: int = 4  # floats proposed by TPE/CMA-ES are rounded to this many digits

    def __post_init__(self):
        for name in ("hidden_size", "tpe_startup_trials", "significant_digits"):
            x = getattr(self, name)
            if not (isinstance(x, int) and x >= 1):
                raise ValueError(f"PolicyConfig.{name} must be an int >= 1, got {x=}")
        x = self.actor_init_std
        if not (isinstance(x, (int, float)) and x > 0):
            raise ValueError(f"PolicyConfig.actor_init_std must be > 0, got {x=}")


def _valid_actions(state: State) -> np.ndarray:
    mask = np.asarray(state.mask, dtype=bool)
    if mask.shape != (len(state.catalog),):
        raise ValueError(f"State.mask needs one bool per catalog entry, got {mask.shape=} for {len(state.catalog)=}")
    valid = np.flatnonzero(mask)
    if len(valid) == 0:
        raise ValueError("no edit in the catalog applies to train.py; widen the ranges in its comments")
    return valid


def _edit_proposal(state: State, action: int, logprob: float, value: float) -> Proposal:
    edit = state.catalog[action]
    text = edit.describe() if hasattr(edit, "describe") else str(edit)
    return Proposal(edit=edit, values=None, action=int(action), logprob=logprob, value=value, description=text)


def _layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


class OperatorPolicy(nn.Module):
    """CleanRL-style actor-critic over the catalog: the critic is a tanh MLP over the observation; the actor scores
    every edit with one shared tanh MLP over (the state's embedding, the edit's features, where its knob stands now).

    Sharing the scorer is what lets a few hundred experiments teach it anything: an edit is usually tried once per
    incumbent (a repeat is a duplicate), so a head with one free logit per edit would learn nothing it can reuse,
    while features (knob, kind, signed size of the move; kit.edits.edit_features) carry "raising this learning rate
    paid" over to the other edits that raise it. Without edit features each edit is its own one-hot feature, which
    is the plain categorical head."""

    name = "ppo"

    def __init__(self, observation_size: int, catalog_size: int, seed: int = 0, config: PolicyConfig = PolicyConfig(),
                 edit_features: np.ndarray | None = None, edit_knobs: np.ndarray | None = None):
        super().__init__()
        if observation_size < 1 or catalog_size < 1:
            raise ValueError(f"OperatorPolicy needs observation_size and catalog_size >= 1, got "
                             f"{observation_size=}, {catalog_size=}")
        if edit_features is None:
            edit_features = np.eye(catalog_size, dtype=np.float32)
        if edit_knobs is None:
            edit_knobs = np.full(catalog_size, -1)
        edit_features, edit_knobs = np.asarray(edit_features, np.float32), np.asarray(edit_knobs, np.int64)
        if edit_features.ndim != 2 or len(edit_features) != catalog_size or edit_knobs.shape != (catalog_size,) \
                or edit_knobs.max(initial=-1) >= observation_size:
            raise ValueError(f"edit_features needs one row and edit_knobs one observation index (or -1) per edit, "
                             f"got {edit_features.shape=}, {edit_knobs.shape=} for {catalog_size=}")
        h = config.hidden_size
        with torch.random.fork_rng(devices=[]):  # same seed, same initial weights; the global RNG is left alone
            torch.manual_seed(seed)
            self.critic = nn.Sequential(_layer_init(nn.Linear(observation_size, h)), nn.Tanh(),
                                        _layer_init(nn.Linear(h, h)), nn.Tanh(), _layer_init(nn.Linear(h, 1), std=1.0))
            self.state_net = nn.Sequential(_layer_init(nn.Linear(observation_size, h)), nn.Tanh(),
                                           _layer_init(nn.Linear(h, h)), nn.Tanh())
            self.edit_net = nn.Sequential(_layer_init(nn.Linear(edit_features.shape[1] + 1, h)), nn.Tanh(),
                                          _layer_init(nn.Linear(h, h), std=config.actor_init_std))
        self.register_buffer("edit_features", torch.from_numpy(edit_features))
        self.register_buffer("edit_knobs", torch.from_numpy(edit_knobs))
        self.observation_size, self.catalog_size = observation_size, catalog_size
        self.generator = torch.Generator().manual_seed(seed)

    def actor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the catalog, shape (batch, catalog_size)."""
        batch, n = x.shape[0], self.catalog_size
        features = self.edit_features[None].expand(batch, n, -1)
        where = x[:, self.edit_knobs.clamp(min=0)] * (self.edit_knobs >= 0)  # the knob's normalized value now
        edits = self.edit_net(torch.cat([features, where[..., None]], dim=-1))  # (batch, n, h)
        return (edits * self.state_net(x)[:, None, :]).sum(-1)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

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
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)

    def propose(self, state: State) -> Proposal:
        valid = _valid_actions(state)
        if len(state.catalog) != self.catalog_size:
            raise ValueError(f"the policy was built for {self.catalog_size} edits, got {len(state.catalog)=}")
        if np.size(state.observation) != self.observation_size:
            raise ValueError(f"the policy was built for observations of {self.observation_size} features, got "
                             f"{np.size(state.observation)=}")
        obs = torch.as_tensor(np.asarray(state.observation, dtype=np.float32)).reshape(1, -1)
        mask = torch.zeros(1, self.catalog_size, dtype=torch.bool)
        mask[0, torch.as_tensor(valid)] = True
        device = next(self.parameters()).device
        with torch.no_grad():
            action, logprob, _, value = self.get_action_and_value(obs.to(device), mask=mask.to(device))
        return _edit_proposal(state, int(action.item()), float(logprob.item()), float(value.item()))

    def observe(self, proposal: Proposal, val_bpb: float | None, accepted: bool) -> None:
        """Nothing to do: the loop stores the transition and calls kit.ppo.ppo_step."""

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class RandomPolicy:
    """Uniform over the edits that apply: the baseline every learner has to beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def propose(self, state: State) -> Proposal:
        valid = _valid_actions(state)
        return _edit_proposal(state, int(self.rng.choice(valid)), -math.log(len(valid)), 0.0)

    def observe(self, proposal: Proposal, val_bpb: float | None, accepted: bool) -> None:
        pass

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d: dict) -> None:
        self.rng.bit_generator.state = d["rng"]


class GreedyPolicy(RandomPolicy):
    """autoresearch's hill-climb: a random edit of the current best (the loop keeps it only if it is better).

    Two refinements over RandomPolicy: an edit that was rejected is not retried on the same source until every other
    edit has been, and an edit that was accepted is tried again at once (keep going in the direction that paid).
    """

    name = "greedy"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.tried: dict[str, list[int]] = {}  # source hash -> actions rejected there
        self.repeat: int | None = None  # the action just accepted
        self.pending: dict[int, str] = {}  # id(proposal) -> hash of the source it was proposed on

    def propose(self, state: State) -> Proposal:
        valid = _valid_actions(state)
        key = hashlib.sha256(state.source.encode()).hexdigest()
        if self.repeat is not None and self.repeat in valid:
            action = self.repeat
        else:
            untried = np.setdiff1d(valid, self.tried.get(key, []))
            action = int(self.rng.choice(untried if len(untried) else valid))
        self.repeat = None
        proposal = _edit_proposal(state, action, -math.log(len(valid)), 0.0)
        self.pending[id(proposal)] = key
        return proposal

    def observe(self, proposal: Proposal, val_bpb: float | None, accepted: bool) -> None:
        key = self.pending.pop(id(proposal), None)
        if accepted:
            self.repeat = proposal.action
        elif key is not None and proposal.action is not None:
            self.tried.setdefault(key, []).append(proposal.action)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tried": self.tried, "repeat": self.repeat}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.tried = {k: list(v) for k, v in d["tried"].items()}
        self.repeat = d["repeat"]


class _OptunaPolicy:
    """Ask/tell over the ranged knobs: each proposal assigns every knob; the objective is val_bpb, minimized."""

    name = "optuna"

    def __init__(self, knobs: list[Hyperparameter], seed: int = 0, config: PolicyConfig = PolicyConfig()):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the ledger records every trial already
        self.knobs = [k for k in knobs if k.has_range]
        if not self.knobs:
            raise ValueError(f"{type(self).__name__} needs ranged hyperparameters, got {len(knobs)=} with none ranged;"
                             " add ranges like '# transformer blocks [1, 16]'")
        self.seed, self.config = seed, config
        self.distributions = {k.name: _distribution(k) for k in self.knobs}
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler(seed))
        self.pending: list[tuple[Proposal, Any]] = []  # proposals asked and not yet told, with their trials

    def _sampler(self, seed: int):
        raise NotImplementedError

    def propose(self, state: State) -> Proposal:
        trial = self.study.ask(self.distributions)
        values = {k.name: _tidy(k, trial.params[k.name], self.config.significant_digits) for k in self.knobs}
        current = {k.name: k.value for k in state.knobs}
        changed = [f"{n} {current[n]!r} -> {v!r}" for n, v in values.items() if n in current and current[n] != v]
        text = f"{self.name}: " + (", ".join(changed) if changed else "no change")
        proposal = Proposal(edit=None, values=values, action=None, logprob=0.0, value=0.0, description=text)
        self.pending.append((proposal, trial))
        return proposal

    def observe(self, proposal: Proposal, val_bpb: float | None, accepted: bool) -> None:
        from optuna.trial import TrialState

        for i, (p, trial) in enumerate(self.pending):
            if p is proposal:
                del self.pending[i]
                ok = val_bpb is not None and math.isfinite(val_bpb)
                self.study.tell(trial, val_bpb if ok else None, state=None if ok else TrialState.FAIL)
                return
        raise ValueError(f"{self.name} did not propose this (or was already told about it): {proposal.description}")

    def add_result(self, values: dict[str, Any], val_bpb: float) -> None:
        """Record a run the policy did not propose (the baseline train.py, say), so the search starts from it."""
        import optuna

        params = {k.name: values[k.name] for k in self.knobs}
        self.study.add_trial(optuna.trial.create_trial(value=val_bpb, params=params, distributions=self.distributions))

    def state_dict(self) -> dict:
        """Finished trials as JSON (pending ones are dropped: the loop proposes again after a resume)."""
        from optuna.distributions import distribution_to_json

        trials = [{"state": t.state.name, "value": t.value, "params": t.params, "system_attrs": t.system_attrs,
                   "distributions": {n: distribution_to_json(d) for n, d in t.distributions.items()}}
                  for t in self.study.trials if t.state.is_finished()]
        return {"seed": self.seed, "trials": trials}

    def load_state_dict(self, d: dict) -> None:
        import optuna
        from optuna.distributions import json_to_distribution

        # a fresh sampler seeded from the history's length: deterministic, if not the uninterrupted sequence
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler(d["seed"] + len(d["trials"])))
        for t in d["trials"]:
            self.study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState[t["state"]], value=t["value"], params=t["params"],
                system_attrs=t["system_attrs"],
                distributions={n: json_to_distribution(s) for n, s in t["distributions"].items()}))
        self.pending = []


class TPEPolicy(_OptunaPolicy):
    """Optuna's tree-structured Parzen estimator over the knobs."""

    name = "tpe"

    def _sampler(self, seed: int):
        import optuna

        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.config.tpe_startup_trials)


class CMAESPolicy(_OptunaPolicy):
    """Optuna's CMA-ES over the numeric knobs (choices and bools are sampled at random beside it); needs `cmaes`."""

    name = "cmaes"

    def _sampler(self, seed: int):
        import optuna

        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _distribution(knob: Hyperparameter):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if knob.choices is not None:
        return CategoricalDistribution(list(knob.choices))
    log = knob.low > 0 and knob.high / knob.low >= 100  # the same rule as Hyperparameter.normalized
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=log)
    return FloatDistribution(float(knob.low), float(knob.high), log=log)


def _tidy(knob: Hyperparameter, value: Any, digits: int) -> Any:
    """Round a sampled float to `digits` significant digits, kept inside the knob's range."""
    if knob.kind != "float" or value == 0:
        return value
    rounded = float(f"{value:.{digits}g}")
    return min(max(rounded, knob.low), knob.high)


def make_policy(name: str, catalog_size: int, observation_size: int, knobs: list[Hyperparameter], seed: int,
                config: PolicyConfig = PolicyConfig(), lm=None, llm=None,
                edit_features: tuple[np.ndarray, np.ndarray] | None = None) -> Policy:
    """The policy called name, seeded; "lm" needs lm (a kit.lm_policy.LMPolicyConfig), "llm" needs llm
    (a kit.llm_proposer.LLMConfig); "ppo" scores edits by edit_features (kit.edits.edit_features) when given."""
    if name == "lm":
        from kit.lm_policy import LMPolicy

        if lm is None:
            raise ValueError("the lm policy needs a model: give --lm-model PATH_OR_NAME")
        return LMPolicy(lm)
    if name == "llm":
        from kit.llm_proposer import LLMProposer

        if llm is None:
            raise ValueError("the llm proposer needs an endpoint: give --llm-url URL and --llm-model NAME")
        return LLMProposer(llm)
    if name == "ppo":
        features, knob_index = edit_features if edit_features is not None else (None, None)
        return OperatorPolicy(observation_size, catalog_size, seed=seed, config=config, edit_features=features,
                              edit_knobs=knob_index)
    if name == "random":
        return RandomPolicy(seed)
    if name == "greedy":
        return GreedyPolicy(seed)
    if name == "tpe":
        return TPEPolicy(knobs, seed=seed, config=config)
    if name == "cmaes":
        return CMAESPolicy(knobs, seed=seed, config=config)
    raise ValueError(f"unknown policy; choose one of {', '.join(POLICIES)}, got {name=}")
