"""cmaes-llm: CMA-ES with a language model beside it, the strongest method of the published study on this task.

CMA-ES proposes every experiment. On a share of them (30 % by default, drawn with the policy's seed) the LLM at the
`llm` endpoint sees CMA-ES's search distribution (its mean and step size), its proposal and the best and recent
experiments, and may replace any of the proposal's values. The run is told to CMA-ES as a member of the generation
the proposal was asked for, with the values that ran: CMA-ES updates on an injected solution as on its own. A failed
or unusable reply leaves CMA-ES's proposal as it was, and the experiment's description says so.

Owns: the share, the prompt, reading the reply (NAME = value lines) and telling CMA-ES what ran instead.
Does not own: CMA-ES (kit/policies/samplers.py) or the request to the endpoint (kit/policies/llm.complete).
"""

from __future__ import annotations

import ast
import dataclasses
import random
import re
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna._transform import _SearchSpaceTransform
from optuna.trial import TrialState

from kit.hyperparams import _LITERAL_ERRORS, Hyperparameter
from kit.policies.base import Proposal, Setup, State
from kit.policies.llm import LLMConfig, LLMError, complete
from kit.policies.samplers import CMAESPolicy, SamplerConfig

SYSTEM = ("You help CMA-ES tune the hyperparameters of a small GPT pretraining script, train.py, for the lowest "
          "validation bits per byte (val_bpb) in a fixed training time. Answer only with NAME = value lines, or KEEP.")
DEFAULT_SHARE = 0.3
_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+?)\s*,?\s*$")


class HybridPolicy(CMAESPolicy):
    """CMA-ES whose proposals an LLM may override, on a share of the experiments."""

    name = "cmaes-llm"

    def __init__(self, knobs: list[Hyperparameter], llm: LLMConfig, seed: int = 0, share: float = DEFAULT_SHARE,
                 config: SamplerConfig = SamplerConfig(), sleep: Callable[[float], None] = time.sleep):
        if not 0 <= share <= 1:
            raise ValueError(f"the LLM's share of the proposals must be in [0, 1], got {share=}")
        super().__init__(knobs, seed=seed, config=config)
        self.llm, self.share, self.sleep = llm, share, sleep
        self.draws = random.Random(seed)

    @classmethod
    def build(cls, setup: Setup) -> HybridPolicy:
        if not (setup.llm_url and setup.llm_model):
            raise ValueError("the cmaes-llm hybrid needs an endpoint: give --llm-url URL and --llm-model NAME")
        return cls(setup.knobs, LLMConfig(url=setup.llm_url, model=setup.llm_model), seed=setup.seed,
                   share=setup.llm_share)

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.draws = random.Random(d["seed"] + len(d["trials"]))  # as the sampler is reseeded: from the history

    def propose(self, state: State) -> Proposal:
        proposal = super().propose(state)
        if self.draws.random() >= self.share:
            return proposal
        trial = self.pending[-1][1]
        try:
            reply = complete(self.llm, SYSTEM, self.prompt(state, proposal.values, trial), self.sleep)
            changes = parse_values(reply, self.knobs)
        except (LLMError, ValueError) as failure:
            return self.instead(dataclasses.replace(
                proposal, description=f"{proposal.description} (the LLM's reply was not used: {failure})"), False)
        values = {**proposal.values, **changes}
        if values == proposal.values:
            return self.instead(dataclasses.replace(proposal, description=f"{proposal.description} (the LLM kept it)"),
                                False)
        current = {k.name: k.value for k in state.knobs}
        changed = [f"{n} {current[n]!r} -> {v!r}" for n, v in values.items() if n in current and current[n] != v]
        return self.instead(Proposal(edit=None, values=values, action=None, logprob=0.0, value=0.0,
                                     description=f"{self.name} (LLM): " + (", ".join(changed) or "no change")), True)

    def prompt(self, state: State, proposed: dict[str, Any], trial: optuna.Trial) -> str:
        """What the LLM is shown: every knob (range, the kept value, CMA-ES's mean and proposal), the step size,
        and the best and recent experiments."""
        mean, sigma = self.search_distribution(trial)
        current = {k.name: k.value for k in state.knobs}
        lines = ["CMA-ES proposes the next experiment. Knobs: declared range, value in the kept train.py, CMA-ES's "
                 "mean, its proposal:"]
        for k in self.knobs:
            centre = f"{mean[k.name]:.4g}" if k.name in mean else "- (sampled at random)"
            scale = ", log scale" if k.log_scale else ""
            lines.append(f"  {k.name} {k.range_text}{scale}: kept {current.get(k.name)!r}, mean {centre}, "
                         f"proposed {proposed[k.name]!r}")
        lines += [f"CMA-ES's step size: {sigma:.3g} of each numeric knob's range (on its scale).", "",
                  state.memory.render() if state.memory is not None else "No experiments yet.", "",
                  "Reply with the values to run instead, one line each as NAME = value, only for the knobs you would "
                  "change (the others run as CMA-ES proposes), values inside their ranges; or reply KEEP."]
        return "\n".join(lines)

    def search_distribution(self, trial: optuna.Trial) -> tuple[dict[str, float], float]:
        """CMA-ES's mean (in knob values) and step size as they stand for the trial it was just asked: its state is
        pickled on the trials (Optuna's internals, pinned in requirements.txt), and before the first generation is
        told it is the start, train.py's values and sigma0."""
        sampler = self.study.sampler
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state is TrialState.COMPLETE] + [trials[trial.number]]
        optimizer = sampler._restore_optimizer(finished)
        if optimizer is None:
            return {name: float(v) for name, v in sampler._x0.items()}, self.config.cmaes_sigma0
        space = sampler.infer_relative_search_space(self.study, trials[trial.number])
        mean = _SearchSpaceTransform(space, transform_step=True, transform_0_1=True).untransform(optimizer.mean)
        return {name: float(v) for name, v in mean.items()}, float(optimizer._sigma)


def parse_values(reply: str, knobs: list[Hyperparameter]) -> dict[str, Any]:
    """The NAME = value lines of a reply, each a knob with a value inside its declared range; {} for KEEP.
    ValueError (one line, saying which) for a reply with neither, an unknown name or a value out of range."""
    by_name = {k.name: k for k in knobs}
    values: dict[str, Any] = {}
    for line in reply.replace("`", "").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name, text = match.groups()
        if name not in by_name:
            raise ValueError(f"the reply sets {name}, which is not a ranged knob of train.py")
        try:
            value = ast.literal_eval(text)
        except _LITERAL_ERRORS:  # the reply is anybody's text: a deeply nested one must not end the loop
            raise ValueError(f"the reply's value for {name} is not a literal: {text[:40]!r}") from None
        knob = by_name[name]
        if knob.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if knob.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not knob.in_range(value):
            raise ValueError(f"the reply's {name} = {value!r} is outside its range {knob.range_text}")
        values[name] = value
    if not values and "KEEP" not in reply.upper():
        raise ValueError("the reply has no NAME = value line and does not say KEEP")
    return values
