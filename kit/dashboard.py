"""A live view of a run directory for JupyterLab, and the notebook's way of running the loop live or headless.

Owns: reading what a loop leaves on disk (the ledger, read-only, and the running experiment's train.log) into a
`Snapshot`; drawing it (best-so-far val_bpb over experiments and over hours, the running curve with its
power-law forecast and the incumbent's curve, the current diff, counts, the last reward and PPO statistics);
the ipywidgets view with pause / resume / stop buttons, which only create or remove the loop's HOLD and STOP
files; and `run_notebook_loop`, which shows all that while the loop runs in a background thread in JupyterLab,
or runs the loop blocking and saves the figure under papermill.
Does not own: the loop (kit/loop.py); it never writes the ledger.
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kit import edits
from kit.ledger import Ledger, Record
from kit.predictor import fit_power_law
from kit.results import FAILURES, Status
from kit.run_state import NOISE_POLICY
from kit.stopping import HOLD_FILE, STOP_FILE

FAILED = FAILURES - {Status.REJECTED}  # rejected proposals are counted apart: nothing ran


def in_jupyter_frontend() -> bool:
    """True in a kernel a Jupyter server started for a notebook (JupyterLab, Notebook); False under papermill,
    nbclient or plain Python, where there is no one to see a widget."""
    return "JPY_SESSION_NAME" in os.environ


def read_live_curve(experiment_dir: Path) -> list[tuple[float, float]]:
    """The (t, loss) points a running experiment has printed so far."""
    import json

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
    counts: dict[str, int]
    best: float | None
    incumbent: Record | None
    state: str
    running_dir: Path | None = None
    running_curve: list[tuple[float, float]] = field(default_factory=list)
    running_diff: str = ""

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


def read_snapshot(run_dir: Path, ledger: Ledger | None) -> Snapshot:
    run_dir = Path(run_dir)
    records = ledger.records() if ledger is not None else []
    counts = {"kept": 0, "discarded": 0, "pruned": 0, "failed": 0, "rejected": 0, "noise floor": 0}
    for r in records:
        if r.policy == NOISE_POLICY:
            counts["noise floor"] += 1
        elif r.accepted:
            counts["kept"] += 1
        elif r.status == "pruned":
            counts["pruned"] += 1
        elif r.status in FAILED:
            counts["failed"] += 1
        elif r.status == "rejected":
            counts["rejected"] += 1
        else:
            counts["discarded"] += 1
    kept = [r for r in records if r.accepted and r.val_bpb is not None]
    incumbent = kept[-1] if kept else None
    snapshot = Snapshot(records=records, counts=counts, best=incumbent.val_bpb if incumbent else None,
                        incumbent=incumbent, state=_state(run_dir))
    running = run_dir / "experiments" / f"{len(records) + 1:05d}"  # the loop's next experiment directory
    if (running / "train.log").exists() and not (running / "result.json").exists():
        snapshot.running_dir = running
        snapshot.running_curve = read_live_curve(running)
        current = run_dir / "repo" / "train.py"
        if current.exists() and (running / "train.py").exists():
            snapshot.running_diff = edits.unified_diff(current.read_text(), (running / "train.py").read_text())
    return snapshot


def _state(run_dir: Path) -> str:
    if (run_dir / "PAUSED").exists():
        return "paused after failures: " + (run_dir / "PAUSED").read_text().strip()
    if (run_dir / STOP_FILE).exists():
        return "stopping after the running experiment"
    if (run_dir / HOLD_FILE).exists():
        return "on hold: no new experiment starts until resumed"
    return "running"


# ---------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------


def render_png(snapshot: Snapshot, budget: float | None = None) -> bytes:
    """The dashboard's four plots as one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    by_experiment, by_hours, live, rewards = fig.subplots(2, 2).ravel()
    measured = [r for r in snapshot.records if r.status == "ok" and r.val_bpb is not None]
    _best_so_far(by_experiment, measured, [r.iteration for r in measured], "experiment")
    hours = np.cumsum([r.total_seconds for r in snapshot.records]) / 3600
    at = {r.iteration: h for r, h in zip(snapshot.records, hours, strict=True)}
    _best_so_far(by_hours, measured, [at[r.iteration] for r in measured], "hours of experiments")
    _live_curve(live, snapshot, budget)
    agent = [r for r in snapshot.records if r.policy != NOISE_POLICY and r.reward is not None]
    rewards.plot([r.iteration for r in agent], [r.reward for r in agent], ".-", color="#6a51a3", lw=0.8)
    rewards.axhline(0, color="grey", lw=0.5)
    rewards.set(title="reward per experiment", xlabel="experiment", ylabel="reward")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _best_so_far(ax, measured: list[Record], x: list[float], xlabel: str) -> None:
    if not measured:
        ax.text(0.5, 0.5, "no measured experiment yet", ha="center", va="center", transform=ax.transAxes)
    else:
        values = [r.val_bpb for r in measured]
        colors = ["#2a9d4b" if r.accepted else "#b0b0b0" for r in measured]
        ax.scatter(x, values, s=12, c=colors)
        ax.step(x, np.minimum.accumulate(values), where="post", color="#2a9d4b")
        top = float(np.quantile(values, 0.9))
        ax.set_ylim(min(values) - 0.02 * abs(min(values)), max(top, values[0]) + 0.01)
    ax.set(title=f"best val_bpb over {xlabel}", xlabel=xlabel, ylabel="val_bpb")
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


def describe(snapshot: Snapshot) -> str:
    """The dashboard's text as HTML: state, counts, best, last reward and PPO statistics."""
    counts = ", ".join(f"{n} {k}" for k, n in snapshot.counts.items())
    best = f"{snapshot.best:.6f}" if snapshot.best is not None else "-"
    reward, parts = snapshot.last_reward
    reward_text = "-" if reward is None else f"{reward:+.3f} (" + ", ".join(
        f"{k} {v:+.3f}" for k, v in parts.items()) + ")"
    stats = ", ".join(f"{k} {v:.4g}" for k, v in snapshot.ppo_stats.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)) or "no update yet"
    running = (f"running {snapshot.running_dir.name}: {len(snapshot.running_curve)} steps"
               if snapshot.running_dir else "no experiment running")
    return (f"<b>{snapshot.state}</b> · {len(snapshot.records)} experiments: {counts}<br>"
            f"best val_bpb <b>{best}</b> · last reward {reward_text}<br>PPO: {stats}<br>{running}")


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
        self.text = w.HTML()
        self.image = w.Image(format="png")
        self.diff = w.HTML()
        self.pause_button = w.Button(description="Pause", icon="pause", tooltip="hold before the next experiment")
        self.resume_button = w.Button(description="Resume", icon="play", tooltip="go on with the next experiment")
        self.stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                    tooltip="stop after the running experiment is recorded")
        self.pause_button.on_click(lambda _: self.pause())
        self.resume_button.on_click(lambda _: self.resume())
        self.stop_button.on_click(lambda _: self.stop())
        buttons = w.HBox([self.pause_button, self.resume_button, self.stop_button])
        self.widget = w.VBox([buttons, self.text, self.image, w.HTML("<b>current diff</b>"), self.diff])
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

    def update(self) -> bool:
        """Re-read the run directory; redraw and return True if anything changed."""
        if self._ledger is None and (self.run_dir / "ledger.sqlite").exists():
            self._ledger = Ledger(self.run_dir, readonly=True)
        snapshot = read_snapshot(self.run_dir, self._ledger)
        seen = (len(snapshot.records), snapshot.state, len(snapshot.running_curve), snapshot.running_dir)
        if seen == self._seen:
            return False
        self._seen, self.snapshot = seen, snapshot
        self.text.value = describe(snapshot)
        self.image.value = render_png(snapshot, self.budget)
        diff = snapshot.running_diff or (snapshot.records[-1].diff if snapshot.records else "")
        self.diff.value = "<pre style='font-size:11px'>" + _escape(diff or "(no change)") + "</pre>"
        return True

    def start(self, interval: float = 2.0) -> Dashboard:
        """Refresh every `interval` seconds in a background thread until close()."""
        def refresh():
            while not self._halt.wait(interval):
                try:
                    self.update()
                except Exception as error:  # a half-written file: show it and try again next time
                    self.text.value = f"dashboard: could not read the run directory ({error}); retrying"
        self._thread = threading.Thread(target=refresh, daemon=True, name="dashboard")
        self._thread.start()
        return self

    def save_png(self, path: Path) -> Path:
        self.update()
        Path(path).write_bytes(self.image.value)
        return Path(path)

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------
# The notebook's entry point
# ---------------------------------------------------------------------------


@dataclass
class LiveRun:
    """The loop running in a background thread of a notebook kernel, with its dashboard."""

    thread: threading.Thread
    dashboard: Dashboard
    outcome: dict

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until the loop ends (or timeout); the reason it stopped."""
        self.thread.join(timeout)
        return self.outcome.get("reason")


def run_notebook_loop(config, live: bool | None = None, refresh: float = 2.0,
                      display: Callable | None = None) -> LiveRun | str:
    """Run the research loop for a notebook. Live (JupyterLab): in a background thread with the dashboard shown and
    refreshed, returning at once. Headless (papermill, plain Python): blocking, one printed line per experiment,
    the dashboard's figure saved to RUN_DIR/dashboard.png at the end; returns why the loop stopped."""
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
    outcome: dict = {}

    def target():
        try:
            outcome["reason"] = run_loop(config)
        except Exception as error:  # shown on the dashboard and kept for wait()
            outcome["reason"] = f"error: {error}"
        finally:
            dashboard.update()
            time.sleep(refresh)
            dashboard.close()

    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    dashboard = Dashboard(config.run_dir, budget)
    if display is None:
        from IPython.display import display
    display(dashboard.widget)
    thread = threading.Thread(target=target, daemon=True, name="research-loop")
    thread.start()
    dashboard.start(refresh)
    return LiveRun(thread, dashboard, outcome)
