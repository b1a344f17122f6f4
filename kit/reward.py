"""What one experiment is worth to the policy: the progress it made, or the source's composite; a penalty for failures.

Owns: `RewardConfig` (which reward, its weights and penalties) and `compute_reward`, a pure function of what a run
reported and what the loop decided.

`progress` (the default) pays for what the loop keeps. A run the acceptance rule keeps earns
gain_scale * log(incumbent mean before / its own mean), the confirmed gain; every finished or pruned run pays
compute_cost per budget's worth of seconds it took; a worse run earns nothing else. A near miss's re-runs pay their
compute, and the one that confirms the keep earns the gain, so the proposal is told the sum once it is settled.
Summed over a research run this is gain_scale * log(baseline / the incumbent it ends with) less the compute spent:
the objective itself, and an episode is one research run. PPO discounts it all the same (kit.ppo.PPOConfig.gamma =
0.9, about ten experiments ahead): an edit caused its own gain and perhaps the next few, while crediting it with the
whole rest of the run left the critic unable to predict anything (bench/pretrain.md).

`composite` is the source's: a finished (`ok`) run earns

    accuracy   * log(incumbent / val_bpb)                      0 on the first run (no incumbent)
  + efficiency * (1 - min(1, total_seconds / budget))          faster runs earn more
  + stability  * exp(-var(loss over the curve's last stability_window)),   0 with fewer than 2 points or a NaN loss

a `pruned` run the same with the predictor's forecast in place of val_bpb, plus the early-stop bonus (or, with
credit_early_stops off, only the forecast's accuracy and the stability), and a re-run nothing. It pays runs that made
things worse (a fast, stable, worse run earns more than nothing) and pays a proposal for being bad enough to stop,
which is why it is no longer the default.

Under both, `crash`, `timeout`, `rejected` and `tampered` earn their penalty, and a duplicate adds its penalty to
whatever the status earned. Every term is recorded in `Reward.parts`; the total is their sum and always finite.
Does not own: deciding acceptance (kit.acceptance), the forecast (kit.predictor), or duplicate detection (kit.memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kit.results import FAILURES, Status

REWARDS = ("progress", "composite")


@dataclass(frozen=True)
class RewardConfig:
    """Which reward, the weights of its terms and the penalties of failures."""

    kind: str = "progress"
    """progress: the confirmed gain of the incumbent, less the compute spent; composite: the source's reward."""
    gain_scale: float = 100.0
    """progress: the factor on log(incumbent before / after), so a kept 1 % gain earns about 1."""
    noise_free: bool = False
    """progress, on a simulated world that knows each train.py's noise-free val_bpb (kit/bench/): a kept run earns
    the gain that is really there, log(noise-free val_bpb of the incumbent before / of the kept train.py) and nothing
    when noise fooled the acceptance rule, not the measured one. Pre-training (kit/bench/pretrain.py) uses it, so the
    policy learns what helps rather than what was lucky; a real run measures, and cannot."""
    compute_cost: float = 0.01
    """progress: what a run of one budget's length costs (a hundredth of a 1 % gain): with it, of two ways to the
    same gain the cheaper one earns more, and it is too small to make a hopeless, quickly stopped run worth
    proposing."""
    accuracy: float = 0.7
    """Weight of log(incumbent / val_bpb): the relative improvement over the incumbent."""
    efficiency: float = 0.2
    """Weight of the unused share of the time budget."""
    stability: float = 0.1
    """Weight of exp(-variance of the loss at the curve's end)."""
    timeout: float = -2.0
    """Reward of a run killed by the wall clock."""
    rejected: float = -1.0
    """Reward of a train.py the gate refused."""
    crash: float = -1.0
    """Reward of a run that failed (or an ok run without a usable val_bpb)."""
    duplicate: float = -0.5
    """Added when the code was already tried (normalized-code hash seen before)."""
    tampered: float = -2.0
    """Reward of a run that touched frozen files or cheated the evaluation."""
    early_stop_bonus: float = 0.1
    """Added to a pruned run: stopping a hopeless run early saves budget."""
    credit_early_stops: bool = True
    """Whether a pruned run's saved time (the efficiency term) and the early-stop bonus count toward its reward.
    The paper's agent decides itself when to stop, so it earns them. In this kit a stop rule decides, and the
    policy only proposes; crediting it pays the proposal for being bad enough to stop. False gives a pruned run
    the efficiency of a full run (0) and no bonus: only its forecast accuracy and stability count."""
    stability_window: float = 0.2
    """Fraction of the curve's last points whose loss variance is measured (at least 2 points)."""

    def __post_init__(self) -> None:
        if self.kind not in REWARDS:
            raise ValueError(f"RewardConfig.kind must be one of {', '.join(REWARDS)}, got {self.kind=}")
        for name in ("gain_scale", "compute_cost", "accuracy", "efficiency", "stability", "early_stop_bonus"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RewardConfig.{name} must be finite and >= 0, got {value=}")
        for name in ("timeout", "rejected", "crash", "duplicate", "tampered"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value <= 0):
                raise ValueError(f"RewardConfig.{name} is a penalty: finite and <= 0, got {value=}")
        if not 0 < self.stability_window <= 1:
            raise ValueError(f"RewardConfig.stability_window must be in (0, 1], got {self.stability_window=}")


@dataclass(frozen=True)
class Reward:
    """The total reward and the terms it is the sum of."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)


def _float(x: object) -> float:
    """x as a float; NaN when it is None or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _positive(x: float | None) -> float | None:
    """x as a float when it is a usable val_bpb (finite, > 0), else None."""
    x = _float(x)
    return x if math.isfinite(x) and x > 0 else None


def stability_score(curve: list[tuple[float, float]], window: float) -> float:
    """exp(-var(loss)) over the last `window` fraction of the curve's points (at least 2); 0 if undefined."""
    if len(curve) < 2:
        return 0.0
    n = max(2, math.ceil(window * len(curve)))
    losses = np.array([_float(loss) for _, loss in curve[-n:]], dtype=np.float64)
    if not np.all(np.isfinite(losses)):
        return 0.0  # a diverged loss is the opposite of stable
    return math.exp(-float(np.var(losses)))


def efficiency_score(total_seconds: float | None, budget: float) -> float:
    """1 - min(1, total_seconds / budget): the unused share of the budget; 0 when the time is unknown."""
    total_seconds = _float(total_seconds)
    if not math.isfinite(total_seconds):
        return 0.0
    return 1.0 - min(1.0, max(0.0, total_seconds / budget))


def compute_cost_share(total_seconds: float | None, budget: float) -> float:
    """total_seconds / budget: the compute a run took, in budgets; a whole budget when the time is unknown."""
    total_seconds = _float(total_seconds)
    return max(0.0, total_seconds / budget) if math.isfinite(total_seconds) else 1.0


def compute_reward(status: str, val_bpb: float | None, incumbent: float | None, total_seconds: float, budget: float,
                   curve: list[tuple[float, float]], predicted: float | None = None, duplicate: bool = False,
                   config: RewardConfig = RewardConfig(), gain: float = 0.0, rerun: bool = False) -> Reward:
    """The reward of one experiment (see the module docstring); status is a kit.results.Status value. gain is
    log(incumbent mean before / after) when the loop kept this run, else 0; rerun says the run is a near miss's
    re-run under a new seed, not a proposal."""
    if status not in tuple(Status):
        raise ValueError(f"status must be one of {[s.value for s in Status]}, got {status=}")
    if not (math.isfinite(_float(budget)) and budget > 0):
        raise ValueError(f"budget must be positive seconds, got {budget=}")
    if not (math.isfinite(_float(gain)) and gain >= 0):
        raise ValueError(f"gain is the log-ratio of a kept improvement, finite and >= 0, got {gain=}")
    status = Status(status)
    parts: dict[str, float] = {}
    if status == Status.OK and _positive(val_bpb) is None:
        parts["crash"] = config.crash  # "ok" without a usable val_bpb is a failure the harness missed
    elif status in (Status.OK, Status.PRUNED):
        if config.kind == "progress":
            parts["compute"] = -config.compute_cost * compute_cost_share(total_seconds, budget)
            if gain > 0:
                parts["progress"] = config.gain_scale * gain
        elif not rerun:
            parts.update(_composite(status, val_bpb, incumbent, total_seconds, budget, curve, predicted, config))
    else:
        assert status in FAILURES
        parts[status.value] = getattr(config, status.value)
    if duplicate:
        parts["duplicate"] = config.duplicate
    parts = {name: value if math.isfinite(value) else 0.0 for name, value in parts.items()}
    return Reward(total=float(sum(parts.values())), parts=parts)


def _composite(status: Status, val_bpb: float | None, incumbent: float | None, total_seconds: float, budget: float,
               curve: list[tuple[float, float]], predicted: float | None, config: RewardConfig) -> dict[str, float]:
    """The source's terms of a finished or pruned run."""
    final = _positive(val_bpb)
    if status == Status.PRUNED:
        final = _positive(predicted) or final  # the forecast stands in for the value the run did not reach
    reference = _positive(incumbent)
    accuracy = math.log(reference / final) if reference is not None and final is not None else 0.0
    credited = status == Status.OK or config.credit_early_stops
    parts = {"accuracy": config.accuracy * accuracy,
             "efficiency": config.efficiency * efficiency_score(total_seconds, budget) if credited else 0.0,
             "stability": config.stability * stability_score(list(curve or ()), config.stability_window)}
    if status == Status.PRUNED and config.credit_early_stops:
        parts["early_stop"] = config.early_stop_bonus
    return parts
