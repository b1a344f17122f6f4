"""kit.policies.search: greedy hill-climbing skips what was dropped and repeats what was kept."""

import numpy as np

from kit.policies.search import GreedyPolicy

from ..helpers import CATALOG, state_of, tell


def test_greedy_skips_rejected_edits_and_repeats_accepted_ones():
    policy = GreedyPolicy(seed=0)
    state = state_of(np.array([3, 3, 3]))  # all six edits valid
    seen = []
    for _ in range(len(CATALOG)):
        proposal = policy.propose(state)
        seen.append(proposal.action)
        tell(policy, state, proposal, 1.0)
    assert sorted(seen) == list(range(len(CATALOG)))  # every neighbour once before any repeat
    proposal = policy.propose(state)
    tell(policy, state, proposal, 0.5, accepted=True)
    assert policy.propose(state_of(np.array([3, 3, 3]))).action == proposal.action
