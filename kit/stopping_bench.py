"""The early-stopping benchmark: replay recorded full runs in random orders, as a loop would meet them, under
each stop rule and under Optuna's pruners, and measure what each saves and what it loses.

Owns: the replay (an incumbent that only a run finished and better replaces; a stopped run costs its start-up
and the training it did), the metrics (throughput, false prunes, share stopped, mean stopping point, forecast
error at 25/50/75 % of the budget, regret of the final best), the sweep of each rule's aggressiveness, and
bench/early_stopping.md with its plot.
Does not own: the rules (kit/predictor.py) or the recorded curves (kit/curves.py).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import predictor
from kit.curves import MAX_OTHERS_SHARE, ran_alone

CHECKPOINTS = (0.25, 0.5, 0.75)
"""Progress at which forecast errors are reported."""
GRID = tuple(round(p, 2) for p in np.arange(0.10, 0.96, 0.05))
"""Where Optuna's pruners get an intermediate value (the mean loss over the last 5 % of the budget)."""


@dataclass(frozen=True, eq=False)
class Run:
    """One recorded full run, as the replay needs it."""

    index: int
    curve: tuple[tuple[float, float], ...]
    val_bpb: float
    budget: float
    total_seconds: float
    startup_seconds: float
    training_seconds: float

    @functools.cached_property
    def reference(self) -> predictor.Reference:
        return predictor.Reference(self.curve, self.val_bpb, self.budget)

    def wall_seconds(self, stopped_at: float | None) -> float:
        """Wall-clock seconds of the run when stopped at `stopped_at` training seconds (None: run to the end)."""
        if stopped_at is None:
            return self.total_seconds
        return self.startup_seconds + stopped_at

    def grid_values(self) -> list[float]:
        u, y = predictor.as_arrays(self.curve, self.budget)
        return [predictor.window_mean(u, y, p, 0.05)[0] for p in GRID]


def load_runs(records: list[dict], max_others_share: float = MAX_OTHERS_SHARE) -> list[Run]:
    """The runs of a dataset that ended ok with a curve (a crash or timeout is not a candidate for stopping) and
    had the machine to themselves."""
    runs = []
    for r in records:
        if r["status"] != "ok" or r["val_bpb"] is None or len(r["curve"]) < 8:
            continue
        if not ran_alone(r, max_others_share):
            continue
        runs.append(Run(index=r["index"], curve=tuple(map(tuple, r["curve"])), val_bpb=float(r["val_bpb"]),
                        budget=float(r["budget"]), total_seconds=float(r["total_seconds"]),
                        startup_seconds=float(r["timings"].get("first_progress", 0.0)),
                        training_seconds=float(r["training_seconds"])))
    return runs


@dataclass
class Outcome:
    """What one strategy did on one order of the runs."""

    spent_training: float = 0.0
    full_training: float = 0.0
    spent_wall: float = 0.0
    full_wall: float = 0.0
    stopped: int = 0
    compared: int = 0  # runs that met an incumbent (the first run of an order never does)
    stop_points: list[float] = field(default_factory=list)
    would_be_best: int = 0
    false_prunes: int = 0
    best: float = math.inf
    forecast_errors: dict[float, list[float]] = field(default_factory=lambda: {p: [] for p in CHECKPOINTS})


def replay_rule(runs: list[Run], order: np.ndarray, make: Callable[[], predictor.Rule]) -> Outcome:
    """One order under one of kit's rules, asked live at its own check points as the harness would."""
    rule, out, incumbent = make(), Outcome(), None
    for i in order:
        run = runs[i]
        stopped_at = None
        if incumbent is not None:
            out.compared += 1
            stopper = predictor.EarlyStopper(rule, incumbent.reference)
            curve: list[tuple[float, float]] = []
            for point in run.curve:  # fed point by point; forecasts go on after a stop, for the error columns
                curve.append(point)
                if stopper(curve) and stopped_at is None:
                    stopped_at = point[0]
            _forecast_errors(out, stopper.decisions, run.val_bpb)
            if run.val_bpb < incumbent.val_bpb:
                out.would_be_best += 1
                out.false_prunes += stopped_at is not None
        if stopped_at is None:
            rule.learn(run.reference)
        incumbent = _account(out, run, stopped_at, incumbent)
    return out


def replay_optuna(runs: list[Run], order: np.ndarray, make_pruner: Callable[[], object]) -> Outcome:
    """One order under an Optuna pruner: intermediate values on GRID, should_prune after each report."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=make_pruner())
    out, incumbent = Outcome(), None
    for i in order:
        run = runs[i]
        trial, stopped_at = study.ask(), None
        for p, value in zip(GRID, grid_cache(run), strict=True):
            trial.report(value, step=round(p * 100))
            if trial.should_prune():
                stopped_at = p * run.budget
                break
        if incumbent is not None:
            out.compared += 1
            if run.val_bpb < incumbent.val_bpb:
                out.would_be_best += 1
                out.false_prunes += stopped_at is not None
        if stopped_at is None:
            study.tell(trial, run.val_bpb)
        else:
            study.tell(trial, state=TrialState.PRUNED)
        incumbent = _account(out, run, stopped_at, incumbent)
    return out


_GRID_VALUES: dict[int, list[float]] = {}


def grid_cache(run: Run) -> list[float]:
    if id(run) not in _GRID_VALUES:
        _GRID_VALUES[id(run)] = run.grid_values()
    return _GRID_VALUES[id(run)]


def _account(out: Outcome, run: Run, stopped_at: float | None, incumbent: Run | None) -> Run | None:
    out.full_training += run.training_seconds
    out.full_wall += run.total_seconds
    out.spent_training += run.training_seconds if stopped_at is None else stopped_at
    out.spent_wall += run.wall_seconds(stopped_at)
    if stopped_at is not None:
        out.stopped += 1
        out.stop_points.append(stopped_at / run.budget)
        return incumbent
    out.best = min(out.best, run.val_bpb)
    return run if incumbent is None or run.val_bpb < incumbent.val_bpb else incumbent


def _forecast_errors(out: Outcome, decisions: list[predictor.Decision], actual: float) -> None:
    for p in CHECKPOINTS:
        made = [d for d in decisions if d.progress >= p - 1e-9 and d.predicted is not None]
        if made:
            out.forecast_errors[p].append(abs(made[0].predicted - actual))


@dataclass(frozen=True)
class Summary:
    """A strategy's outcomes over all orders, averaged the way the report states."""

    name: str
    setting: str
    throughput_training: float
    throughput_wall: float
    false_prune_rate: float
    stopped_share: float
    mean_stop_point: float
    forecast_mae: dict[float, float]
    regret: float
    seconds: float


def summarize(name: str, setting: str, outcomes: list[Outcome], no_stopping_best: list[float],
              seconds: float) -> Summary:
    total = lambda attr: sum(getattr(o, attr) for o in outcomes)  # noqa: E731
    points = [p for o in outcomes for p in o.stop_points]
    errors = {p: [e for o in outcomes for e in o.forecast_errors[p]] for p in CHECKPOINTS}
    return Summary(
        name=name, setting=setting,
        throughput_training=total("full_training") / total("spent_training"),
        throughput_wall=total("full_wall") / total("spent_wall"),
        false_prune_rate=total("false_prunes") / max(total("would_be_best"), 1),
        stopped_share=total("stopped") / max(total("compared"), 1),
        mean_stop_point=float(np.mean(points)) if points else math.nan,
        forecast_mae={p: float(np.mean(v)) if v else math.nan for p, v in errors.items()},
        regret=float(np.mean([o.best - b for o, b in zip(outcomes, no_stopping_best, strict=True)])),
        seconds=seconds)


# ---------------------------------------------------------------------------
# Strategies and their sweeps
# ---------------------------------------------------------------------------


def kit_strategies(budget: float) -> list[tuple[str, str, Callable[[], predictor.Rule]]]:
    """(name, setting, factory) of kit's rules: defaults first, then the aggressiveness sweeps."""
    def rule(name, **kw):
        return lambda: predictor.make_rule(name, budget, **kw)

    out = [("power-law (paper: vs final, every 10 %)", f"z={z:g}", rule("power-law", equal_progress=False, z=z))
           for z in (2.0, 0.0, 1.0, 4.0)]
    out += [("power-law, equal progress", f"z={z:g}", rule("power-law", z=z)) for z in (2.0, 0.0, 1.0, 4.0)]
    out += [("linear (window 5)", f"margin={m:g}", rule("linear", margin=m)) for m in (1.15, 1.0, 1.05, 1.3)]
    out += [("same progress", f"z={z:g}", rule("same-progress", z=z)) for z in (2.0, 0.0, 1.0, 4.0, 8.0)]
    out += [("calibrated on finished runs", f"z={z:g}", rule("calibrated", z=z)) for z in (2.0, 1.0, 3.0, 4.0)]
    return out


def optuna_strategies() -> list[tuple[str, str, Callable[[], object]]]:
    import warnings

    from optuna import pruners
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # Wilcoxon and Patient are marked experimental

    out = [("optuna median", "default", lambda: pruners.MedianPruner())]
    out += [("optuna percentile", f"{q}th", lambda q=q: pruners.PercentilePruner(q)) for q in (25.0, 75.0, 90.0)]
    out += [("optuna successive halving", f"η={rf}", lambda rf=rf: pruners.SuccessiveHalvingPruner(
        min_resource=10, reduction_factor=rf)) for rf in (2, 3, 4)]
    out += [("optuna hyperband", f"η={rf}", lambda rf=rf: pruners.HyperbandPruner(
        min_resource=10, max_resource=95, reduction_factor=rf)) for rf in (3, 2, 4)]
    out += [("optuna wilcoxon", f"p={p:g}", lambda p=p: pruners.WilcoxonPruner(p_threshold=p))
            for p in (0.1, 0.01, 0.05, 0.2)]
    out += [("optuna patient (median)", f"patience={k}", lambda k=k: pruners.PatientPruner(
        pruners.MedianPruner(), patience=k)) for k in (2, 1, 4)]
    return out


def run_benchmark(runs: list[Run], orders: int, seed: int = 0, log=print) -> list[Summary]:
    """Every strategy on the same `orders` random orders of runs."""
    if len(runs) < 10:
        raise ValueError(f"the benchmark needs at least 10 recorded ok runs, got {len(runs)}: record more with "
                         "`python -m kit bench record`")
    rng = np.random.default_rng(seed)
    permutations = [rng.permutation(len(runs)) for _ in range(orders)]
    baseline_best = [min(runs[i].val_bpb for i in order) for order in permutations]
    budget = runs[0].budget
    summaries = []
    for name, setting, factory in [("no stopping", "-", None)] + kit_strategies(budget):
        started = time.perf_counter()
        make = factory or (lambda: _NeverStop(budget))
        outcomes = [replay_rule(runs, order, make) for order in permutations]
        summaries.append(summarize(name, setting, outcomes, baseline_best, time.perf_counter() - started))
        log(_line(summaries[-1]))
    for name, setting, factory in optuna_strategies():
        started = time.perf_counter()
        outcomes = [replay_optuna(runs, order, factory) for order in permutations]
        summaries.append(summarize(name, setting, outcomes, baseline_best, time.perf_counter() - started))
        log(_line(summaries[-1]))
    return summaries


class _NeverStop(predictor.Rule):
    config = predictor.CheckConfig(interval=1.0)

    def _decide(self, u, y, incumbent):
        return predictor.Decision(False, None, "no early stopping")


def _line(s: Summary) -> str:
    return (f"{s.name:42s} {s.setting:14s} ×{s.throughput_training:5.2f} train ×{s.throughput_wall:5.2f} wall  "
            f"false {s.false_prune_rate:6.1%}  stopped {s.stopped_share:6.1%}  regret {s.regret:+.4f}  "
            f"({s.seconds:.0f} s)")


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def best_within(summaries: list[Summary], max_false: float) -> dict[str, Summary]:
    """Each strategy family's highest wall-clock throughput among its settings with at most max_false."""
    best: dict[str, Summary] = {}
    for s in summaries:
        if s.false_prune_rate <= max_false and (s.name not in best
                                                or s.throughput_wall > best[s.name].throughput_wall):
            best[s.name] = s
    return best


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def write_report(summaries: list[Summary], runs: list[Run], records: list[dict], orders: int, out: Path,
                 machine: str, command: str) -> Path:
    """bench/early_stopping.md and bench/early_stopping.png."""
    out = Path(out)
    plot = out.with_suffix(".png")
    _plot(summaries, plot)
    kinds = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    failed = sum(r["status"] != "ok" for r in records)
    shared = len(records) - failed - len(runs)
    lines = [
        "# Early stopping on recorded learning curves",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {machine}.",
        "",
        f"**Data.** {len(records)} recorded runs of the `{records[0].get('profile', '?')}` profile "
        f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), each trained to the end of its "
        f"{runs[0].budget:.0f} s budget with no early stopping; {len(runs)} ended ok and are replayed "
        f"({failed} crashed or timed out and cost the same under every rule; {shared} ok runs shared the machine "
        f"with other work, over {MAX_OTHERS_SHARE:.0%} of its CPU, and are left out). "
        "How they were recorded: data/README.md.",
        "",
        f"**Replay.** The same {orders} random orders for every strategy. In an order, the first run becomes the "
        "incumbent; each later run is fed to the strategy point by point, as the harness would, and either "
        "stopped (it then costs its start-up and the training it did) or run to the end; a finished run with a "
        "lower val_bpb becomes the incumbent. Optuna's pruners get the mean training loss over the last 5 % of "
        "the budget at every 5 % from 10 % to 95 %, in one study per order.",
        "",
        "**Columns.** *Throughput*: compute of running every run to the end / compute actually spent, in training "
        "seconds and in wall-clock seconds (start-up, export and evaluation included: a stopped run skips the "
        "evaluation). *False prunes*: stopped runs that would have become the new best / all runs that would "
        "have. *Stopped*: share of runs that met an incumbent and were stopped. *Stop point*: mean share of the "
        "budget spent by stopped runs. *Forecast MAE*: mean |forecast val_bpb − actual| of the first forecast "
        "at or after 25/50/75 % of the budget. *Regret*: mean (best val_bpb found − best found with no "
        "stopping) per order, i.e. what the wrongly stopped runs cost in the end.",
        "",
        "| strategy | setting | throughput (training) | throughput (wall) | false prunes | stopped | stop point "
        "| forecast MAE 25/50/75 % | regret | replay s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        mae = "/".join(_fmt(s.forecast_mae.get(p, math.nan), ".3f") for p in CHECKPOINTS)
        lines.append(f"| {s.name} | {s.setting} | ×{s.throughput_training:.2f} | ×{s.throughput_wall:.2f} | "
                     f"{s.false_prune_rate:.1%} | {s.stopped_share:.1%} | {_fmt(s.mean_stop_point, '.0%')} | "
                     f"{mae} | {s.regret:+.4f} | {s.seconds:.0f} |")
    lines += ["", "## Best of each family with at most 2 % false prunes", "",
              "| strategy | setting | throughput (wall) | throughput (training) | false prunes | regret |",
              "|---|---|---|---|---|---|"]
    for s in sorted(best_within(summaries, 0.02).values(), key=lambda s: -s.throughput_wall):
        lines.append(f"| {s.name} | {s.setting} | ×{s.throughput_wall:.2f} | ×{s.throughput_training:.2f} | "
                     f"{s.false_prune_rate:.1%} | {s.regret:+.4f} |")
    lines += ["", verdict(summaries), "", f"![throughput against false prunes]({plot.name})", ""]
    out.write_text("\n".join(lines))
    return out


def verdict(summaries: list[Summary], goal: float = 3.0, max_false: float = 0.02) -> str:
    """The goal stated in one paragraph, met or not, with the numbers that decide it."""
    best = best_within(summaries, max_false)
    ours = [s for s in best.values() if s.name != "no stopping" and not s.name.startswith("optuna")]
    theirs = [s for s in best.values() if s.name.startswith("optuna")]
    if not ours:
        return (f"**Goal** (×{goal:g} wall-clock throughput at ≤ {max_false:.0%} false prunes): not met; no kit rule "
                f"stays under {max_false:.0%}.")
    top = max(ours, key=lambda s: s.throughput_wall)
    peer = max(theirs, key=lambda s: s.throughput_wall) if theirs else None
    met = top.throughput_wall >= goal and (peer is None or top.throughput_wall > peer.throughput_wall)
    peer_text = (f"Optuna's best there is {peer.name} ({peer.setting}) at ×{peer.throughput_wall:.2f}"
                 if peer else "no Optuna pruner stays under that rate")
    return (f"**Goal** (at least ×{goal:g} wall-clock throughput with at most {max_false:.0%} false prunes, ahead of "
            f"every Optuna pruner at that rate): {'met' if met else 'not met'}. Kit's best under {max_false:.0%} is "
            f"{top.name} ({top.setting}) at ×{top.throughput_wall:.2f}; {peer_text}.")


def _plot(summaries: list[Summary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    families: dict[str, list[Summary]] = {}
    for s in summaries:
        families.setdefault(s.name, []).append(s)
    for name, group in families.items():
        group = sorted(group, key=lambda s: s.false_prune_rate)
        style = "-o" if not name.startswith("optuna") else "--s"
        ax.plot([100 * s.false_prune_rate for s in group], [s.throughput_wall for s in group], style, label=name,
                markersize=4)
    ax.axvline(2, color="grey", lw=0.8, ls=":")
    ax.axhline(3, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false prunes (% of runs that would have become the best)")
    ax.set_ylabel("throughput, wall clock (×)")
    ax.set_title("Early stopping on recorded curves: each point is one setting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
