"""The early-stopping benchmark: replay recorded full runs in random orders, as a loop would meet them, under
each stop rule and under Optuna's pruners, and measure what each saves and what it loses.

Owns: the replay (an incumbent that only a run finished and better replaces; a stopped run costs its start-up
and the training it did), the metrics (throughput, false prunes, share stopped, mean stopping point, forecast
error at 25/50/75 % of the budget, regret of the final best), the sweep of each rule's aggressiveness, and
bench/early_stopping.md with its plot.
Does not own: the rules (kit/predictor.py) or the recorded curves (kit/bench/recorder.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import predictor
from kit.bench.recorder import MAX_OTHERS_SHARE, ran_alone

CHECKPOINTS = (0.25, 0.5, 0.75)
"""Progress at which forecast errors are reported."""
GRID = tuple(round(p, 2) for p in np.arange(0.10, 0.96, 0.05))
"""Where Optuna's pruners get an intermediate value (the mean loss over the last 5 % of the budget)."""


@dataclass(frozen=True, eq=False)
class Run:
    """One recorded full run, as the replay needs it."""

    index: int
    kind: str
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
        runs.append(Run(index=r["index"], kind=r.get("kind", "?"), curve=tuple(map(tuple, r["curve"])),
                        val_bpb=float(r["val_bpb"]), budget=float(r["budget"]),
                        total_seconds=float(r["total_seconds"]),
                        startup_seconds=float(r["timings"].get("first_progress", 0.0)),
                        training_seconds=float(r["training_seconds"])))
    return runs


@dataclass(frozen=True)
class Stream:
    """What the loop meets, rebuilt from recorded runs: it starts from a baseline run (its first incumbent), then
    meets edited runs one after another, and keeps one only if it beats the incumbent by the noise margin
    (noise_sigmas standard deviations of the baseline runs' val_bpb under different seeds, as the loop measures
    it)."""

    starts: tuple[Run, ...]
    candidates: tuple[Run, ...]
    margin: float
    noise_sigmas: float

    @classmethod
    def of(cls, runs: list[Run], noise_sigmas: float = 2.0) -> Stream:
        if not (math.isfinite(noise_sigmas) and noise_sigmas >= 0):
            raise ValueError(f"--noise-sigmas must be a number >= 0 (the loop uses 2), got {noise_sigmas}")
        starts = tuple(r for r in runs if r.kind == "baseline")
        candidates = tuple(r for r in runs if r.kind != "baseline")
        if len(starts) < 2 or len(candidates) < 4:
            raise ValueError(f"the benchmark needs at least 2 baseline runs and 4 edited runs that ended ok alone, "
                             f"got {len(starts)} and {len(candidates)}: record more with `python -m kit bench record`")
        margin = noise_sigmas * statistics.stdev(r.val_bpb for r in starts)
        return cls(starts, candidates, margin, noise_sigmas)

    def orders(self, n: int, seed: int = 0) -> list[Order]:
        rng = np.random.default_rng(seed)
        return [Order(int(rng.integers(len(self.starts))), rng.permutation(len(self.candidates))) for _ in range(n)]


@dataclass(frozen=True)
class Order:
    """One replay: which baseline run starts it, and the order the edited runs come in."""

    start: int
    permutation: np.ndarray


@dataclass
class Outcome:
    """What one strategy did on one order of the runs."""

    spent_training: float = 0.0
    full_training: float = 0.0
    spent_wall: float = 0.0
    full_wall: float = 0.0
    stopped: int = 0
    compared: int = 0
    stop_points: list[float] = field(default_factory=list)
    would_be_kept: int = 0  # runs that, run to the end, would beat the incumbent by the margin
    false_prunes: int = 0  # of those, the ones stopped
    would_gain: int = 0  # runs that would end below the incumbent by any amount, noise included
    stopped_gains: int = 0
    best: float = math.inf  # the incumbent at the end: what the research run hands over
    forecast_errors: dict[float, list[float]] = field(default_factory=lambda: {p: [] for p in CHECKPOINTS})


class _Replay:
    """The bookkeeping both kinds of strategy share: the incumbent, the keep rule and the accounts."""

    def __init__(self, stream: Stream, order: Order):
        self.stream, self.out = stream, Outcome()
        self.incumbent = stream.starts[order.start]
        self.out.best = self.incumbent.val_bpb
        self.runs = [stream.candidates[i] for i in order.permutation]

    def reference(self) -> predictor.Reference:
        return dataclasses.replace(self.incumbent.reference, margin=self.stream.margin)

    def account(self, run: Run, stopped_at: float | None) -> None:
        out, kept = self.out, run.val_bpb < self.incumbent.val_bpb - self.stream.margin
        out.compared += 1
        out.would_be_kept += kept
        out.false_prunes += kept and stopped_at is not None
        out.would_gain += run.val_bpb < self.incumbent.val_bpb
        out.stopped_gains += run.val_bpb < self.incumbent.val_bpb and stopped_at is not None
        out.full_training += run.training_seconds
        out.full_wall += run.total_seconds
        out.spent_training += run.training_seconds if stopped_at is None else stopped_at
        out.spent_wall += run.wall_seconds(stopped_at)
        if stopped_at is not None:
            out.stopped += 1
            out.stop_points.append(stopped_at / run.budget)
        elif kept:
            self.incumbent = run
            out.best = run.val_bpb


def replay_rule(stream: Stream, order: Order, make: Callable[[], predictor.Rule]) -> Outcome:
    """One order under one of kit's rules, asked live at its own check points as the harness would."""
    rule, replay = make(), _Replay(stream, order)
    rule.learn(replay.incumbent.reference)
    incumbent = replay.reference()
    for run in replay.runs:
        stopper = predictor.EarlyStopper(rule, incumbent)
        stopped_at, curve = None, []
        for point in run.curve:  # fed point by point; forecasts go on after a stop, for the error columns
            curve.append(point)
            if stopper(curve) and stopped_at is None:
                stopped_at = point[0]
        _forecast_errors(replay.out, stopper.decisions, run.val_bpb)
        if stopped_at is None:
            rule.learn(run.reference)
        before = replay.incumbent
        replay.account(run, stopped_at)
        if replay.incumbent is not before:
            incumbent = replay.reference()
    return replay.out


def replay_optuna(stream: Stream, order: Order, make_pruner: Callable[[], object]) -> Outcome:
    """One order under an Optuna pruner: intermediate values on GRID, should_prune after each report. The baseline
    run is the study's first trial."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=make_pruner())
    replay = _Replay(stream, order)
    first = study.ask()
    for p, value in zip(GRID, grid_cache(replay.incumbent), strict=True):
        first.report(value, step=round(p * 100))
    study.tell(first, replay.incumbent.val_bpb)
    for run in replay.runs:
        trial, stopped_at = study.ask(), None
        for p, value in zip(GRID, grid_cache(run), strict=True):
            trial.report(value, step=round(p * 100))
            if trial.should_prune():
                stopped_at = p * run.budget
                break
        if stopped_at is None:
            study.tell(trial, run.val_bpb)
        else:
            study.tell(trial, state=TrialState.PRUNED)
        replay.account(run, stopped_at)
    return replay.out


_GRID_VALUES: dict[int, list[float]] = {}


def grid_cache(run: Run) -> list[float]:
    if id(run) not in _GRID_VALUES:
        _GRID_VALUES[id(run)] = run.grid_values()
    return _GRID_VALUES[id(run)]


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
    false_prune_upper: float
    """One-sided 95 % Clopper-Pearson upper bound of the false-prune rate: kept runs are rare events."""
    stopped_gain_rate: float
    kept_events: int
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
        false_prune_rate=total("false_prunes") / max(total("would_be_kept"), 1),
        false_prune_upper=_upper_bound(total("false_prunes"), total("would_be_kept")),
        stopped_gain_rate=total("stopped_gains") / max(total("would_gain"), 1),
        kept_events=total("would_be_kept"),
        stopped_share=total("stopped") / max(total("compared"), 1),
        mean_stop_point=float(np.mean(points)) if points else math.nan,
        forecast_mae={p: float(np.mean(v)) if v else math.nan for p, v in errors.items()},
        regret=float(np.mean([o.best - b for o, b in zip(outcomes, no_stopping_best, strict=True)])),
        seconds=seconds)


def _upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    from scipy.stats import beta

    return 1.0 if n == 0 or k >= n else float(beta.ppf(confidence, k + 1, n - k))


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


def run_benchmark(stream: Stream, orders: int, seed: int = 0, log=print) -> list[Summary]:
    """Every strategy on the same `orders` random orders of the stream."""
    replays = stream.orders(orders, seed)
    budget = stream.candidates[0].budget
    summaries = []
    no_stopping_best = None
    for name, setting, factory in [("no stopping", "-", None)] + kit_strategies(budget):
        started = time.perf_counter()
        make = factory or (lambda: _NeverStop(budget))
        outcomes = [replay_rule(stream, order, make) for order in replays]
        no_stopping_best = no_stopping_best or [o.best for o in outcomes]
        summaries.append(summarize(name, setting, outcomes, no_stopping_best, time.perf_counter() - started))
        log(_line(summaries[-1]))
    for name, setting, factory in optuna_strategies():
        started = time.perf_counter()
        outcomes = [replay_optuna(stream, order, factory) for order in replays]
        summaries.append(summarize(name, setting, outcomes, no_stopping_best, time.perf_counter() - started))
        log(_line(summaries[-1]))
    return summaries


class _NeverStop(predictor.Rule):
    config = predictor.CheckConfig(interval=1.0)

    def _decide(self, u, y, incumbent):
        return predictor.Decision(False, None, "no early stopping")


def _line(s: Summary) -> str:
    return (f"{s.name:42s} {s.setting:14s} ×{s.throughput_training:5.2f} train ×{s.throughput_wall:5.2f} wall  "
            f"false {s.false_prune_rate:6.1%} of {s.kept_events}  gains stopped {s.stopped_gain_rate:6.1%}  "
            f"stopped {s.stopped_share:6.1%}  regret {s.regret:+.4f}  "
            f"({s.seconds:.0f} s)")


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


KEPT = ("false prunes", lambda s: s.false_prune_rate)
"""The loop's measure: stopped runs that would have been kept."""
GAINS = ("gains stopped", lambda s: s.stopped_gain_rate)
"""The stricter one: stopped runs that would have ended below the incumbent by any amount."""


def best_within(summaries: list[Summary], max_false: float, measure=KEPT) -> dict[str, Summary]:
    """Each strategy family's highest wall-clock throughput among its settings with at most max_false."""
    rate = measure[1]
    best: dict[str, Summary] = {}
    for s in summaries:
        if rate(s) <= max_false and (s.name not in best or s.throughput_wall > best[s.name].throughput_wall):
            best[s.name] = s
    return best


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def write_report(summaries: list[Summary], stream: Stream, records: list[dict], orders: int, out: Path,
                 machine: str, command: str) -> Path:
    """bench/early_stopping.md and bench/early_stopping.png."""
    out = Path(out)
    plot = out.with_suffix(".png")
    _plot(summaries, plot)
    kinds = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    failed = sum(r["status"] != "ok" for r in records)
    replayed = len(stream.starts) + len(stream.candidates)
    shared = len(records) - failed - replayed
    baselines = sorted(r.val_bpb for r in stream.starts)
    kept = summaries[0].kept_events
    lines = [
        "# Early stopping on recorded learning curves",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}; machine: {machine}.",
        "",
        f"**Data.** {len(records)} recorded runs of the `{records[0].get('profile', '?')}` profile "
        f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), each trained to the end of its "
        f"{stream.candidates[0].budget:.0f} s budget with no early stopping. {replayed} ended ok with the machine "
        f"to themselves and are replayed: {len(stream.starts)} baseline runs under different seeds and "
        f"{len(stream.candidates)} edited runs. {failed} crashed or timed out (they cost the same under every rule) "
        f"and {shared} ok runs shared the machine with other work (over {MAX_OTHERS_SHARE:.0%} of its CPU, so "
        "their step counts are not comparable) and are left out. How they were recorded: data/README.md.",
        "",
        f"**Replay, as the loop meets runs.** The same {orders} orders for every strategy. An order starts from a "
        "baseline run drawn at random (the loop's first incumbent), then feeds the edited runs in a random order, "
        "point by point as the harness would. A stopped run costs its start-up and the training it did; a "
        "finished run replaces the incumbent only if it beats it by the loop's noise margin: "
        f"{stream.noise_sigmas:g} standard deviations of the baseline runs' val_bpb "
        f"({', '.join(f'{v:.3f}' for v in baselines)}), i.e. {stream.margin:.4f}. Kit's rules are given that "
        "margin, so they stop runs that will not clear the bar even if they would end slightly below the "
        "incumbent. Optuna's pruners get the mean training loss over the last 5 % of the budget at every 5 % "
        "from 10 % to 95 %, in one study per order whose first trial is the baseline run.",
        "",
        "**Columns.** *Throughput*: compute of running every edited run to the end / compute actually spent, in "
        "training seconds and in wall-clock seconds (start-up, export and evaluation included: a stopped run skips "
        "the evaluation). *False prunes*: stopped runs that would have been kept (beaten the incumbent by the "
        f"margin) / all runs that would have; over all orders, {kept} such events, so the 95 % upper bound "
        "of the rate is given beside it. *Gains stopped*: the same "
        "for runs that would have ended below the incumbent by any amount, noise included. *Stopped*: share of "
        "edited runs stopped. *Stop point*: mean share of the budget spent by stopped runs. *Forecast MAE*: mean "
        "|forecast val_bpb − actual| of the first forecast at or after 25/50/75 % of the budget. *Regret*: mean "
        "(the incumbent at the end − the incumbent at the end with no stopping) per order, what the research run "
        "hands over.",
        "",
        "| strategy | setting | throughput (training) | throughput (wall) | false prunes | gains stopped | stopped "
        "| stop point | forecast MAE 25/50/75 % | regret | replay s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        mae = "/".join(_fmt(s.forecast_mae.get(p, math.nan), ".3f") for p in CHECKPOINTS)
        lines.append(f"| {s.name} | {s.setting} | ×{s.throughput_training:.2f} | ×{s.throughput_wall:.2f} | "
                     f"{s.false_prune_rate:.1%} (≤ {s.false_prune_upper:.0%}) | {s.stopped_gain_rate:.1%} | "
                     f"{s.stopped_share:.1%} | "
                     f"{_fmt(s.mean_stop_point, '.0%')} | {mae} | {s.regret:+.4f} | {s.seconds:.0f} |")
    lines += ["", "## Best of each family with at most 2 % false prunes", "",
              "| strategy | setting | throughput (wall) | throughput (training) | false prunes | gains stopped | "
              "regret |",
              "|---|---|---|---|---|---|---|"]
    for s in sorted(best_within(summaries, 0.02).values(), key=lambda s: -s.throughput_wall):
        lines.append(f"| {s.name} | {s.setting} | ×{s.throughput_wall:.2f} | ×{s.throughput_training:.2f} | "
                     f"{s.false_prune_rate:.1%} | {s.stopped_gain_rate:.1%} | {s.regret:+.4f} |")
    lines += ["", verdict(summaries), "", verdict(summaries, measure=GAINS), "",
              f"![throughput against false prunes]({plot.name})", ""]
    out.write_text("\n".join(lines))
    return out


def verdict(summaries: list[Summary], goal: float = 3.0, max_false: float = 0.02, measure=KEPT) -> str:
    """The goal stated in one paragraph, met or not, with the numbers that decide it."""
    label = measure[0]
    best = best_within(summaries, max_false, measure)
    ours = [s for s in best.values() if s.name != "no stopping" and not s.name.startswith("optuna")]
    theirs = [s for s in best.values() if s.name.startswith("optuna")]
    head = (f"**Goal, counting {label}** (at least ×{goal:g} wall-clock throughput with at most {max_false:.0%} "
            f"{label}, ahead of every Optuna pruner at that rate)")
    if not ours:
        return f"{head}: not met; no kit rule stays under {max_false:.0%}."
    top = max(ours, key=lambda s: s.throughput_wall)
    peer = max(theirs, key=lambda s: s.throughput_wall) if theirs else None
    met = top.throughput_wall >= goal and (peer is None or top.throughput_wall > peer.throughput_wall)
    peer_text = (f"Optuna's best there is {peer.name} ({peer.setting}) at ×{peer.throughput_wall:.2f}"
                 if peer else "no Optuna pruner stays under that rate")
    evidence = (f" It stopped {top.false_prune_rate:.1%} of {top.kept_events} runs that would have been kept "
                f"(95 % upper bound {top.false_prune_upper:.0%})." if measure is KEPT else "")
    return (f"{head}: {'met' if met else 'not met'}. Kit's best under {max_false:.0%} is {top.name} "
            f"({top.setting}) at ×{top.throughput_wall:.2f}; {peer_text}.{evidence}")


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
    ax.set_xlabel("false prunes (% of runs that would have been kept)")
    ax.set_ylabel("throughput, wall clock (×)")
    ax.set_title("Early stopping on recorded curves: each point is one setting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
