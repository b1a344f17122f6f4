"""What a person reads of a run directory: results.tsv in autoresearch's columns, summary.md, progress.png and
report.html, and the counts and the incumbent's mean that every view of a run shows alike.

Owns: `tally` (how many experiments ended how) and `incumbent_means` (the line to follow: the mean of the kept
train.py's runs), which the dashboard, summary.md, progress.png and report.html all take from here; turning the
ledger's records into those files, each written whole through a temporary file and a rename, so a reader never sees
half of one. Does not own: the records (kit/ledger.py), report.html's page (kit/report_html.py), the live view
(kit/dashboard.py) or the Optuna mirror (kit/mirror.py).
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kit.ledger import Ledger, Record
from kit.results import FAILURES, Status
from kit.run_state import NOISE_POLICY, RunState, runs_of

TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"  # autoresearch's results.tsv, column for column
COUNTED = ("noise floor", "kept", "discarded", "pruned", "failed", "rejected", "contended")
"""How an experiment ended, as every view counts it; each record is one of these."""


def tsv_status(record: Record) -> str:
    """autoresearch's status word: keep (accepted), discard (ok or pruned, not accepted), crash (every failure), and
    one of the kit's own: contended (the machine was busy, so the run was neither kept nor discarded)."""
    if record.status == Status.CONTENDED:
        return "contended"
    return "crash" if record.status in FAILURES else "keep" if record.accepted else "discard"


def counted_as(record: Record) -> str:
    """Which of COUNTED a record is: a contended run was never judged, whoever proposed it; the baseline's runs are
    the noise floor (the first of them is the first incumbent, not a kept edit); a rejected proposal never ran."""
    if record.status == Status.CONTENDED:
        return "contended"
    if record.policy == NOISE_POLICY:
        return "noise floor"
    if record.accepted:
        return "kept"
    if record.status == Status.REJECTED:
        return "rejected"
    if record.status in FAILURES:
        return "failed"
    return "pruned" if record.status == Status.PRUNED else "discarded"


def tally(records: list[Record]) -> dict[str, int]:
    """How many records ended each way of COUNTED (every key present)."""
    counts = dict.fromkeys(COUNTED, 0)
    for record in records:
        counts[counted_as(record)] += 1
    return counts


def counts_line(records: list[Record]) -> str:
    """The tally in one sentence: the same words in the dashboard, summary.md and report.html."""
    counts = tally(records)
    words = ", ".join(f"{n} {name}" + (" (not judged)" if name == "contended" else "") for name, n in counts.items())
    return f"{len(records)} experiments: {words}."


def one_line(text: str) -> str:
    """Tabs and newlines would break a TSV row, a table cell or a plot label."""
    return " ".join(text.split())


def results_tsv(records: list[Record]) -> str:
    """results.tsv as autoresearch writes it: short commit, val_bpb and memory_gb zeroed for crashes, one line each."""
    lines = [TSV_HEADER]
    for record in records:
        crashed = (status := tsv_status(record)) == "crash"
        val_bpb = 0.0 if crashed or record.val_bpb is None else record.val_bpb
        memory_gb = 0.0 if crashed or record.peak_mem_mb is None else record.peak_mem_mb / 1024
        description = record.description
        if crashed and record.reason:
            description = f"{description} ({record.status}: {record.reason[:200]})"
        description = one_line(description) or "-"
        lines.append(f"{(record.commit or '-')[:7]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"


@dataclass(frozen=True)
class Standing:
    """What a run directory delivers, as the loop judges it: the kept train.py's runs against the baseline's."""

    baseline: list[float]  # val_bpb of the baseline's ok runs (its noise floor, then any re-runs)
    kept: list[float]  # val_bpb of the ok runs of the train.py kept last (the baseline's, if no edit was kept)
    edits_kept: int
    spread: float | None  # standard deviation of the noise floor's runs (None with fewer than two)
    noise_runs: int

    @property
    def gain(self) -> float:
        """How much lower the kept train.py's mean is than the baseline's (positive: better)."""
        return statistics.fmean(self.baseline) - statistics.fmean(self.kept)


def standing(records: list[Record]) -> Standing | None:
    """The kept train.py against the baseline, or None before the baseline has an ok run."""
    state = RunState()
    for record in records:
        state.add(record)
    noise = [r.val_bpb for r in records if r.policy == NOISE_POLICY and r.status == Status.OK and r.val_bpb is not None]
    kept = [r for r in records if r.accepted]
    if state.incumbent is None or not kept:
        return None
    return Standing(runs_of(records, kept[0].code_hash), list(state.incumbent.values), len(kept) - 1,
                   statistics.stdev(noise) if len(noise) >= 2 else None, len(noise))


def incumbent_means(records: list[Record]) -> list[tuple[int, float]]:
    """(iteration, mean val_bpb of the train.py kept then) after every record from the first kept one on: the line a
    reader should follow, since the loop judges a train.py by the mean of its runs, never by one lucky run."""
    state, points = RunState(), []
    for record in records:
        state.add(record)
        if state.incumbent_mean is not None:
            points.append((record.iteration, state.incumbent_mean))
    return points


def headline(result: Standing | None) -> list[str]:
    if result is None:
        return ["train.py now: not measured yet (the baseline has no ok run).", ""]
    spread = (f"the noise floor ({result.noise_runs} runs of the baseline under different seeds) spreads "
              f"{result.spread:.6f} (standard deviation)" if result.spread is not None
              else "the noise floor is not measured (fewer than two runs of the baseline)")
    base = statistics.fmean(result.baseline)
    if result.edits_kept == 0:
        return [f"train.py now: **the baseline**, no edit kept: mean val_bpb **{base:.6f}** over "
                f"{len(result.baseline)} run(s); {spread}.", ""]
    gain = result.gain
    size = f", {abs(gain) / result.spread:.1f} of that spread" if result.spread else ""
    return [f"train.py now: mean val_bpb **{statistics.fmean(result.kept):.6f}** over {len(result.kept)} run(s), "
            f"against the baseline's {base:.6f} over {len(result.baseline)}: {abs(gain):.6f} "
            f"{'lower (better)' if gain >= 0 else 'higher (worse)'}, {100 * abs(gain) / base:.2f} %{size}; "
            f"{result.edits_kept} edit(s) kept; {spread}.", ""]


def best_single_run(measured: list[Record], kept_code: str | None) -> list[str]:
    if not measured:
        return ["Best single run: none yet (no ok run).", ""]
    best = min(measured, key=lambda r: r.val_bpb)
    line = (f"Best single run: {best.val_bpb:.6f} (one run under one seed, not a mean: iteration {best.iteration}, "
            f"{tsv_status(best)}, policy {best.policy}): {one_line(best.description)}.")
    if best.policy == NOISE_POLICY:
        line += (" It is a noise-floor run of the unchanged baseline: how far it lies below the baseline's mean is "
                 "luck, not an improvement.")
    elif best.code_hash == kept_code:
        line += " It is one of the kept train.py's runs: their mean above is what that train.py is worth."
    return [line, ""]


def throughput(records: list[Record]) -> str | None:
    """Experiments run per wall-clock hour, from the start of the first to the last record, and how many each
    worker ran where several did (their names are in the records); None before two have run."""
    ran = [r for r in records if r.total_seconds > 0 and r.created]
    if len(ran) < 2:
        return None
    hours = (ran[-1].created - ran[0].created + ran[0].total_seconds) / 3600
    text = f"{len(ran) / hours:.1f} experiments per hour"
    workers = Counter(r.policy_stats.get("worker") for r in ran if r.policy_stats.get("worker"))
    if len(workers) > 1:
        text += f" on {len(workers)} workers (" + ", ".join(f"{w}: {n}" for w, n in sorted(workers.items())) + ")"
    return text


def summary_markdown(records: list[Record]) -> str:
    """A short report: what train.py is now against the baseline (means, with the noise floor's spread), the best
    single run labelled as one, counts, time spent."""
    measured = [r for r in records if r.status == Status.OK and r.val_bpb is not None]
    kept = [r.code_hash for r in records if r.accepted]
    lines = ["# Run summary", "", *headline(standing(records)), *best_single_run(measured, (kept or [None])[-1]),
             counts_line(records), "", "| status | count |", "|---|---:|"]
    lines += [f"| {s.value} | {sum(r.status == s.value for r in records)} |" for s in Status]
    lines.append("")
    if records:
        span = (records[-1].created or 0.0) - (records[0].created or 0.0)
        lines += [f"Time: {duration(sum(r.training_seconds for r in records))} training, "
                  f"{duration(sum(r.total_seconds for r in records))} in runs, {duration(span)} from the first "
                  "record to the last.", ""]
        if rate := throughput(records):
            lines += [f"Throughput: {rate}.", ""]
        policies = Counter(r.policy for r in records)
        lines += ["Policies: " + ", ".join(f"{name} {count}" for name, count in policies.items()) + ".", ""]
        prints = {json.dumps(r.fingerprint, sort_keys=True) for r in records if r.fingerprint}
        if len(prints) > 1:
            lines += [f"Warning: records from {len(prints)} fingerprints; compare val_bpb only within one.", ""]
    return "\n".join(lines)


def plot_progress(records: list[Record], path) -> None:
    """Every measured run as a point (noise-floor seeds apart), the kept train.py's mean as the line to follow, the
    noise floor as a band around the baseline's mean, and the best single run marked as a single run."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot state, so a notebook's backend is left alone and nothing leaks.
    fig = Figure(figsize=(10, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    failed = [r for r in records if r.status in FAILURES]
    contended = [r for r in records if r.status == Status.CONTENDED]
    measured = [r for r in records if r.val_bpb is not None and r.status not in FAILURES]
    noise = [r for r in measured if r.policy == NOISE_POLICY]
    kept_code = {r.code_hash for r in records if r.accepted}
    kept = [r for r in measured if r.code_hash in kept_code and r.policy != NOISE_POLICY]
    others = [r for r in measured if r.code_hash not in kept_code and r.policy != NOISE_POLICY]
    result, last = standing(records), max((r.iteration for r in records), default=0)
    if result is not None and result.spread:
        base = statistics.fmean(result.baseline)
        ax.axhspan(base - result.spread, base + result.spread, color="#4c72b0", alpha=0.12, lw=0,
                   label=f"noise floor: baseline mean ± 1 sd ({result.spread:.4f})")
    ax.scatter([r.iteration for r in others], [r.val_bpb for r in others], s=14, color="#b0b0b0",
               label=f"single runs, not kept ({len(others)})")
    ax.scatter([r.iteration for r in noise], [r.val_bpb for r in noise], s=22, facecolors="none",
               edgecolors="#4c72b0", label=f"baseline under other seeds ({len(noise)})")
    ax.scatter([r.iteration for r in kept], [r.val_bpb for r in kept], s=40, color="#2a9d4b", edgecolors="black",
               zorder=3, label=f"runs of kept edits ({len(kept)})")
    for r in (r for r in kept if r.accepted):
        label = one_line(r.description).split(" (")[0][:40]  # the edit, without a re-run's "(run k of n ...)"
        ax.annotate(label, (r.iteration, r.val_bpb), xytext=(4, 4), textcoords="offset points", fontsize=7,
                    rotation=20, color="#1d6e34")
    if means := incumbent_means(records):
        xs, ys = zip(*means, strict=True)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color="#2a9d4b", lw=2,
                label=f"train.py kept: mean of its runs ({ys[-1]:.6f})")
    if measured:
        best = min((r for r in measured if r.status == Status.OK), key=lambda r: r.val_bpb, default=None)
        if best is not None:
            ax.scatter([best.iteration], [best.val_bpb], s=90, marker="*", color="#e69f00", zorder=4,
                       label=f"best single run, one seed ({best.val_bpb:.6f})")
    marks = [(failed, "x", "#d62728", "failed"), (contended, "|", "#ff7f0e", "contended, not judged")]
    for group, marker, color, name in marks:  # no val_bpb to plot: a mark along the top edge says when they happened
        if group:
            ax.scatter([r.iteration for r in group], [1.0] * len(group), transform=ax.get_xaxis_transform(),
                       marker=marker, color=color, clip_on=False, label=f"{name} ({len(group)})")
    if measured:
        values = np.array([r.val_bpb for r in measured])
        top = max(np.quantile(values, 0.9), max((r.val_bpb for r in kept + noise), default=values.min()))
        pad = 0.05 * (top - values.min()) or 0.01
        ax.set_ylim(values.min() - pad, top + pad)  # a few diverged runs must not flatten the interesting band
    else:
        ax.text(0.5, 0.5, "no measured experiments yet", ha="center", va="center", transform=ax.transAxes)
    title = f"{len(records)} experiments, {result.edits_kept if result else 0} edit(s) kept"
    ax.set(title=title, xlabel="iteration", ylabel="val_bpb (lower: better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, format="png")


def write_report(run_dir: Path, ledger: Ledger) -> dict[str, Path]:
    """Write results.tsv, progress.png, summary.md and report.html into run_dir; returns their paths keyed by file
    name."""
    from kit.report_html import render

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = ledger.records()
    writers = {"results.tsv": lambda path: path.write_text(results_tsv(records), encoding="utf-8"),
               "progress.png": lambda path: plot_progress(records, path),
               "summary.md": lambda path: path.write_text(summary_markdown(records), encoding="utf-8"),
               "report.html": lambda path: path.write_text(render(run_dir, records), encoding="utf-8")}
    for name, write in writers.items():  # through a temporary file and a rename: a reader never sees half a file
        write(run_dir / f".{name}.tmp")
        os.replace(run_dir / f".{name}.tmp", run_dir / name)
    return {name: run_dir / name for name in writers}
