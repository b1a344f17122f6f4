"""What the agents benchmark concludes: policies compared on what a user gets, at equal experiments and equal hours.

Owns: the measures (the final train.py re-evaluated under fresh seeds, which is primary; the noise-free worth of
the incumbent after a number of experiments and once every run has spent the same simulated hours; best-so-far,
which includes the luck of the draw), the paired tests (Wilcoxon signed-rank over seeds, which meet the same world
in every policy, one-sided, Holm-corrected over the pairs of each table, with the median paired difference and
the rank-biserial correlation as effect sizes), and the markdown report with its plot.
Does not own: running the loops (kit/bench/agents.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.bench.agents import LOSSES, REEVALUATION_SEEDS, Trajectory

CHECKPOINTS = (25, 50, 100, 300)
TARGETS = (0.01, 0.02)
ALPHA = 0.05
Measure = Callable[[Trajectory], float]


@dataclass(frozen=True)
class World:
    """One world's runs: its name in tables, a sentence on what it is, and every (policy, seed) trajectory."""

    name: str
    description: str
    trajectories: list[Trajectory]

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(t.policy for t in self.trajectories))

    @property
    def experiments(self) -> int:
        return min(len(t.best) for t in self.trajectories)

    @property
    def equal_hours(self) -> float:
        """Simulated hours that every run reached: the budget the equal-hours comparison gives each."""
        return min(t.hours[-1] for t in self.trajectories)

    def of(self, policy: str) -> list[Trajectory]:
        return sorted((t for t in self.trajectories if t.policy == policy), key=lambda t: t.seed)


def measures(world: World) -> dict[str, Measure]:
    """Every measure the report compares on, by its column name; the first is primary."""
    n, hours = world.experiments, world.equal_hours
    out: dict[str, Measure] = {f"final train.py ({len(REEVALUATION_SEEDS)} fresh seeds)": lambda t: t.reevaluated}
    for c in (*(c for c in CHECKPOINTS if c < n), n):
        out[f"kept, after {c}"] = lambda t, c=c: t.incumbent[c - 1]
    out[f"kept, at {hours:.2f} h"] = lambda t: t.incumbent_at(hours)
    return out


@dataclass(frozen=True)
class Pair:
    policy: str
    other: str
    p: float  # one-sided: policy lower
    p_holm: float
    difference: float  # median over seeds of policy minus other
    rank_biserial: float  # -1: policy lower on every seed, +1: higher on every seed
    seeds: int


def paired(world: World, measure: Measure, policy: str, others: list[str]) -> list[Pair]:
    """policy against each of others, seed by seed, Holm-corrected over the len(others) pairs."""
    from scipy.stats import rankdata, wilcoxon

    rows = []
    mine = {t.seed: measure(t) for t in world.of(policy)}
    for other in others:
        theirs = {t.seed: measure(t) for t in world.of(other)}
        seeds = [s for s in mine if s in theirs and not (math.isnan(mine[s]) or math.isnan(theirs[s]))]
        d = np.array([mine[s] - theirs[s] for s in seeds])
        nonzero = d[d != 0]
        if len(nonzero) == 0:
            p, r = 1.0, 0.0
        else:
            p = float(wilcoxon(d, alternative="less", zero_method="wilcox").pvalue)
            ranks = rankdata(np.abs(nonzero))
            r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
        rows.append(Pair(policy, other, p, math.nan, float(np.median(d)) if len(d) else math.nan, r, len(seeds)))
    adjusted = holm([row.p for row in rows])
    return [Pair(**{**row.__dict__, "p_holm": q}) for row, q in zip(rows, adjusted, strict=True)]


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment: controls the chance of any false claim among the len(p) tests."""
    order = np.argsort(p, kind="stable")
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def strongest(world: World, measure: Measure) -> str:
    """The policy with the lowest median of measure (ties: the first listed)."""
    return min(world.policies, key=lambda name: float(np.nanmedian([measure(t) for t in world.of(name)])))


def verdict(world: World) -> str:
    """One sentence: which policy is strongest on the primary measure, and against which it is significant."""
    name, measure = next(iter(measures(world).items()))
    best = strongest(world, measure)
    pairs = paired(world, measure, best, [p for p in world.policies if p != best])
    ahead = [f"{q.other} (p = {q.p_holm:.2g})" for q in pairs if q.p_holm < ALPHA]
    tied = [f"{q.other} (p = {q.p_holm:.2g})" for q in pairs if q.p_holm >= ALPHA]
    text = f"on {world.name}, **{best}** has the lowest median val_bpb of the {name}"
    if ahead:
        text += f"; significantly below {', '.join(ahead)}"
    if tied:
        text += f"; not significantly below {', '.join(tied)}"
    return text + " (Wilcoxon signed-rank over seeds, one-sided, Holm-corrected)"


def write_report(worlds: list[World], out: Path, header: list[str]) -> Path:
    primary = {w.name: strongest(w, next(iter(measures(w).values()))) for w in worlds}
    ppo = [w.name for w in worlds if "ppo" in w.policies]
    first = [f"**PPO is not the strongest policy on {', '.join(n for n in ppo if primary[n] != 'ppo')}.**"] if any(
        primary[n] != "ppo" for n in ppo) else []
    lines = [*header[:1], "", *first, *(f"- {verdict(w)}." for w in worlds), "", *header[1:]]
    for world in worlds:
        lines += ["", *_world_section(world)]
    out.write_text("\n".join(lines) + "\n")
    _plot(worlds, out.with_suffix(".png"))
    return out


def _world_section(world: World) -> list[str]:
    seeds = len({t.seed for t in world.trajectories})
    named = measures(world)
    lines = [f"## {world.name}", "", world.description, "",
             f"### What a user gets ({seeds} seeds; median [25th–75th percentile])", "",
             "| policy | " + " | ".join(named) + " |", "|---|" + "---:|" * len(named)]
    for policy in world.policies:
        cells = [_spread([m(t) for t in world.of(policy)]) for m in named.values()]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    lines += ["", f"The first column runs the train.py each loop ends with under {len(REEVALUATION_SEEDS)} seeds no "
              "loop used and averages them. \"Kept\" is the world's noise-free val_bpb of the train.py the loop had "
              f"kept after that many experiments, or once it had spent {world.equal_hours:.2f} simulated hours, the "
              "most that every run spent (equal cost: a policy whose runs are stopped early fits more experiments "
              "in the same hours)."]
    lines += ["", "### Paired tests (one-sided: the first policy lower; Holm-corrected within each table)", ""]
    for name, measure in named.items():
        if name.startswith("kept, after") and not name.endswith(f" {world.experiments}"):
            continue
        best = strongest(world, measure)
        others = [p for p in world.policies if p != best]
        lines += [f"{name}: the strongest, {best}, against each", "", *PAIR_HEADER]
        lines += [_pair_row(q) for q in paired(world, measure, best, others)]
        if "ppo" in world.policies and best != "ppo":
            lines += ["", f"{name}: ppo against each", "", *PAIR_HEADER]
            lines += [_pair_row(q) for q in paired(world, measure, "ppo", [p for p in world.policies if p != "ppo"])]
        lines.append("")
    lines += [f"### Cost and losses (all {seeds} seeds)", "",
              "| policy | " + " | ".join(f"kept −{100 * t:g} % (median experiments, seeds)" for t in TARGETS)
              + " | best-so-far, after " + f"{world.experiments} | hours per run | loop ms / experiment | "
              + " | ".join(f"{k} %" for k in LOSSES) + " | where the world is unsure % | edits kept |",
              "|---|" + "---:|" * (len(TARGETS) + 4 + len(LOSSES) + 1)]
    for policy in world.policies:
        ts = world.of(policy)
        cells = [_to_target(ts, target) for target in TARGETS]
        total = sum(len(t.best) for t in ts)
        losses = [f"{100 * sum(t.losses[k] for t in ts) / total:.1f}" for k in LOSSES]
        unsure = [t.unsure for t in ts if not math.isnan(t.unsure)]
        lines.append(f"| {policy} | " + " | ".join(cells)
                     + f" | {_spread([t.best[-1] for t in ts])} | {np.median([t.hours[-1] for t in ts]):.2f} | "
                     f"{np.median([1000 * t.agent_seconds / len(t.best) for t in ts]):.0f} | " + " | ".join(losses)
                     + f" | {f'{100 * np.mean(unsure):.1f}' if unsure else '-'} | "
                     f"{np.median([t.keeps for t in ts]):g} |")
    lines += ["", "Kept −x %: the experiments until the kept train.py is worth x % less than the baseline, noise-free "
              "(seeds that never get there count as more than all). Best-so-far is the lowest single val_bpb "
              "measured, luck included. Losses are shares of all agent experiments: stopped early by the stop "
              "rule, refused before running (the gate, an edit that does not apply), repeats of code already run, "
              "crashed, timed out."]
    return lines


PAIR_HEADER = ("| pair | seeds | median difference | rank-biserial | p | p (Holm) |", "|---|---:|---:|---:|---:|---:|")


def _pair_row(q: Pair) -> str:
    return (f"| {q.policy} − {q.other} | {q.seeds} | {q.difference:+.4f} | {q.rank_biserial:+.2f} | {q.p:.3g} | "
            f"{q.p_holm:.3g} |")


def _to_target(ts: list[Trajectory], target: float) -> str:
    hits = [next((i + 1 for i, v in enumerate(t.incumbent) if v <= t.baseline_worth * (1 - target)), math.inf)
            for t in ts]
    reached = sum(math.isfinite(h) for h in hits)
    median = float(np.median(hits))
    return f"{'never' if math.isinf(median) else f'{median:.0f}'} ({reached}/{len(ts)})"


def _spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    q = np.percentile(values, [25, 50, 75])
    return f"{q[1]:.4f} [{q[0]:.4f}–{q[2]:.4f}]"


def _plot(worlds: list[World], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.2), dpi=110, squeeze=False)
    for ax, world in zip(axes[0], worlds, strict=True):
        n = world.experiments
        for policy in world.policies:
            kept = np.array([t.incumbent[:n] for t in world.of(policy)])
            low, mid, high = np.nanpercentile(kept, [25, 50, 75], axis=0)
            x = np.arange(1, n + 1)
            ax.plot(x, mid, label=policy)
            ax.fill_between(x, low, high, alpha=0.12)
        ax.set_title(world.name)
        ax.set_xlabel("agent experiments")
        ax.set_ylabel("kept train.py, noise-free val_bpb (median, IQR)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
