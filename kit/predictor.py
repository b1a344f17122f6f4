"""Self-evaluation: forecast where a running experiment's learning curve ends, and stop it if it will not win.

Owns: the power-law fit L(u) = a·u^-b + c (u = share of the budget spent), the stop rules behind one interface
(`should_stop(curve, incumbent) -> Decision`), and `EarlyStopper`, the harness monitor that asks the active rule
at fixed points of the budget and keeps every decision for the ledger.
Does not own: running or killing anything (kit/harness.py), choosing the incumbent (kit/run_state.py).

The curve is train.py's training loss per step; val_bpb is measured on other data by another process. A rule
therefore compares a run with the incumbent's *curve*, and maps a forecast loss to val_bpb through the
incumbent's own ratio of val_bpb to final loss. The learning-rate warm-down at the end of the budget bends
every curve down in a way a fit made before it cannot see; the equal-progress rules cancel that by comparing a
run with what the same forecast said of the incumbent at the same point of its budget.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

FINAL_WINDOW = 0.05
"""The final loss of a curve is its mean over this last share of the budget (one step's loss is noisy)."""


@dataclass(frozen=True)
class Decision:
    """A rule's verdict at one check: stop or not, the forecast val_bpb (None if it makes none), and why."""

    stop: bool
    predicted: float | None
    reason: str
    progress: float = 0.0
    predicted_loss: float | None = None

    def to_json(self) -> dict:
        return {"progress": round(self.progress, 4), "stop": self.stop, "predicted": _rounded(self.predicted),
                "predicted_loss": _rounded(self.predicted_loss), "reason": self.reason}


def _rounded(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 5)


@dataclass(frozen=True, eq=False)
class Reference:
    """The run to beat: its recorded curve, its val_bpb and the training seconds it had. margin is how much a run
    must beat val_bpb by to be kept (the loop's noise margin): a run that will not clear that bar is not worth
    finishing, even if it ends a little below the incumbent."""

    curve: tuple[tuple[float, float], ...]
    val_bpb: float
    budget: float
    margin: float = 0.0

    @functools.cached_property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return as_arrays(self.curve, self.budget)

    @functools.cached_property
    def final_loss(self) -> float:
        u, y = self.points
        tail = y[u >= 1 - FINAL_WINDOW]
        return float(tail.mean()) if len(tail) else float(y[-1])

    def to_val_bpb(self, loss: float) -> float:
        """A final training loss in val_bpb, by the incumbent's own ratio of the two."""
        return self.val_bpb * loss / self.final_loss

    @property
    def bar(self) -> float:
        """The val_bpb a run must end below to be kept."""
        return self.val_bpb - self.margin

    @property
    def margin_loss(self) -> float:
        """The margin in training-loss units, by the same ratio."""
        return self.margin * self.final_loss / self.val_bpb


def as_arrays(curve, budget: float) -> tuple[np.ndarray, np.ndarray]:
    """(progress, loss) arrays of a curve, non-finite losses dropped."""
    data = np.asarray(curve, dtype=np.float64).reshape(-1, 2)
    data = data[np.isfinite(data).all(axis=1)]
    return data[:, 0] / budget, data[:, 1]


MIN_WINDOW_POINTS = 3
"""A comparison window holds at least this many of a run's points: a run that makes few steps would otherwise have
one point in it, whose standard error is infinite, and no rule could ever stop it."""


def window_width(end: float, width: float, *curves: np.ndarray, min_points: int = MIN_WINDOW_POINTS) -> float:
    """width, or wider: wide enough that (end - width, end] holds min_points of each curve's progress u (all of a
    curve's points up to end where it has fewer). Runs compared at a progress are compared over the same stretch."""
    for u in curves:
        upto = u[u <= end]
        if len(upto):
            first = upto[-min(min_points, len(upto))]
            width = max(width, (end - first) * (1 + 1e-9) + 1e-12)  # the window is open at its start
    return width


def window_mean(u: np.ndarray, y: np.ndarray, end: float, width: float) -> tuple[float, float, int]:
    """Mean, standard error and count of the losses with progress in (end - width, end]."""
    y = y[(u > end - width) & (u <= end)]
    if len(y) == 0:
        return math.nan, math.inf, 0
    se = float(y.std(ddof=1) / math.sqrt(len(y))) if len(y) > 1 else math.inf
    return float(y.mean()), se, len(y)


# ---------------------------------------------------------------------------
# The power law
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """L(u) = a·u^-b + c with a, b, c >= 0, fitted by least squares; cov from the Jacobian at the optimum."""

    a: float
    b: float
    c: float
    sigma: float
    cov: np.ndarray

    def __call__(self, u: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(u, -self.b) + self.c

    def stderr(self, u: float) -> float:
        """Standard error of L(u) by the delta method (the fit's noise only, not the model's error)."""
        g = np.array([u ** -self.b, -self.a * math.log(u) * u ** -self.b, 1.0])
        return float(math.sqrt(max(g @ self.cov @ g, 0.0)))


def _solve_ac(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares of y ~ a·x + c with a, c >= 0; returns (a, c, sum of squared errors)."""
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    a = float(((x - xm) * (y - ym)).sum() / sxx) if sxx > 0 else 0.0
    c = float(ym - a * xm)
    if a < 0:
        a, c = 0.0, float(ym)
    if c < 0:
        c, a = 0.0, float(max((x @ y) / (x @ x), 0.0))
    sse = float(((a * x + c - y) ** 2).sum())
    return a, c, sse


def fit_power_law(u: np.ndarray, y: np.ndarray, max_points: int = 256) -> PowerLaw:
    """Fit L(u) = a·u^-b + c to points with u > 0: b by a grid then golden-section search, a and c in closed form
    for each b. More than max_points points are fitted as that many equal-count bin means, each compared with the
    bin's mean of u^-b (not L at the mean u, which is biased where the curve is steep)."""
    from scipy.optimize import minimize_scalar

    keep = (u > 0) & np.isfinite(y)
    order = np.argsort(u[keep], kind="stable")
    u, y = u[keep][order], y[keep][order]
    if len(u) < 4:
        raise ValueError(f"a power-law fit needs at least 4 points, got {len(u)}")
    starts = np.array([len(chunk) for chunk in np.array_split(np.arange(len(u)), min(max_points, len(u)))])
    starts = np.concatenate([[0], np.cumsum(starts)[:-1]])
    counts = np.diff(np.append(starts, len(u)))
    log_u = np.log(u)
    y_bins = np.add.reduceat(y, starts) / counts

    def bin_mean(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts) / counts

    def sse(log_b: float) -> float:
        return _solve_ac(bin_mean(np.exp(-math.exp(log_b) * log_u)), y_bins)[2]

    grid = np.linspace(math.log(1e-3), math.log(5.0), 41)
    best = int(np.argmin([sse(g) for g in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    log_b = minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}).x
    b = math.exp(log_b)
    powers = np.exp(-b * log_u)
    x = bin_mean(powers)
    a, c, error = _solve_ac(x, y_bins)
    sigma = math.sqrt(error / max(len(x) - 3, 1))
    jacobian = np.stack([x, -a * bin_mean(log_u * powers), np.ones_like(x)], axis=1)
    cov = sigma ** 2 * np.linalg.pinv(jacobian.T @ jacobian)
    return PowerLaw(a, b, c, sigma, cov)


# ---------------------------------------------------------------------------
# Stop rules
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckConfig:
    """When a rule is asked: at min_progress, then every interval of the budget."""

    interval: float = 0.05
    min_progress: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.interval <= 1 and 0 <= self.min_progress < 1):
            raise ValueError(f"interval must be in (0, 1] and min_progress in [0, 1), got {self.interval=}, "
                             f"{self.min_progress=}")


@dataclass(frozen=True)
class PowerLawConfig(CheckConfig):
    """The source's rule: fit the power law to the curve so far and stop when the forecast final loss is worse than
    the incumbent's by more than tolerance + z standard errors. equal_progress compares with the forecast the same
    fit made of the incumbent at the same progress (which cancels the warm-down the fit cannot see)."""

    interval: float = 0.1
    tolerance: float = 0.0
    z: float = 2.0
    equal_progress: bool = True
    fit_start: float = 0.02
    """Points before this share of the budget (the first, near-random steps) are left out of the fit."""


@dataclass(frozen=True)
class LinearConfig(CheckConfig):
    """The production write-up's rule: a line through the last `window` checks' losses, extrapolated to the end of
    the budget; stop when it lands above margin × the incumbent's final loss."""

    window: int = 5
    margin: float = 1.15


@dataclass(frozen=True)
class SameProgressConfig(CheckConfig):
    """Compare the run's mean loss over the last `width` of the budget with the incumbent's over the same stretch;
    stop when it is worse by more than tolerance + z standard errors."""

    width: float = 0.05
    tolerance: float = 0.0
    z: float = 8.0
    """High, because the standard error of a window's mean sees only step-to-step noise, not how much curves cross
    later; 8 is the least of the settings benchmarked (bench/early_stopping.md) that stopped no run the loop would
    have kept."""


class Rule:
    """A stop rule for runs of a fixed budget (seconds). should_stop never stops without an incumbent."""

    config: CheckConfig

    def __init__(self, budget: float, config: CheckConfig | None = None):
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be positive seconds, got {budget=}")
        self.budget = float(budget)
        self.config = config or type(self).config

    def should_stop(self, curve, incumbent: Reference | None) -> Decision:
        u, y = as_arrays(curve, self.budget)
        progress = float(u[-1]) if len(u) else 0.0
        if incumbent is None or len(u) < 4:
            return Decision(False, None, "no incumbent to compare with" if incumbent is None else "too few points",
                            progress)
        return replace(self._decide(u, y, incumbent), progress=progress)

    def _decide(self, u: np.ndarray, y: np.ndarray, incumbent: Reference) -> Decision:
        raise NotImplementedError

    def learn(self, finished: Reference) -> None:
        """Told of every run that finished with a val_bpb (the loop's and the replay's); most rules ignore it."""


class PowerLawRule(Rule):
    config = PowerLawConfig()

    def __init__(self, budget: float, config: PowerLawConfig | None = None):
        super().__init__(budget, config)
        self._fits: dict[bytes, PowerLaw] = {}

    def _fit(self, u: np.ndarray, y: np.ndarray) -> PowerLaw:
        """The fit of the points past fit_start, remembered: the incumbent's prefix at a check point is asked for by
        every run that meets it, and a replayed run's prefix by every order it is replayed in."""
        keep = u >= self.config.fit_start
        u, y = u[keep], y[keep]
        key = hashlib.blake2b(u.tobytes() + y.tobytes(), digest_size=16).digest()
        if key not in self._fits:
            if len(self._fits) > 1 << 16:
                self._fits.clear()
            self._fits[key] = fit_power_law(u, y)
        return self._fits[key]

    def _decide(self, u, y, incumbent):
        c: PowerLawConfig = self.config
        if (u >= c.fit_start).sum() < 4:
            return Decision(False, None, "too few points to fit")
        fit = self._fit(u, y)
        forecast, se = float(fit(1.0)), fit.stderr(1.0)
        if c.equal_progress:
            ref_u, ref_y = incumbent.points
            seen = ref_u <= u[-1]
            if (ref_u[seen] >= c.fit_start).sum() < 4:
                return Decision(False, None, "too few incumbent points to fit")
            ref = self._fit(ref_u[seen], ref_y[seen])
            ref_forecast, ref_se = float(ref(1.0)), ref.stderr(1.0)
            predicted_loss = incumbent.final_loss + forecast - ref_forecast  # the incumbent's warm-down drop added
            gap, noise = forecast - ref_forecast, math.hypot(se, ref_se)
        else:
            predicted_loss = forecast
            gap, noise = forecast - incumbent.final_loss, se
        predicted = incumbent.to_val_bpb(predicted_loss)
        stop = gap > c.tolerance - incumbent.margin_loss + c.z * noise
        verb = "stop" if stop else "go on"
        bar = f", must beat it by {incumbent.margin_loss:.4f} to be kept" if incumbent.margin else ""
        return Decision(stop, predicted, f"{verb}: forecast loss {predicted_loss:.4f} vs incumbent "
                        f"{incumbent.final_loss:.4f} (gap {gap:+.4f}, ±{noise:.4f}{bar})",
                        predicted_loss=predicted_loss)


class LinearRule(Rule):
    config = LinearConfig()

    def _decide(self, u, y, incumbent):
        c: LinearConfig = self.config
        now = float(u[-1])
        checks = [p for p in np.arange(c.min_progress, now + 1e-9, c.interval)][-c.window:]
        if len(checks) < max(c.window, 2):
            return Decision(False, None, f"fewer than {c.window} checks so far")
        width = max(window_width(p, c.interval, u) for p in checks)
        means = [window_mean(u, y, p, width)[0] for p in checks]
        if not all(math.isfinite(m) for m in means):
            return Decision(False, None, "a check without points")
        slope, intercept = np.polyfit(checks, means, 1)
        predicted_loss = float(slope + intercept)
        bar_loss = incumbent.final_loss - incumbent.margin_loss
        stop = predicted_loss > c.margin * bar_loss
        return Decision(stop, incumbent.to_val_bpb(predicted_loss),
                        f"{'stop' if stop else 'go on'}: line to the end {predicted_loss:.4f} vs {c.margin:g} × "
                        f"the bar {bar_loss:.4f}", predicted_loss=predicted_loss)


class SameProgressRule(Rule):
    config = SameProgressConfig()

    def _decide(self, u, y, incumbent):
        c: SameProgressConfig = self.config
        now = float(u[-1])
        width = window_width(now, c.width, u, incumbent.points[0])
        mine, my_se, _ = window_mean(u, y, now, width)
        theirs, their_se, _ = window_mean(*incumbent.points, now, width)
        if not (math.isfinite(mine) and math.isfinite(theirs)):
            return Decision(False, None, "no points to compare at this progress")
        gap, noise = mine - theirs, math.hypot(my_se, their_se)
        predicted_loss = incumbent.final_loss + gap  # the gap, if it stays as it is
        stop = gap > c.tolerance - incumbent.margin_loss + c.z * noise
        bar = f", must beat it by {incumbent.margin_loss:.4f} to be kept" if incumbent.margin else ""
        return Decision(stop, incumbent.to_val_bpb(predicted_loss),
                        f"{'stop' if stop else 'go on'}: loss {mine:.4f} vs incumbent {theirs:.4f} at "
                        f"{now:.0%} of the budget (gap {gap:+.4f}, ±{noise:.4f}{bar})",
                        predicted_loss=predicted_loss)


@dataclass(frozen=True)
class CalibratedConfig(CheckConfig):
    """Learn from the runs that finished how a loss gap at a given share of the budget turns into a val_bpb gap at
    the end: over every pair of finished runs, val_bpb difference ≈ slope × difference of their mean losses over
    the last `width` of the budget at that progress. Stop when the run's predicted val_bpb minus z residual
    standard deviations is still worse than the incumbent's. Says nothing until min_history runs have finished."""

    width: float = 0.05
    z: float = 2.0
    min_history: int = 8


class CalibratedRule(Rule):
    """Same-progress comparison whose margin is learned from the loop's own finished runs: where curves of this
    train.py tend to cross late (warm-down, large learning rates, bigger models), the residuals are wide and the
    rule waits; where the order at this progress holds to the end, it stops early."""

    config = CalibratedConfig()

    def __init__(self, budget: float, config: CalibratedConfig | None = None):
        super().__init__(budget, config)
        self.history: list[Reference] = []
        self._fits: dict[tuple[int, float, float], tuple[float, float]] = {}

    def learn(self, finished: Reference) -> None:
        if math.isfinite(finished.val_bpb) and len(finished.curve) >= 4:
            self.history.append(finished)

    def _model(self, progress: float, width: float) -> tuple[float, float] | None:
        """(slope, residual sd) of val_bpb gap on loss gap over pairs of finished runs at this progress, their mean
        losses taken over the last `width` of the budget before it."""
        key = (len(self.history), round(progress, 3), round(width, 6))
        if key not in self._fits:
            if len(self._fits) > 1 << 14:
                self._fits.clear()
            means, values = [], []
            for ref in self.history:
                m = window_mean(*ref.points, progress, width)[0]
                if math.isfinite(m):
                    means.append(m)
                    values.append(ref.val_bpb)
            if len(means) < self.config.min_history:
                return None
            x = np.subtract.outer(means, means)[np.triu_indices(len(means), 1)]
            v = np.subtract.outer(values, values)[np.triu_indices(len(means), 1)]
            slope = float(x @ v / (x @ x)) if x @ x > 0 else 0.0  # through the origin: the pair order is arbitrary
            self._fits[key] = (slope, float(np.sqrt(np.mean((v - slope * x) ** 2))))
        return self._fits[key]

    def _decide(self, u, y, incumbent):
        c: CalibratedConfig = self.config
        now = float(u[-1])
        width = window_width(now, c.width, u, incumbent.points[0])
        model = self._model(now, width)
        if model is None:
            return Decision(False, None, f"fewer than {c.min_history} finished runs to learn from")
        mine = window_mean(u, y, now, width)[0]
        theirs = window_mean(*incumbent.points, now, width)[0]
        if not (math.isfinite(mine) and math.isfinite(theirs)):
            return Decision(False, None, "no points to compare at this progress")
        slope, spread = model
        predicted = incumbent.val_bpb + slope * (mine - theirs)
        stop = predicted - c.z * spread > incumbent.bar
        return Decision(stop, predicted, f"{'stop' if stop else 'go on'}: val_bpb {predicted:.4f} ± {spread:.4f} "
                        f"predicted from the loss gap {mine - theirs:+.4f} at {now:.0%} vs the bar "
                        f"{incumbent.bar:.4f} ({len(self.history)} runs learned)")


RULES: dict[str, tuple[type[Rule], type[CheckConfig]]] = {
    "power-law": (PowerLawRule, PowerLawConfig),
    "linear": (LinearRule, LinearConfig),
    "same-progress": (SameProgressRule, SameProgressConfig),
    "calibrated": (CalibratedRule, CalibratedConfig),
}
"""The stop rules by name; 'none' (no early stopping) is the loop's other choice."""


def make_rule(name: str, budget: float, **overrides) -> Rule:
    """The rule called name for runs of `budget` seconds, its config's defaults replaced by overrides."""
    if name not in RULES:
        raise ValueError(f"unknown stop rule {name!r}; choose one of {', '.join(RULES)} (or 'none')")
    rule_class, config_class = RULES[name]
    return rule_class(budget, config_class(**overrides) if overrides else None)


class EarlyStopper:
    """The harness monitor: asks the rule each time the run passes a check point, keeps every decision."""

    def __init__(self, rule: Rule, incumbent: Reference | None):
        self.rule, self.incumbent = rule, incumbent
        self.decisions: list[Decision] = []
        self._next_check = rule.config.min_progress

    def __call__(self, curve) -> str | None:
        if self.incumbent is None or not curve:
            return None
        progress = curve[-1][0] / self.rule.budget
        if progress < self._next_check or progress >= 1.0:
            return None
        checks_passed = math.floor((progress - self.rule.config.min_progress) / self.rule.config.interval + 1e-9)
        self._next_check = self.rule.config.min_progress + (checks_passed + 1) * self.rule.config.interval
        decision = self.rule.should_stop(curve, self.incumbent)
        self.decisions.append(decision)
        return f"early stop at {decision.progress:.0%} of the budget: {decision.reason}" if decision.stop else None

    @property
    def last_prediction(self) -> float | None:
        """The last forecast val_bpb made (a pruned run's stand-in value for the reward)."""
        return next((d.predicted for d in reversed(self.decisions) if d.predicted is not None), None)
