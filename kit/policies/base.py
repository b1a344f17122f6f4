"""What every policy shares: what it sees, what it says, what it is told, what it is built from.

Owns: `State` (what a policy sees before proposing), `Proposal` (what it says), `Outcome` (what became of a
proposal, told back), `Setup` (what a policy is built from), and `Policy`, the base class with the protocol's
defaults: a policy proposes; it may learn from outcomes; its state goes into RUN_DIR/policy.pt so a resumed loop
goes on where it stopped. Also the helpers of the policies that pick one catalog edit.
Does not own: any algorithm (one module each in this package), the catalog (kit/edits.py), or running anything
(kit/loop.py).

A policy either picks one edit of the catalog (`edits_catalog = True`: Proposal.action indexes State.catalog, and
the loop masks the edits that would repeat an experiment), or sets every knob (Proposal.values), or writes a whole
new train.py (Proposal.candidate). Every policy is seeded, so a run replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kit.ppo import PPOConfig

if TYPE_CHECKING:
    from kit.edits import Edit
    from kit.hyperparams import Hyperparameter
    from kit.memory import Memory


@dataclass
class State:
    """What a policy sees before proposing."""

    source: str  # train.py as it stands (the current best under hill-climbing)
    catalog: list[Edit]  # every edit the action space holds, fixed for the run
    mask: np.ndarray  # bool per catalog entry: True where the edit may be proposed
    observation: np.ndarray  # float32 features: concat(config vector, memory observation)
    knobs: list[Hyperparameter]  # the ranged hyperparameters of source, with their current values
    memory: Memory | None = None  # the loop's memory (language-model policies render it into their prompt)
    incumbent: float | None = None  # the mean val_bpb of the train.py to beat (None before the noise floor)


@dataclass
class Proposal:
    """One thing to try: a catalog edit (action = its index), a full set of knob values, or a whole train.py."""

    edit: Edit | None  # the catalog entry to apply, or None for value-based policies
    values: dict[str, Any] | None  # every knob's value (TPE/CMA-ES), or None for edit-based policies
    action: int | None  # index of edit in State.catalog
    logprob: float  # log-probability of the action under the policy that chose it (0 where meaningless)
    value: float  # the critic's estimate for the state (0 without a critic)
    description: str  # one line for the ledger, e.g. "MATRIX_LR ×1.25"
    candidate: str | None = None  # a whole new train.py (language-model policies), or None
    error: str | None = None  # why no train.py could be made of what the policy wrote (a rejected record)
    tokens: dict | None = None  # what a language-model policy needs to learn from this proposal
    seen: np.ndarray | None = None  # a learning policy's network input when it proposed: with several workers its
    # outcome comes back after others changed the policy's memory, and PPO's ratio must use what it saw


@dataclass(frozen=True)
class Outcome:
    """What became of a proposal, as the loop tells the policy that made it."""

    state: State  # what the policy saw when it proposed
    proposal: Proposal
    val_bpb: float | None  # the run's val_bpb, a pruned run's forecast, or None when it failed or never ran
    accepted: bool  # kept as the new incumbent
    reward: float  # what the reward function paid for it (kit/reward.py)
    next_observation: Callable[[], np.ndarray]  # the observation after it, for a critic to bootstrap from
    pruned: bool = False  # stopped early: val_bpb is then the stop rule's forecast of the end it never reached
    duplicate: bool = False  # never run: the same code ran before (val_bpb is then None)


@dataclass(frozen=True)
class Setup:
    """What a policy is built from; each takes what it needs."""

    catalog: list[Edit]
    knobs: list[Hyperparameter]
    observation_size: int
    seed: int = 0
    edit_features: tuple[np.ndarray, np.ndarray] | None = None  # kit.edits.edit_features: what each edit is
    ppo: PPOConfig = field(default_factory=PPOConfig)
    from_scratch: bool = False  # ppo: random initial weights, not the shipped pre-trained ones
    reward: str = "progress"  # the reward the policy learns from (kit/reward.py): pre-trained weights expect theirs
    lm_model: str | None = None  # the lm policy's causal LM: a local path or a hub name
    llm_url: str | None = None  # the llm proposer's OpenAI-compatible endpoint
    llm_model: str | None = None  # the model name that endpoint serves
    llm_share: float = 0.3  # the cmaes-llm hybrid: the share of CMA-ES's proposals the LLM may override


class Policy:
    """The protocol, with its defaults. A subclass sets `name`, implements `propose` and `build`, and overrides what
    it uses of the rest."""

    name: str = "?"
    edits_catalog: bool = False  # proposes one catalog edit of State.source (the loop masks repeats for it)

    @classmethod
    def build(cls, setup: Setup) -> Policy:
        """The policy as the loop makes it."""
        raise NotImplementedError

    def propose(self, state: State) -> Proposal:
        raise NotImplementedError

    def observe(self, outcome: Outcome) -> dict:
        """Learn from what became of a proposal; the numbers to log (PPO's losses after an update), else {}."""
        return {}

    def witness(self, knobs: list[Hyperparameter], val_bpb: float | None) -> None:
        """Told of a run the loop made without it (the noise floor's runs of the baseline, a near miss's re-runs
        under new seeds): that train.py's ranged knobs and its val_bpb (None when it failed). A sampler adds it to
        what it models; a policy that picks edits has it in State.memory already."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def checkpoint(self) -> dict:
        """What RUN_DIR/policy.pt holds: the policy's state, and the rollout buffer and optimizer of one that keeps
        them apart from its weights (kit/ppo.py)."""
        return {"policy": self.state_dict(), "buffer": [], "optimizer": None}

    def restore(self, saved: dict) -> None:
        self.load_state_dict(saved["policy"])


def valid_actions(state: State) -> np.ndarray:
    """The indices of the catalog edits the mask allows; ValueError when there is none."""
    mask = np.asarray(state.mask, dtype=bool)
    if mask.shape != (len(state.catalog),):
        raise ValueError(f"State.mask needs one bool per catalog entry, got {mask.shape=} for {len(state.catalog)=}")
    valid = np.flatnonzero(mask)
    if len(valid) == 0:
        raise ValueError("no edit in the catalog applies to train.py; widen the ranges in its comments")
    return valid


def edit_proposal(state: State, action: int, logprob: float, value: float) -> Proposal:
    """The proposal of catalog edit `action`."""
    edit = state.catalog[action]
    text = edit.describe() if hasattr(edit, "describe") else str(edit)
    return Proposal(edit=edit, values=None, action=int(action), logprob=logprob, value=value, description=text)


def uniform_logprob(valid: np.ndarray) -> float:
    return -math.log(len(valid))
