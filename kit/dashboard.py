"""A live view of a run directory for JupyterLab, and the notebook's way of running the loop live or headless.

Owns: reading what a loop leaves on disk (the ledger, read-only, RUN_DIR/loop.json and the running experiment's
train.log) into a `Snapshot`; drawing it (val_bpb over experiments and over time, single runs as points and the kept
train.py's mean as the line; the running curve with its power-law forecast and the incumbent's curve; the rewards),
with the current diff, the counts, "k of N" and the time left, the last reward and PPO statistics; the ipywidgets
view with pause / resume / stop buttons, which only create or remove the loop's HOLD and STOP files and are enabled
only where they can act, and the loop's own lines under it; `run_notebook_loop`, which shows all that while the loop
runs in a background thread in JupyterLab, or runs the loop blocking and saves the figure under papermill; and
`show_report`, the notebook's report, which waits for a live loop to end before it shows anything.
Does not own: the loop (kit/loop.py) or the numbers every view shares (kit/report.py); it never writes the ledger.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import edits
from kit.ledger import Ledger, Record
from kit.predictor import fit_power_law
from kit.report import counts_line, duration, incumbent_means, tally, throughput
from kit.results import Status
from kit.run_state import NOISE_POLICY
from kit.stopping import HOLD_FILE, STOP_FILE, LoopStatus, describe_loop, read_status

LOG_LINES = 12  # the loop's latest lines shown under the dashboard


def in_jupyter_frontend() -> bool:
    """True in a kernel a Jupyter server started for a notebook (JupyterLab, Notebook); False under papermill,
    nbclient or plain Python, where there is no one to see a widget."""
    return "JPY_SESSION_NAME" in os.environ


def read_live_curve(experiment_dir: Path) -> list[tuple[float, float]]:
    """The (t, loss) points a running experiment has printed so far."""
    import prepare

    log = Path(experiment_dir) / "train.log"
    points = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return points
    for line in text.splitlines():
        if line.startswith(prepare.PROGRESS_PREFIX):
            try:
                record = json.loads(line[len(prepare.PROGRESS_PREFIX):])
                points.append((float(record["t"]), float(record["loss"])))
            except (ValueError, KeyError, TypeError):
                continue
    return points


@dataclass
class Snapshot:
    """Everything the dashboard shows, read from a run directory."""

    records: list[Record]
    counts: dict[str, int]  # kit.report.tally: the same counts as summary.md and report.html
    means: list[tuple[int, float]]  # kit.report.incumbent_means: the kept train.py's mean after each record
    best: float | None  # the mean val_bpb of the kept train.py's runs (the incumbent), never one lucky run
    incumbent: Record | None  # the record that made the kept train.py the incumbent
    state: str  # running, on hold, stopping, or how and why the loop ended
    running: bool  # a loop is at work on this directory now
    held: bool  # RUN_DIR/HOLD exists: no new experiment starts
    status: LoopStatus | None = None
    running_dir: Path | None = None
    running_curve: list[tuple[float, float]] = field(default_factory=list)
    running_diff: str = ""
    jobs: list[dict] = field(default_factory=list)  # with several workers: RUN_DIR/running.json's running jobs

    @property
    def last_reward(self) -> tuple[float | None, dict]:
        agent = [r for r in self.records if r.policy != NOISE_POLICY]
        return (agent[-1].reward, agent[-1].reward_parts) if agent else (None, {})

    @property
    def ppo_stats(self) -> dict:
        """The statistics of the last PPO update (records between updates only carry logprob and value)."""
        for r in reversed(self.records):
            update = {k.removeprefix("losses/"): v for k, v in r.policy_stats.items() if k.startswith("losses/")}
            if update:
                return update
        return {}

    @property
    def progress(self) -> str:
        """"experiment k of N" and the time left under this invocation's limits, where they are set."""
        status, parts = self.status, []
        if status is None:
            return ""
        if status.iterations:
            parts.append(f"experiment {min(len(self.records) + self.running, status.iterations)} of "
                         f"{status.iterations}")
        if status.hours and status.started and self.running:
            left = max(0.0, status.hours * 3600 - (time.time() - status.started))
            parts.append(f"{duration(left)} left of {status.hours:g} h")
        return " · ".join(parts)


def read_snapshot(run_dir: Path, ledger: Ledger | None) -> Snapshot:
    run_dir = Path(run_dir)
    records = ledger.records() if ledger is not None else []
    kept = [r for r in records if r.accepted]
    means = incumbent_means(records)
    status = read_status(run_dir)
    running = status is not None and status.alive
    snapshot = Snapshot(records=records, counts=tally(records), means=means, best=means[-1][1] if means else None,
                        incumbent=kept[-1] if kept else None, state=describe_loop(run_dir, bool(records), status),
                        running=running, held=(run_dir / HOLD_FILE).exists(), status=status)
    experiment = run_dir / "experiments" / f"{len(records) + 1:05d}"  # the loop's next experiment directory
    snapshot.jobs = _running_jobs(run_dir) if running else []
    if snapshot.jobs:  # several workers: show the oldest running one's curve
        experiment = Path(snapshot.jobs[0]["dir"])
    if running and (experiment / "train.log").exists() and not (experiment / "result.json").exists():
        snapshot.running_dir = experiment
        snapshot.running_curve = read_live_curve(experiment)
        current = run_dir / "repo" / "train.py"
        if current.exists() and (experiment / "train.py").exists():
            snapshot.running_diff = edits.unified_diff(current.read_text(), (experiment / "train.py").read_text())
    return snapshot


def _running_jobs(run_dir: Path) -> list[dict]:
    """The experiments a loop with several workers runs now (kit/parallel.py writes them), oldest first."""
    try:
        jobs = json.loads((run_dir / "running.json").read_text())["jobs"]
    except (OSError, ValueError, KeyError):
        return []
    return [j for j in jobs if j.get("state") == "running"]


# ---------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------


def render_png(snapshot: Snapshot, budget: float | None = None) -> bytes:
    """The dashboard's four plots as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    by_experiment, by_time, live, rewards = fig.subplots(2, 2).ravel()
    records = snapshot.records
    _best_so_far(by_experiment, snapshot, {r.iteration: r.iteration for r in records}, "experiment")
    seconds = np.cumsum([r.total_seconds for r in records])
    unit, scale = _time_unit(float(seconds[-1]) if len(seconds) else 0.0)
    at = {r.iteration: s / scale for r, s in zip(records, seconds, strict=True)}
    _best_so_far(by_time, snapshot, at, f"{unit} of experiments")
    _live_curve(live, snapshot, budget)
    agent = [r for r in records if r.policy != NOISE_POLICY and r.reward is not None]
    rewards.plot([r.iteration for r in agent], [r.reward for r in agent], ".-", color="#6a51a3", lw=0.8)
    rewards.axhline(0, color="grey", lw=0.5)
    rewards.set(title="reward per experiment", xlabel="experiment", ylabel="reward")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _time_unit(seconds: float) -> tuple[str, float]:
    """A unit that makes the time axis readable: seconds, minutes or hours."""
    return ("seconds", 1.0) if seconds < 300 else ("minutes", 60.0) if seconds < 3 * 3600 else ("hours", 3600.0)


def _best_so_far(ax, snapshot: Snapshot, x: dict[int, float], xlabel: str) -> None:
    """Single runs as points (kept ones green), and the kept train.py's mean as the line: what the loop calls best."""
    records = snapshot.records
    measured = [r for r in records if r.status == Status.OK and r.val_bpb is not None]
    if not measured:
        ax.text(0.5, 0.5, "no measured experiment yet", ha="center", va="center", transform=ax.transAxes)
    else:
        values = [r.val_bpb for r in measured]
        kept_code = {r.code_hash for r in records if r.accepted}
        colors = ["#4c72b0" if r.policy == NOISE_POLICY else "#2a9d4b" if r.code_hash in kept_code else "#b0b0b0"
                  for r in measured]
        ax.scatter([x[r.iteration] for r in measured], values, s=12, c=colors, label="single runs")
        if means := snapshot.means:
            last = x[records[-1].iteration]
            xs, ys = [x[i] for i, _ in means], [m for _, m in means]
            ax.step([*xs, last], [*ys, ys[-1]], where="post", color="#2a9d4b", lw=2,
                    label=f"train.py kept: mean of its runs ({ys[-1]:.4f})")
            ax.legend(fontsize=7, loc="upper right")
        top = float(np.quantile(values, 0.9))
        ax.set_ylim(min(values) - 0.02 * abs(min(values)), max(top, values[0]) + 0.01)
    ax.set(title=f"val_bpb over {xlabel}", xlabel=xlabel, ylabel="val_bpb")
    ax.grid(alpha=0.3)


def _live_curve(ax, snapshot: Snapshot, budget: float | None) -> None:
    if snapshot.incumbent is not None and snapshot.incumbent.curve:
        t, y = np.array(snapshot.incumbent.curve).T
        ax.plot(t, y, color="#2a9d4b", lw=0.8, label=f"incumbent (val_bpb {snapshot.incumbent.val_bpb:.4f})")
    curve = snapshot.running_curve
    if curve:
        t, y = np.array(curve).T
        ax.plot(t, y, color="#1f77b4", lw=0.8, label=f"running: {snapshot.running_dir.name}")
        end = budget or (float(snapshot.incumbent.curve[-1][0]) if snapshot.incumbent is not None
                         and snapshot.incumbent.curve else None)
        if end and len(curve) >= 8 and t[-1] < end:
            u = t / end
            keep = u >= 0.02
            if keep.sum() >= 4:
                fit = fit_power_law(u[keep], y[keep])
                grid = np.linspace(u[-1], 1.0, 50)
                ax.plot(grid * end, fit(grid), "--", color="#1f77b4", lw=1,
                        label=f"power-law forecast: {float(fit(1.0)):.3f} at the end")
    if snapshot.incumbent is None and not curve:
        ax.text(0.5, 0.5, "no curve yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7, loc="upper right")
        losses = [p[1] for p in curve] + ([p[1] for p in snapshot.incumbent.curve] if snapshot.incumbent else [])
        if losses:
            low = min(losses)
            ax.set_ylim(low - 0.05, np.quantile(losses, 0.95) + 0.1)
    ax.set(title="training loss: running experiment and incumbent", xlabel="training seconds", ylabel="loss")
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------


class Dashboard:
    """The ipywidgets view of a run directory; `update()` re-reads it, `start()` does so in the background."""

    def __init__(self, run_dir: Path, budget: float | None = None):
        import ipywidgets as w

        self.run_dir, self.budget = Path(run_dir), budget
        self._ledger: Ledger | None = None
        self.snapshot: Snapshot | None = None
        self._seen: tuple | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self._reading = threading.Lock()  # the refresh thread, the loop's thread and button clicks all update
        self._closed = False
        self.text = w.HTML()
        self.image = w.Image(format="png")
        self.diff = w.HTML()
        self.log = w.HTML()
        self.pause_button = w.Button(description="Pause", icon="pause", tooltip="hold before the next experiment")
        self.resume_button = w.Button(description="Resume", icon="play", tooltip="go on with the next experiment")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="stop after the running experiment is recorded")
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.on_click(lambda _: self.stop())
        buttons = w.HBox([self.pause_button, self.resume_button, self.stop_button])
        self.widget = w.VBox([buttons, self.text, self.image, w.HTML("<b>current diff</b>"), self.diff,
                              w.HTML("<b>the loop says</b>"), self.log])
        for widget, name in ((self.widget, "dashboard"), (self.text, "status"), (self.log, "log")):
            widget.add_class(f"autoresearch-{name}")  # what a browser test looks for
        self.update()

    # the buttons: files the loop reads between experiments
    def pause(self) -> None:
        (self.run_dir / HOLD_FILE).touch()
        self.update()

    def resume(self) -> None:
        (self.run_dir / HOLD_FILE).unlink(missing_ok=True)
        self.update()

    def stop(self) -> None:
        (self.run_dir / STOP_FILE).touch()
        (self.run_dir / HOLD_FILE).unlink(missing_ok=True)  # a held loop must wake up to stop
        self.update()

    def say(self, line: str) -> None:
        """One of the loop's lines, shown under the dashboard (the loop's `say` in a notebook)."""
        self._lines.append(line)
        self.log.value = "<pre style='font-size:11px;margin:0'>" + html.escape("\n".join(self._lines)) + "</pre>"

    def update(self) -> bool:
        """Re-read the run directory; redraw and return True if anything changed (never after close())."""
        with self._reading:
            return not self._closed and self._update()

    def _update(self) -> bool:
        if self._ledger is None and (self.run_dir / "ledger.sqlite").exists():
            self._ledger = Ledger(self.run_dir, readonly=True)
        snapshot = read_snapshot(self.run_dir, self._ledger)
        self.pause_button.disabled = not snapshot.running or snapshot.held
        self.resume_button.disabled = not snapshot.held
        self.stop_button.disabled = not snapshot.running
        seen = (len(snapshot.records), snapshot.state, len(snapshot.running_curve), snapshot.running_dir)
        text = describe(snapshot)  # its time left changes without anything to redraw
        if seen == self._seen and text == self.text.value:
            return False
        png = render_png(snapshot, self.budget) if seen != self._seen else None  # before the text: both change at once
        self._seen, self.snapshot = seen, snapshot
        self.text.value = text
        if png is not None:
            self.image.value = png
        diff = snapshot.running_diff or (snapshot.records[-1].diff if snapshot.records else "")
        self.diff.value = "<pre style='font-size:11px'>" + html.escape(diff or "(no change)") + "</pre>"
        return True

    def start(self, interval: float = 2.0) -> Dashboard:
        """Refresh every `interval` seconds in a background thread until close()."""
        def refresh():
            while not self._halt.wait(interval):
                try:
                    self.update()
                except Exception as error:  # a half-written file: show it and try again next time
                    if not self._halt.is_set():
                        self.text.value = f"dashboard: could not read the run directory ({error}); retrying"
        self._thread = threading.Thread(target=refresh, daemon=True, name="dashboard")
        self._thread.start()
        return self

    def save_png(self, path: Path) -> Path:
        self.update()
        Path(path).write_bytes(self.image.value)
        return Path(path)

    def close(self, last_look: bool = False) -> None:
        """Stop refreshing (after one more update with last_look: the state the loop ended in) and let go of the
        ledger."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if last_look:
            self.update()
        with self._reading:
            self._closed = True
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None


def describe(snapshot: Snapshot) -> str:
    """The dashboard's text as HTML: state, progress, counts, the kept train.py's mean, last reward, PPO."""
    best = (f"<b>{snapshot.best:.6f}</b> (mean of the kept train.py's runs)" if snapshot.best is not None
            else "<b>-</b> (no run measured yet)")
    reward, parts = snapshot.last_reward
    reward_text = "-" if reward is None else f"{reward:+.3f} (" + ", ".join(
        f"{k} {v:+.3f}" for k, v in parts.items()) + ")"
    stats = ", ".join(f"{k} {v:.4g}" for k, v in snapshot.ppo_stats.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)) or "no update yet"
    running = (f"running {snapshot.running_dir.name}: {len(snapshot.running_curve)} progress reports"
               if snapshot.running_dir else "no experiment running")
    if snapshot.jobs:
        now = time.time()
        running = "<br>".join(html.escape(f"{j['worker']}: {j['description']} ({duration(now - j['started'])})")
                              for j in snapshot.jobs if j.get("started"))
    progress = f" · {snapshot.progress}" if snapshot.progress else ""
    rate = f" · {html.escape(rate)}" if (rate := throughput(snapshot.records)) else ""
    return (f"<b>{html.escape(snapshot.state)}</b>{progress}<br>{html.escape(counts_line(snapshot.records))}{rate}<br>"
            f"val_bpb now {best} · last reward {reward_text}<br>PPO: {stats}<br>{running}")


# ---------------------------------------------------------------------------
# The notebook's entry points
# ---------------------------------------------------------------------------


@dataclass(repr=False)
class LiveRun:
    """The loop running in a background thread of a notebook kernel, with its dashboard."""

    thread: threading.Thread
    dashboard: Dashboard
    outcome: dict
    ended: threading.Event = field(default_factory=threading.Event)
    _then: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:  # what the notebook cell shows under the dashboard
        if not self.ended.is_set():
            return "the loop runs in the background; outcome.wait() blocks until it ends"
        return f"the loop ended: {self.outcome.get('reason')}"

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until the loop ends (or timeout); the reason it stopped."""
        self.thread.join(timeout)
        return self.outcome.get("reason")

    def then(self, callback: Callable[[], None]) -> None:
        """Call callback once the loop has ended (at once if it has)."""
        with self._lock:
            if not self.ended.is_set():
                self._then.append(callback)
                return
        callback()

    def _end(self) -> None:
        with self._lock:
            self.ended.set()
            callbacks, self._then = self._then, []
        for callback in callbacks:
            try:
                callback()
            except Exception as error:  # noqa: BLE001 - one view's failure must not keep the others waiting
                self.dashboard.say(f"after the loop: {type(error).__name__}: {error}")


def run_notebook_loop(config, live: bool | None = None, refresh: float = 2.0,
                      display: Callable | None = None) -> LiveRun | str:
    """Run the research loop for a notebook. Live (JupyterLab): in a background thread with the dashboard shown and
    refreshed and the loop's lines under it, returning at once. Headless (papermill, plain Python): blocking, one
    printed line per experiment, the dashboard's figure saved to RUN_DIR/dashboard.png at the end; returns why the
    loop stopped."""
    import prepare
    from kit.loop import run_loop

    live = in_jupyter_frontend() if live is None else live
    budget = float(config.budget or prepare.get_profile(config.profile).time_budget)
    if not live:
        reason = run_loop(config)
        figure = Dashboard(config.run_dir, budget)
        figure.save_png(Path(config.run_dir) / "dashboard.png")
        figure.close()
        return reason

    def target():
        try:
            outcome["reason"] = run_loop(config, say=dashboard.say)
        except Exception as error:  # shown on the dashboard and kept for wait()
            outcome["reason"] = f"error: {error}"
            dashboard.say(outcome["reason"])
        finally:
            try:
                dashboard.close(last_look=True)  # the state the loop ended in, drawn after the last refresh
            finally:
                live_run._end()

    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    outcome: dict = {}
    dashboard = Dashboard(config.run_dir, budget)
    if display is None:
        from IPython.display import display
    display(dashboard.widget)
    live_run = LiveRun(threading.Thread(target=target, daemon=True, name="research-loop"), dashboard, outcome)
    live_run.thread.start()
    dashboard.start(refresh)
    return live_run


def show_report(run_dir: Path, outcome: LiveRun | str | None = None, display: Callable | None = None) -> None:
    """The notebook's report: how the run stands, the counts and the progress figure (report.html's first section),
    with summary.md, results.tsv, progress.png and report.html written beside the ledger. While a live loop still
    runs (Run All reaches this cell at once) it shows where the report will appear and fills it in when the loop
    ends."""
    from IPython.display import HTML

    from kit.report import write_report
    from kit.report_html import overview

    if display is None:
        from IPython.display import display

    def report() -> str:
        if not (Path(run_dir) / "ledger.sqlite").exists():
            return f"<p>No ledger in {html.escape(str(run_dir))}: the loop recorded nothing.</p>"
        try:
            with Ledger(run_dir, readonly=True) as ledger:
                paths = write_report(Path(run_dir), ledger)
                return overview(Path(run_dir), ledger.records()) + (
                    f"<p>Written: {', '.join(html.escape(str(p)) for p in paths.values())}</p>")
        except Exception as error:  # noqa: BLE001 - said where the report would be; the ledger has everything
            return f"<p>The report could not be written: {html.escape(f'{type(error).__name__}: {error}')}</p>"

    if not isinstance(outcome, LiveRun):
        display(HTML(report()))  # plain HTML: an executed notebook keeps it without a kernel
        return
    import ipywidgets as w

    view = w.HTML("<i>The loop is running: its report appears here when it stops.</i>")
    display(view)
    outcome.then(lambda: setattr(view, "value", report()))
