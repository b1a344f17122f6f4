"""Policies: what to try next, behind one protocol, one module per family, one registry.

    base.py      State, Proposal, Outcome, Setup and Policy (the protocol and its defaults)
    operator.py  ppo: an actor-critic that picks one catalog edit or asks CMA-ES, trained with PPO (the default)
    pretrained.py  the ppo policy's shipped pre-trained weights and what they expect of a run
    search.py    random, greedy
    samplers.py  tpe, cmaes, gp: Optuna's samplers over every ranged knob
    hybrid.py    cmaes-llm: CMA-ES, with an LLM overriding a share of its proposals
    lm.py        lm: a causal LM with LoRA adapters that writes diffs, trained with PPO on its tokens
    llm.py       llm: an OpenAI-compatible endpoint that writes diffs, no learning

A new policy is a module with a Policy subclass and one line in REGISTRY; the CLI, the loop, the notebooks and
the benchmarks all read the registry. A module is imported only when its policy is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from kit.policies.base import Outcome, Policy, Proposal, Setup, State

__all__ = ["POLICIES", "REGISTRY", "Outcome", "Policy", "Proposal", "Setup", "State", "make_policy", "policy_class"]


@dataclass(frozen=True)
class Entry:
    target: str
    """module:Class of the policy."""
    summary: str
    """One line for the command line's help."""
    needs: tuple[str, ...] = ()
    """Setup fields the policy cannot run without (each is a loop option and a command-line flag of that name)."""


REGISTRY: dict[str, Entry] = {
    "ppo": Entry("kit.policies.operator:OperatorPolicy", "an actor-critic that picks one catalog edit or asks "
                 "CMA-ES for the next config, trained with PPO"),
    "random": Entry("kit.policies.search:RandomPolicy", "a catalog edit drawn uniformly"),
    "greedy": Entry("kit.policies.search:GreedyPolicy", "autoresearch's hill-climb: a random edit of the best"),
    "tpe": Entry("kit.policies.samplers:TPEPolicy", "Optuna's TPE over every ranged knob"),
    "cmaes": Entry("kit.policies.samplers:CMAESPolicy", "Optuna's CMA-ES over every ranged knob"),
    "gp": Entry("kit.policies.samplers:GPPolicy", "Optuna's Gaussian-process sampler over every ranged knob"),
    "cmaes-llm": Entry("kit.policies.hybrid:HybridPolicy", "CMA-ES whose proposals an OpenAI-compatible endpoint "
                       "may override (--llm-share of them)", needs=("llm_url", "llm_model")),
    "lm": Entry("kit.policies.lm:LMPolicy", "a causal LM with LoRA that writes diffs, trained with PPO",
                needs=("lm_model",)),
    "llm": Entry("kit.policies.llm:LLMProposer", "an OpenAI-compatible endpoint that writes diffs (no learning)",
                 needs=("llm_url", "llm_model")),
}
POLICIES = tuple(REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The class registered as name; ValueError naming the choices for an unknown one."""
    if name not in REGISTRY:
        raise ValueError(f"unknown policy; choose one of {', '.join(POLICIES)}, got {name=}")
    module, _, attribute = REGISTRY[name].target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_policy(name: str, setup: Setup) -> Policy:
    """The policy called name, built from setup and seeded by it."""
    return policy_class(name).build(setup)
