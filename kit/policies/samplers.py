"""Optuna's samplers as policies: every proposal sets every ranged knob; ask/tell with val_bpb, minimized.

Owns: `SamplerPolicy` (ask/tell over the knobs, the study's finished trials as its resumable state), `TPEPolicy`
and `CMAESPolicy`, and mapping a knob's declared range to an Optuna distribution.
Does not own: the knobs (kit/hyperparams.py) or writing the values into train.py (kit.edits.set_values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.trial import TrialState

from kit.hyperparams import Hyperparameter
from kit.policies.base import Outcome, Policy, Proposal, Setup, State

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the ledger records every trial already


@dataclass(frozen=True)
class SamplerConfig:
    tpe_startup_trials: int = 10
    """Random trials before TPE starts modelling."""
    significant_digits: int = 4
    """Floats the samplers propose are rounded to this many digits."""

    def __post_init__(self):
        for name in ("tpe_startup_trials", "significant_digits"):
            x = getattr(self, name)
            if not (isinstance(x, int) and x >= 1):
                raise ValueError(f"SamplerConfig.{name} must be an int >= 1, got {x=}")


class SamplerPolicy(Policy):
    """Ask/tell over the ranged knobs: each proposal assigns every knob; the objective is val_bpb, minimized."""

    name = "optuna"

    def __init__(self, knobs: list[Hyperparameter], seed: int = 0, config: SamplerConfig = SamplerConfig()):
        self.knobs = [k for k in knobs if k.has_range]
        if not self.knobs:
            raise ValueError(f"{type(self).__name__} needs ranged hyperparameters, got {len(knobs)=} with none ranged;"
                             " add ranges like '# transformer blocks [1, 16]'")
        self.seed, self.config = seed, config
        self.distributions = {k.name: distribution(k) for k in self.knobs}
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler(seed))
        self.pending: list[tuple[Proposal, Any]] = []  # proposals asked and not yet told, with their trials

    @classmethod
    def build(cls, setup: Setup) -> SamplerPolicy:
        return cls(setup.knobs, seed=setup.seed)

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
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

    def observe(self, outcome: Outcome) -> dict:
        for i, (p, trial) in enumerate(self.pending):
            if p is outcome.proposal:
                del self.pending[i]
                value = outcome.val_bpb
                ok = value is not None and math.isfinite(value)
                self.study.tell(trial, value if ok else None, state=None if ok else TrialState.FAIL)
                return {}
        raise ValueError(f"{self.name} did not propose this (or was already told about it): "
                         f"{outcome.proposal.description}")

    def add_result(self, values: dict[str, Any], val_bpb: float) -> None:
        """Record a run the policy did not propose (the baseline train.py, say), so the search starts from it."""
        params = {k.name: values[k.name] for k in self.knobs}
        self.study.add_trial(optuna.trial.create_trial(value=val_bpb, params=params, distributions=self.distributions))

    def state_dict(self) -> dict:
        """Finished trials as JSON (pending ones are dropped: the loop proposes again after a resume)."""
        trials = [{"state": t.state.name, "value": t.value, "params": t.params, "system_attrs": t.system_attrs,
                   "distributions": {n: distribution_to_json(d) for n, d in t.distributions.items()}}
                  for t in self.study.trials if t.state.is_finished()]
        return {"seed": self.seed, "trials": trials}

    def load_state_dict(self, d: dict) -> None:
        # a fresh sampler seeded from the history's length: deterministic, if not the uninterrupted sequence
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler(d["seed"] + len(d["trials"])))
        for t in d["trials"]:
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState[t["state"]], value=t["value"], params=t["params"], system_attrs=t["system_attrs"],
                distributions={n: json_to_distribution(s) for n, s in t["distributions"].items()}))
        self.pending = []


class TPEPolicy(SamplerPolicy):
    """Optuna's tree-structured Parzen estimator over the knobs."""

    name = "tpe"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.config.tpe_startup_trials)


class CMAESPolicy(SamplerPolicy):
    """Optuna's CMA-ES over the numeric knobs (choices and bools are sampled at random beside it); needs `cmaes`."""

    name = "cmaes"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def distribution(knob: Hyperparameter) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a knob's declared range (log scale for wide positive ranges)."""
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
