"""The plain searches over the catalog: random edits, and autoresearch's hill-climb.

Owns: `RandomPolicy` (uniform over the edits the loop allows: the baseline every learner has to beat) and
`GreedyPolicy` (a random edit of the current best that avoids edits already dropped there and repeats one that
paid). Does not own: keeping or dropping an edit (kit/loop.py decides on the mean of its runs).
"""

from __future__ import annotations

import hashlib

import numpy as np

from kit.policies.base import Outcome, Policy, Proposal, Setup, State, edit_proposal, uniform_logprob, valid_actions


class RandomPolicy(Policy):
    """Uniform over the edits that apply."""

    name = "random"
    edits_catalog = True

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    @classmethod
    def build(cls, setup: Setup) -> RandomPolicy:
        return cls(setup.seed)

    def propose(self, state: State) -> Proposal:
        valid = valid_actions(state)
        return edit_proposal(state, int(self.rng.choice(valid)), uniform_logprob(valid), 0.0)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d: dict) -> None:
        self.rng.bit_generator.state = d["rng"]


class GreedyPolicy(RandomPolicy):
    """autoresearch's hill-climb: a random edit of the current best (the loop keeps it only if it is better).

    Two refinements over RandomPolicy: an edit that was dropped is not retried on the same source until every other
    edit has been, and an edit that was kept is tried again at once (keep going in the direction that paid).
    """

    name = "greedy"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.tried: dict[str, list[int]] = {}  # source hash -> actions dropped there
        self.repeat: int | None = None  # the action just kept

    def propose(self, state: State) -> Proposal:
        valid = valid_actions(state)
        if self.repeat is not None and self.repeat in valid:
            action = self.repeat
        else:
            untried = np.setdiff1d(valid, self.tried.get(_key(state.source), []))
            action = int(self.rng.choice(untried if len(untried) else valid))
        self.repeat = None
        return edit_proposal(state, action, uniform_logprob(valid), 0.0)

    def observe(self, outcome: Outcome) -> dict:
        action = outcome.proposal.action
        if outcome.accepted:
            self.repeat = action
        elif action is not None:
            self.tried.setdefault(_key(outcome.state.source), []).append(action)
        return {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tried": self.tried, "repeat": self.repeat}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.tried = {k: list(v) for k, v in d["tried"].items()}
        self.repeat = d["repeat"]


def _key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()
