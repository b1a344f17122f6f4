"""What a person reads of a run directory: results.tsv in autoresearch's columns, summary.md and progress.png.

Owns: turning the ledger's records into those three files, each written whole through a temporary file and a
rename, so a reader never sees half of one. Does not own: the records (kit/ledger.py) or the live view
(kit/dashboard.py).
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from pathlib import Path

from kit.ledger import Ledger, Record
from kit.results import FAILURES, Status
from kit.run_state import runs_of

TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"  # autoresearch's results.tsv, column for column


def tsv_status(record: Record) -> str:
    """autoresearch's status word: keep (accepted), discard (ok or pruned, not accepted), crash (every failure)."""
    return "crash" if record.status in FAILURES else "keep" if record.accepted else "discard"


def _one_line(text: str) -> str:
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
        description = _one_line(description) or "-"
        lines.append(f"{(record.commit or '-')[:7]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"


def summary_markdown(records: list[Record]) -> str:
    """A short report: counts, the best val_bpb and what it tried, improvement over the first ok run, time spent."""
    words = [tsv_status(r) for r in records]
    lines = ["# Run summary", "",
             f"{len(records)} experiments: {words.count('keep')} kept, {words.count('discard')} discarded, "
             f"{words.count('crash')} crashed.", "", "| status | count |", "|---|---:|"]
    lines += [f"| {s.value} | {sum(r.status == s.value for r in records)} |" for s in Status]
    lines.append("")
    measured = [r for r in records if r.status == Status.OK.value and r.val_bpb is not None]
    if measured:
        best, first = min(measured, key=lambda r: r.val_bpb), measured[0]
        gain = first.val_bpb - best.val_bpb
        lines += [f"Best val_bpb: **{best.val_bpb:.6f}** (iteration {best.iteration}, {tsv_status(best)}, "
                  f"policy {best.policy}): {_one_line(best.description)}", "",
                  f"First ok run: {first.val_bpb:.6f} (iteration {first.iteration}); the best improves on it by "
                  f"{gain:.6f} ({100 * gain / first.val_bpb:.2f}%).", ""]
    else:
        lines += ["Best val_bpb: none yet (no ok run).", ""]
    kept = [r for r in records if r.accepted]
    if kept:  # the best single run may be a lucky draw; the kept train.py is judged by the mean of its runs
        final, baseline = runs_of(records, kept[-1].code_hash), runs_of(records, kept[0].code_hash)
        gain = statistics.fmean(baseline) - statistics.fmean(final)
        lines += [f"train.py now: mean val_bpb **{statistics.fmean(final):.6f}** over {len(final)} run(s), against "
                  f"the baseline's {statistics.fmean(baseline):.6f} over {len(baseline)}: {gain:+.6f} "
                  f"({100 * gain / statistics.fmean(baseline):+.2f}%), {len(kept) - 1} edit(s) kept.", ""]
    if records:
        span = (records[-1].created or 0.0) - (records[0].created or 0.0)
        lines += [f"Time: {_duration(sum(r.training_seconds for r in records))} training, "
                  f"{_duration(sum(r.total_seconds for r in records))} in runs, {_duration(span)} from the first "
                  "record to the last.", ""]
        policies = Counter(r.policy for r in records)
        lines += ["Policies: " + ", ".join(f"{name} {count}" for name, count in policies.items()) + ".", ""]
        prints = {json.dumps(r.fingerprint, sort_keys=True) for r in records if r.fingerprint}
        if len(prints) > 1:
            lines += [f"Warning: records from {len(prints)} fingerprints; compare val_bpb only within one.", ""]
    return "\n".join(lines)


def _plot_progress(records: list[Record], path: Path) -> None:
    """val_bpb of every measured experiment over its iteration, kept ones highlighted, the best-so-far step line."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on an Agg canvas: no pyplot state, so a notebook's backend is left alone and nothing leaks.
    fig = Figure(figsize=(10, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    failed = [r for r in records if r.status in FAILURES]
    measured = [r for r in records if r.val_bpb is not None and r.status not in FAILURES]
    kept, others = [r for r in measured if r.accepted], [r for r in measured if not r.accepted]
    ax.scatter([r.iteration for r in others], [r.val_bpb for r in others], s=14, color="#b0b0b0",
               label=f"discarded ({len(others)})")
    ax.scatter([r.iteration for r in kept], [r.val_bpb for r in kept], s=40, color="#2a9d4b", edgecolors="black",
               zorder=3, label=f"kept ({len(kept)})")
    for r in kept:
        ax.annotate(_one_line(r.description)[:40], (r.iteration, r.val_bpb), xytext=(4, 4), textcoords="offset points",
                    fontsize=7, rotation=20, color="#1d6e34")
    if kept:
        best = np.minimum.accumulate([r.val_bpb for r in kept])
        last = max(r.iteration for r in records)
        ax.step([r.iteration for r in kept] + [last], [*best, best[-1]], where="post", color="#2a9d4b",
                label=f"best so far ({best[-1]:.6f})")
    if failed:  # no val_bpb to plot: a mark along the top edge says when they happened
        ax.scatter([r.iteration for r in failed], [1.0] * len(failed), transform=ax.get_xaxis_transform(),
                   marker="x", color="#d62728", clip_on=False, label=f"failed ({len(failed)})")
    if measured:
        values = np.array([r.val_bpb for r in measured])
        top = max(np.quantile(values, 0.9), max((r.val_bpb for r in kept), default=values.min()))
        pad = 0.05 * (top - values.min()) or 0.01
        ax.set_ylim(values.min() - pad, top + pad)  # a few diverged runs must not flatten the interesting band
    else:
        ax.text(0.5, 0.5, "no measured experiments yet", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"{len(records)} experiments, {len(kept)} kept", xlabel="iteration", ylabel="val_bpb (lower: better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, format="png")


def write_report(run_dir: Path, ledger: Ledger) -> dict[str, Path]:
    """Write results.tsv, progress.png and summary.md into run_dir; returns their paths keyed by file name."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = ledger.records()
    writers = {"results.tsv": lambda path: path.write_text(results_tsv(records), encoding="utf-8"),
               "progress.png": lambda path: _plot_progress(records, path),
               "summary.md": lambda path: path.write_text(summary_markdown(records), encoding="utf-8")}
    for name, write in writers.items():  # through a temporary file and a rename: a reader never sees half a file
        write(run_dir / f".{name}.tmp")
        os.replace(run_dir / f".{name}.tmp", run_dir / name)
    return {name: run_dir / name for name in writers}
