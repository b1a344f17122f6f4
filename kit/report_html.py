"""report.html: one self-contained page of a run directory, to open in any browser with no network and no kernel.

Owns: the page: how the run stands (the kept train.py's mean against the baseline's, the counts), best-so-far with
the noise band (progress.png, inlined), every run's learning curve with where the stop rule stopped it and what it
forecast, the kept edits as diffs with their runs, the ablation table where the run directory has one, every
experiment in a table, and the environment's fingerprint. Images are inlined as data: URIs; there is no script.
Does not own: the numbers (kit/report.py computes them alike for every view) or the live views (kit/dashboard.py,
the Optuna mirror in kit/mirror.py).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
import time
from pathlib import Path

from kit.ledger import Record
from kit.report import (
    COUNTED,
    best_single_run,
    counted_as,
    counts_line,
    headline,
    one_line,
    plot_progress,
    standing,
)
from kit.results import Status
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, runs_of
from kit.stopping import describe_loop

COLORS = {"kept": "#2a9d4b", "noise floor": "#4c72b0", "discarded": "#9a9a9a", "pruned": "#e08a00",
          "failed": "#d62728", "rejected": "#d62728", "contended": "#ff7f0e"}
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 12px; }
.state { font-size: 1.1em; } .muted { color: #777; }
"""


def render(run_dir: Path, records: list[Record]) -> str:
    """The page of run_dir's records (and its loop.json and ablation.json, where present), as one HTML string."""
    run_dir = Path(run_dir)
    sections = [overview(run_dir, records), _curves(records), _kept_edits(records),
                _ablation(run_dir), _experiments(records), _environment(records)]
    title = f"Research run {run_dir.name}"
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>" + html.escape(title) +
            f"</title><style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) +
            f"\n<p class='muted'>Written {time.strftime('%Y-%m-%d %H:%M:%S')} from {html.escape(str(run_dir))}"
            "/ledger.sqlite by <code>python -m kit report</code>.</p>\n</body></html>\n")


def overview(run_dir: Path, records: list[Record]) -> str:
    """The page's first section as an HTML fragment (also the notebook's report): how the loop ended, how the kept
    train.py stands against the baseline, the counts, and every run with the kept mean and the noise band."""
    state = describe_loop(run_dir, bool(records))
    policies = ", ".join(sorted({r.policy for r in records if r.policy not in (NOISE_POLICY, CONFIRM_POLICY)})) or "-"
    profiles = ", ".join(sorted({str(r.fingerprint.get("profile")) for r in records if r.fingerprint})) or "-"
    measured = [r for r in records if r.status == Status.OK and r.val_bpb is not None]
    kept = [r.code_hash for r in records if r.accepted]
    text = [line for line in [*headline(standing(records)), *best_single_run(measured, (kept or [None])[-1])] if line]
    progress = io.BytesIO()
    plot_progress(records, progress)
    return (f"<p class='state'><b>{html.escape(state)}</b> · policy {html.escape(policies)} · profile "
            f"{html.escape(profiles)}</p>\n<h2>Where it stands</h2>\n" +
            "".join(f"<p>{_markdown_bold(line)}</p>\n" for line in text) +
            f"<p>{html.escape(counts_line(records))}</p>\n" +
            _image(progress.getvalue(), "every run, the kept train.py's mean and the noise floor"))


def _curves(records: list[Record]) -> str:
    """Every learning curve, coloured by how its run ended; a pruned run ends where it was stopped (×) with its
    forecast of the end as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = {r.iteration: [(t, y) for t, y in r.curve if math.isfinite(y)] for r in records}  # a diverged run: NaN
    with_curves = [r for r in records if len(finite[r.iteration]) >= 2]
    if not with_curves:
        return "<h2>Learning curves</h2>\n<p>No run has reported a learning curve yet.</p>"
    fig = Figure(figsize=(10, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    end = max(float(r.fingerprint.get("budget") or finite[r.iteration][-1][0]) for r in with_curves)
    labelled, losses = set(), []
    for r in with_curves:
        kind = counted_as(r)
        t, y = zip(*finite[r.iteration], strict=True)
        losses += y
        ax.plot(t, y, lw=1.4 if kind == "kept" else 0.7, color=COLORS[kind], alpha=0.9 if kind == "kept" else 0.5,
                label=None if kind in labelled else kind, zorder=3 if kind == "kept" else 2)
        labelled.add(kind)
        forecast = _last_forecast(r)
        if r.status == Status.PRUNED and forecast is not None and math.isfinite(forecast):
            ax.plot([t[-1], end], [y[-1], forecast], "--", lw=0.7, color=COLORS["pruned"], alpha=0.7,
                    label=None if "forecast" in labelled else "forecast where the stop rule stopped it")
            ax.scatter([t[-1]], [y[-1]], marker="x", s=18, color=COLORS["pruned"], zorder=4)
            labelled.add("forecast")
    low, high = min(losses), sorted(losses)[int(0.95 * (len(losses) - 1))]
    ax.set_ylim(low - 0.05 * (high - low or 1), high + 0.1 * (high - low or 1))
    ax.set(xlabel="training seconds", ylabel="training loss", title=f"{len(with_curves)} learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "<h2>Learning curves</h2>\n" + _image(buffer.getvalue(), "every run's learning curve")


def _last_forecast(record: Record) -> float | None:
    """The training loss the stop rule forecast for the run's end at its last check, where it made one."""
    for decision in reversed(record.predictions):
        if isinstance(decision, dict) and decision.get("predicted_loss") is not None:
            return float(decision["predicted_loss"])
    return None


def _kept_edits(records: list[Record]) -> str:
    kept = [r for r in records if r.accepted and r.policy != NOISE_POLICY]
    if not kept:
        return "<h2>Kept edits</h2>\n<p>No edit was kept: train.py is the baseline.</p>"
    rows = []
    for r in kept:
        runs = runs_of(records, r.code_hash)
        shown = ", ".join(f"{v:.6f}" for v in runs)
        rows.append(f"<tr><td class='num'>{r.iteration}</td><td>{html.escape(one_line(r.description))}</td>"
                    f"<td class='num'>{statistics.fmean(runs):.6f}</td><td>{len(runs)}: {shown}</td>"
                    f"<td><code>{html.escape((r.commit or '-')[:7])}</code></td></tr>"
                    f"<tr><td></td><td colspan='4'><details><summary>diff</summary><pre>{html.escape(r.diff)}"
                    "</pre></details></td></tr>")
    return ("<h2>Kept edits</h2>\n<table><tr><th>#</th><th>edit</th><th>mean val_bpb</th><th>runs</th>"
            "<th>commit</th></tr>\n" + "\n".join(rows) + "</table>")


def _ablation(run_dir: Path) -> str:
    """The ablation notebook's table (RUN_DIR/ablation.json) and chart, where this run directory has them."""
    path = run_dir / "ablation.json"
    if not path.exists():
        return ""
    from kit.ablation import summarize

    try:
        summary = summarize(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        return f"<h2>Ablation</h2>\n<p>{html.escape(str(path))} could not be read: {html.escape(str(error))}</p>"
    rows = "\n".join(
        f"<tr><td>{html.escape(s['config'])}</td><td class='num'>{s['ok']}/{s['runs']}</td>"
        f"<td class='num'>{s['val_bpb']:.4f}</td><td class='num'>{s['delta']:+.4f}</td><td class='num'>"
        + ("-" if math.isnan(s["ci_low"]) else f"[{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]") + "</td></tr>"
        for s in summary)
    chart = run_dir / "ablation.png"
    return ("<h2>Ablation</h2>\n<p>Δ is val_bpb minus the baseline's under the same seed (negative: better), with a "
            "95 % t-interval over seeds.</p>\n<table><tr><th>config</th><th>runs ok</th><th>mean val_bpb</th>"
            "<th>Δ</th><th>95 % interval</th></tr>\n" + rows + "</table>\n"
            + (_image(chart.read_bytes(), "the ablation's Δval_bpb with intervals") if chart.exists() else ""))


def _experiments(records: list[Record]) -> str:
    rows = []
    for r in records:
        kind = counted_as(r)
        value = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "-"
        reward = f"{r.reward:+.3f}" if r.reward is not None and math.isfinite(r.reward) else "-"
        why = f" <span class='muted'>({html.escape(one_line(r.reason)[:200])})</span>" if r.reason else ""
        rows.append(f"<tr><td class='num'>{r.iteration}</td><td>{html.escape(r.policy)}</td>"
                    f"<td style='color:{COLORS[kind]}'>{kind}</td><td class='num'>{value}</td>"
                    f"<td class='num'>{reward}</td><td class='num'>{r.total_seconds:.0f}</td>"
                    f"<td>{html.escape(one_line(r.description))}{why}</td></tr>")
    legend = ", ".join(COUNTED)
    return (f"<h2>Every experiment</h2>\n<p class='muted'>How each ended: {legend}.</p>\n<table><tr><th>#</th>"
            "<th>policy</th><th>ended</th><th>val_bpb</th><th>reward</th><th>seconds</th><th>what it tried</th></tr>\n"
            + "\n".join(rows) + "</table>")


def _environment(records: list[Record]) -> str:
    prints = []
    for r in records:
        if r.fingerprint and r.fingerprint not in prints:
            prints.append(r.fingerprint)
    if not prints:
        return "<h2>Environment</h2>\n<p>No run has a fingerprint yet.</p>"
    warning = (f"<p><b>Warning: {len(prints)} fingerprints; compare val_bpb only within one.</b></p>\n"
               if len(prints) > 1 else "")
    tables = "\n".join("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                           for k, v in sorted(p.items())) + "</table>" for p in prints)
    return f"<h2>Environment</h2>\n{warning}{tables}"


def _image(png: bytes, alt: str) -> str:
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></p>"


def _markdown_bold(line: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
