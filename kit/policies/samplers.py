"""Optuna's samplers as policies: every proposal sets every ranged knob; ask/tell with val_bpb, minimized.

Set up as an Optuna user with a working baseline sets them up: the runs of train.py the loop made itself (the noise
floor, a near miss's re-runs) are added to the study as finished trials before and while the sampler proposes; CMA-ES
starts at train.py's values with a step of a tenth of each (scaled) range; ranges that span an order of magnitude are
searched on a log scale; a failed run is a FAIL trial; a duplicate proposal is told the value of the runs it
repeats; a pruned run is told as the val_bpb its stop rule forecast (SamplerConfig.pruned_as; as a PRUNED trial
CMA-ES and the GP would drop it, and TPE would only rank it below every finished one).

Owns: `SamplerPolicy` (the ask/tell wiring, the study's finished trials as its resumable state), `TPEPolicy`,
`CMAESPolicy` and `GPPolicy`, and mapping a knob's declared range to an Optuna distribution.
Does not own: the knobs (kit/hyperparams.py) or writing the values into train.py (kit.edits.set_values).
"""

from __future__ import annotations

import math
import warnings
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


PRUNED_AS = ("forecast", "pruned")


@dataclass(frozen=True)
class SamplerConfig:
    startup_trials: int = 10
    """Finished trials before TPE or the GP starts modelling (Optuna's default); the loop's own runs count."""
    cmaes_sigma0: float = 0.1
    """CMA-ES's initial step size as a share of every knob's scaled range (it starts at train.py's values)."""
    significant_digits: int = 4
    """Floats the samplers propose are rounded to this many digits."""
    pruned_as: str = "forecast"
    """How a run the stop rule ended early is told: "forecast", a finished trial at the val_bpb forecast for its
    end, or "pruned", Optuna's PRUNED state with the forecast as its last intermediate value (what an Optuna user's
    pruner leaves). bench/pruned_trials.md measured no difference between them on the tabular world."""

    def __post_init__(self):
        for name in ("startup_trials", "significant_digits"):
            x = getattr(self, name)
            if not (isinstance(x, int) and x >= 1):
                raise ValueError(f"SamplerConfig.{name} must be an int >= 1, got {x=}")
        if self.pruned_as not in PRUNED_AS:
            raise ValueError(f"SamplerConfig.pruned_as is one of {PRUNED_AS}, got {self.pruned_as=}")
        if not 0 < self.cmaes_sigma0 <= 1:
            raise ValueError(f"SamplerConfig.cmaes_sigma0 is a share of a range, in (0, 1], got {self.cmaes_sigma0=}")


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
                value = self._repeated(p.values) if outcome.duplicate else outcome.val_bpb
                self._tell(trial, p.values, value if value is not None and math.isfinite(value) else None,
                           outcome.pruned and self.config.pruned_as == "pruned")
                return {}
        # proposed before a resume (its trial went with the process): what it found joins the study all the same
        if outcome.proposal.values is not None and not outcome.duplicate and not outcome.pruned:
            self._add_finished(outcome.proposal.values, outcome.val_bpb)
        return {}

    def _tell(self, trial: optuna.Trial, values: dict[str, Any], value: float | None, pruned: bool) -> None:
        """The asked trial's end: its value, FAIL (None) for a run that gave none, or PRUNED at its forecast."""
        if pruned:
            if value is not None:
                trial.report(value, step=0)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, value, state=None if value is not None else TrialState.FAIL)

    def _repeated(self, values: dict[str, Any]) -> float | None:
        """The mean value of the finished trials at these values: what a duplicate proposal is told, as an Optuna user
        returns the earlier result for repeated parameters (told as a failure, it would be ignored by the GP and
        CMA-ES, which could then propose the same point again and again)."""
        digits = self.config.significant_digits
        told = [t.value for t in self.study.trials if t.state is TrialState.COMPLETE
                and all(k.name in t.params and _tidy(k, t.params[k.name], digits) == values.get(k.name)
                        for k in self.knobs)]
        return sum(told) / len(told) if told else None

    def witness(self, knobs: list[Hyperparameter], val_bpb: float | None) -> None:
        """A finished run it did not propose becomes a finished trial of the study (train.py's values outside their
        declared ranges are no point of this search space, and a failed run says nothing about one)."""
        self._add_finished({k.name: k.value for k in knobs}, val_bpb)

    def _add_finished(self, values: dict[str, Any], val_bpb: float | None) -> None:
        if val_bpb is None or not math.isfinite(val_bpb) or not set(self.distributions) <= set(values):
            return
        params = {name: values[name] for name in self.distributions}
        try:
            trial = optuna.trial.create_trial(value=val_bpb, params=params, distributions=self.distributions)
        except ValueError:
            return
        self.study.add_trial(trial)

    def state_dict(self) -> dict:
        """Finished trials as JSON (pending ones are dropped: the loop proposes again after a resume)."""
        trials = [{"state": t.state.name, "value": t.value, "params": t.params, "system_attrs": t.system_attrs,
                   "intermediate": {str(step): v for step, v in t.intermediate_values.items()},
                   "distributions": {n: distribution_to_json(d) for n, d in t.distributions.items()}}
                  for t in self.study.trials if t.state.is_finished()]
        return {"seed": self.seed, "trials": trials}

    def load_state_dict(self, d: dict) -> None:
        # a fresh sampler seeded from the history's length: deterministic, if not the uninterrupted sequence
        self.study = optuna.create_study(direction="minimize", sampler=self._sampler(d["seed"] + len(d["trials"])))
        for t in d["trials"]:
            self.study.add_trial(optuna.trial.create_trial(
                state=TrialState[t["state"]], value=t["value"], params=t["params"], system_attrs=t["system_attrs"],
                intermediate_values={int(step): v for step, v in t.get("intermediate", {}).items()},
                distributions={n: json_to_distribution(s) for n, s in t["distributions"].items()}))
        self.pending = []


class TPEPolicy(SamplerPolicy):
    """Optuna's tree-structured Parzen estimator over the knobs."""

    name = "tpe"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.config.startup_trials)


class CMAESPolicy(SamplerPolicy):
    """Optuna's CMA-ES over the numeric knobs, centred on train.py's values (choices and bools are sampled at random
    beside it); needs `cmaes`."""

    name = "cmaes"

    def __init__(self, knobs: list[Hyperparameter], seed: int = 0, config: SamplerConfig = SamplerConfig()):
        super().__init__(knobs, seed=seed, config=config)
        self.replaced: set[int] = set()  # numbers of the trials that ran other values than CMA-ES sampled

    def instead(self, proposal: Proposal, replaced: bool) -> Proposal:
        """proposal in place of the one just asked (outcomes are matched to the proposal they are told of);
        replaced: its values are not the ones CMA-ES sampled, and it is told as what ran in that trial's place."""
        trial = self.pending[-1][1]
        self.pending[-1] = (proposal, trial)
        if replaced:
            self.replaced.add(trial.number)
        return proposal

    def _tell(self, trial: optuna.Trial, values: dict[str, Any], value: float | None, pruned: bool) -> None:
        if trial.number not in self.replaced:
            return super()._tell(trial, values, value, pruned)
        self.replaced.discard(trial.number)
        # CMA-ES keeps its generation (and, on some trials, its pickled state) in the system attributes of the
        # trial it asked: the values that ran go into a copy of that trial, and the asked one, which never ran, fails;
        # CMA-ES then updates on them as on its own sample
        attrs = self.study.trials[trial.number].system_attrs
        self.study.tell(trial, None, state=TrialState.FAIL)
        if value is not None:
            params = {name: values[name] for name in self.distributions}
            state = TrialState.PRUNED if pruned else TrialState.COMPLETE
            self.study.add_trial(optuna.trial.create_trial(state=state, value=value, params=params,
                                                           intermediate_values={0: value} if pruned else None,
                                                           system_attrs=attrs, distributions=self.distributions))

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.replaced = set()

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        x0 = {k.name: min(max(k.value, k.low), k.high) for k in self.knobs
              if k.choices is None and isinstance(k.value, int | float)}
        with warnings.catch_warnings():  # Optuna 5 marks x0 and sigma0 deprecated; they are supported until 6
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.CmaEsSampler(x0=x0, sigma0=self.config.cmaes_sigma0, seed=seed,
                                                warn_independent_sampling=False)


class GPPolicy(SamplerPolicy):
    """Optuna's Gaussian-process sampler (expected improvement) over the knobs."""

    name = "gp"

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.config.startup_trials,
                                         warn_independent_sampling=False)


def distribution(knob: Hyperparameter) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a knob's declared range (on a log scale where Hyperparameter.log_scale says)."""
    if knob.choices is not None:
        return CategoricalDistribution(list(knob.choices))
    if knob.kind == "int":
        return IntDistribution(int(knob.low), int(knob.high), log=knob.log_scale)
    return FloatDistribution(float(knob.low), float(knob.high), log=knob.log_scale)


def _tidy(knob: Hyperparameter, value: Any, digits: int) -> Any:
    """Round a sampled float to `digits` significant digits, kept inside the knob's range."""
    if knob.kind != "float" or value == 0:
        return value
    rounded = float(f"{value:.{digits}g}")
    return min(max(rounded, knob.low), knob.high)
