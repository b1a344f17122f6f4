"""The setup notebook's back end: check the machine, and measure the baseline's noise floor.

Owns: the environment report (device, torch, profile, sandbox, data, each with what to do when it is missing) and
the noise floor as the setup notebook shows it (RUN_DIR/noise_floor.json).
Does not own: measuring the noise floor (the research loop does that, once, in kit/loop.py) or the data (prepare.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

from kit import REPO_ROOT, sandbox
from kit.ledger import Ledger
from kit.loop import LoopConfig, run_loop
from kit.repo import TrainRepo
from kit.results import Status
from kit.run_state import NOISE_POLICY
from kit.stopping import StopConditions


def environment_report(profile_name: str) -> list[dict]:
    """Rows of (check, value, ok, what to do) for the setup notebook's first table."""
    import torch

    import prepare

    profile = prepare.get_profile(profile_name)
    device = prepare.get_device()
    try:
        backend = sandbox.resolve_backend("auto")
    except Exception as error:  # resolve_backend explains itself
        backend = f"none ({error})"
    data_ready = (prepare.data_dir(profile) / "manifest.json").exists()
    rows = [
        ("python", platform.python_version(), sys.version_info >= (3, 11), "use Python 3.11 or newer"),
        ("torch", torch.__version__, True, ""),
        ("device", device + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""),
         device != "cpu" or profile.name != "gpu", "the gpu profile needs a CUDA GPU; use --profile cpu here"),
        ("profile", f"{profile.name}: {profile.time_budget:g} s per experiment", True, ""),
        ("sandbox", backend, backend in ("bwrap", "unshare"),
         "install bubblewrap (apt-get install bubblewrap) to isolate experiments; they run unisolated now"),
        ("data", str(prepare.data_dir(profile)), data_ready or profile.name == "smoke",
         f"run prepare (the next cell), or `python prepare.py --profile {profile.name}`"),
        ("cores", str(os.cpu_count()), True, ""),
    ]
    return [{"check": c, "value": v, "ok": bool(ok), "to do": "" if ok else todo} for c, v, ok, todo in rows]


def noise_floor(profile_name: str, run_dir: Path, repeats: int = 3, budget: float | None = None,
                train_py: Path = REPO_ROOT / "train.py", sandbox_backend: str = "auto") -> dict:
    """The baseline train.py under `repeats` seeds (profile.seed + i; the first is the one every agent run uses),
    measured by the research loop itself: run_dir is a loop run directory holding just the noise floor, which the
    loop (and notebooks/01_research_loop.ipynb) can go on from. Runs already recorded there are not run again.
    Writes RUN_DIR/noise_floor.json and returns what it holds."""
    import prepare

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats=}")
    profile = prepare.get_profile(profile_name)
    run_dir = Path(run_dir)
    baseline = Path(train_py).read_text()
    if _recorded_baseline(run_dir) not in (None, baseline):
        raise ValueError(f"{run_dir} holds the noise floor of another train.py; give a new run_dir")
    run_loop(LoopConfig(run_dir=run_dir, profile=profile.name, policy="random", budget=budget, train_py=train_py,
                        sandbox=sandbox_backend, noise_repeats=repeats, stop=StopConditions(iterations=repeats)))
    with Ledger(run_dir, readonly=True) as ledger:
        records = [r for r in ledger.records() if r.policy == NOISE_POLICY]
    runs = [{"seed": r.seed, "status": r.status, "val_bpb": r.val_bpb, "num_steps": len(r.curve),
             "training_seconds": r.training_seconds, "total_seconds": r.total_seconds} for r in records]
    values = [r.val_bpb for r in records if r.status == Status.OK and r.val_bpb is not None]
    summary = {
        "profile": profile.name, "budget": budget or profile.time_budget, "runs": runs,
        "ok": len(values), "mean": statistics.fmean(values) if values else None,
        "stdev": statistics.stdev(values) if len(values) >= 2 else None,
        "min": min(values, default=None), "max": max(values, default=None),
    }
    (run_dir / "noise_floor.json").write_text(json.dumps(summary, indent=1))
    return summary


def _recorded_baseline(run_dir: Path) -> str | None:
    """The train.py a run directory started from, if it has a ledger."""
    if not (run_dir / "ledger.sqlite").exists():
        return None
    with Ledger(run_dir, readonly=True) as ledger:
        commit = ledger.get_meta("baseline_commit")
    return TrainRepo(run_dir / "repo").show(commit) if commit else None
