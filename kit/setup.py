"""What the setup notebook does: check the machine, prepare the data, run the baseline and measure its noise floor.

Owns: the environment report (device, torch, profile, sandbox, each with what to do when it is missing) and the
noise-floor measurement (the baseline train.py under a few seeds, recorded in a run directory and resumed).
Does not own: running an experiment (kit/harness.py) or the data (prepare.py).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

from kit import sandbox
from kit.harness import REPO_ROOT, HarnessConfig, run_experiment


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
                source: str | None = None, sandbox_backend: str = "auto", log=print) -> dict:
    """Run the baseline `repeats` times with seeds profile.seed + i (the first is the one every agent run uses),
    each in RUN_DIR/baseline-i, skipping runs already recorded there; write RUN_DIR/noise_floor.json."""
    import prepare

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats=}")
    profile = prepare.get_profile(profile_name)
    source = source if source is not None else (REPO_ROOT / "train.py").read_text()
    run_dir = Path(run_dir)
    runs = []
    for i in range(repeats):
        here = run_dir / f"baseline-{i}"
        done = here / "result.json"
        if done.exists() and json.loads(done.read_text()).get("train_py") == source:
            result = json.loads(done.read_text())
        else:
            config = HarnessConfig(profile=profile.name, budget=budget, seed=profile.seed + i, sandbox=sandbox_backend)
            result = run_experiment(source, here, config).to_json()
            result["train_py"] = source  # so a changed baseline is not mistaken for a recorded one
            done.write_text(json.dumps(result, indent=1))
        shown = f"{result['val_bpb']:.6f}" if result["val_bpb"] is not None else "-"
        log(f"baseline seed {result['seed']}: {result['status']} val_bpb {shown} ({result['num_steps']} steps)")
        runs.append({k: result[k] for k in ("seed", "status", "val_bpb", "num_steps", "training_seconds",
                                            "total_seconds")})
    values = [r["val_bpb"] for r in runs if r["status"] == "ok" and r["val_bpb"] is not None]
    summary = {
        "profile": profile.name, "budget": budget or profile.time_budget, "runs": runs,
        "ok": len(values), "mean": statistics.fmean(values) if values else None,
        "stdev": statistics.stdev(values) if len(values) >= 2 else None,
        "min": min(values, default=None), "max": max(values, default=None),
    }
    (run_dir / "noise_floor.json").write_text(json.dumps(summary, indent=1))
    return summary
