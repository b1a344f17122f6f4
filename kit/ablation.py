"""The ablation of the improvements the source reports: each alone, all together and all but one, over seeds.

Owns: the improvements as edits of the baseline train.py (matrix LR ×1.4, weight decay ×0.4, per-head QK-norm,
gradient-clip warm-up 0.5 → 1.0 over the first 10 %, depth +2), the plan of configurations, running them with the
harness (resumable: a run recorded with the same train.py is not run again), and the table and bar chart of
Δval_bpb against the baseline with paired confidence intervals.
Does not own: running one experiment (kit/harness.py).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit import edits
from kit.harness import run_experiment
from kit.machine import wait_until_quiet
from kit.results import HarnessConfig

CONTENDED_RERUNS = 2  # a run still contended after these is recorded as such and left out of the table
QUIET_WAIT = 300.0  # seconds to wait for the machine to be quiet before a contended run is run again

IMPROVEMENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "matrix LR ×1.4": lambda v: {"MATRIX_LR": v["MATRIX_LR"] * 1.4},
    "weight decay ×0.4": lambda v: {"WEIGHT_DECAY": v["WEIGHT_DECAY"] * 0.4},
    "QK-norm": lambda v: {"QK_NORM": True},
    "clip warm-up 0.5→1.0": lambda v: {"GRAD_CLIP_WARMUP": 0.1, "GRAD_CLIP_START": 0.5, "GRAD_CLIP": 1.0},
    "depth +2": lambda v: {"DEPTH": v["DEPTH"] + 2},
}
"""name -> the knob values it sets, given the baseline's values."""


def plan(baseline: str, names: list[str] | None = None) -> dict[str, str]:
    """label -> train.py source: the baseline, each improvement alone, all together, all but each one (a config
    that equals an earlier one is left out)."""
    names = list(IMPROVEMENTS) if names is None else names
    unknown = [n for n in names if n not in IMPROVEMENTS]
    if unknown:
        raise ValueError(f"unknown improvements {unknown}; choose from {list(IMPROVEMENTS)}")
    values = {k.name: k.value for k in edits.knobs(baseline)}

    def with_(chosen: list[str]) -> str:
        changes: dict[str, Any] = {}
        for name in chosen:
            changes.update(IMPROVEMENTS[name](values))
        return edits.set_values(baseline, changes)

    configs = {"baseline": baseline}
    configs.update({name: with_([name]) for name in names})
    if len(names) > 1:
        configs["all"] = with_(names)
        configs.update({f"all but {name}": with_([n for n in names if n != name]) for name in names})
    unique: dict[str, str] = {}
    for label, source in configs.items():
        if source not in unique.values():
            unique[label] = source
    return unique


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()


def run_ablation(baseline: str, run_dir: Path, profile: str, seeds: int, budget: float | None = None,
                 names: list[str] | None = None, sandbox: str = "auto", log=print) -> list[dict]:
    """Run every config of the plan under seeds profile.seed + i; one row per run, also in RUN_DIR/ablation.json."""
    import prepare

    base_seed = prepare.get_profile(profile).seed
    rows = []
    for label, source in plan(baseline, names).items():
        for i in range(seeds):
            here = Path(run_dir) / _slug(label) / f"seed-{i}"
            done = here / "result.json"
            result = json.loads(done.read_text()) if done.exists() else None
            config = HarnessConfig(profile=profile, budget=budget, seed=base_seed + i, sandbox=sandbox)
            for attempt in range(CONTENDED_RERUNS + 1):
                if result is not None and result.get("train_py") == source and result["status"] != "contended":
                    break
                if attempt:  # a run that shared the machine is not judged: wait for quiet, then run it again
                    log(f"{label:28s} seed {i}: contended ({result['reason'][:100]}); waiting for a quiet machine")
                    wait_until_quiet(config.contention_limit, QUIET_WAIT, give_up=lambda: False)
                result = run_experiment(source, here, config).to_json()
                result["train_py"] = source
                done.write_text(json.dumps(result, indent=1))
            shown = f"{result['val_bpb']:.4f}" if result["val_bpb"] is not None else result["status"]
            log(f"{label:28s} seed {i}: {shown}")
            rows.append({"config": label, "seed": i, "status": result["status"], "val_bpb": result["val_bpb"],
                         "num_steps": result["num_steps"], "diff": edits.unified_diff(baseline, source)})
    Path(run_dir, "ablation.json").write_text(json.dumps(rows, indent=1))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per config: runs ok, mean val_bpb, and Δ against the baseline paired by seed with a 95 % t-interval."""
    from scipy import stats

    by = {}
    for r in rows:
        by.setdefault(r["config"], {})[r["seed"]] = r["val_bpb"] if r["status"] == "ok" else None
    base = by.get("baseline", {})
    noise = [v for v in base.values() if v is not None]
    out = []
    for label, values in by.items():
        ok = [v for v in values.values() if v is not None]
        deltas = [v - base[s] for s, v in values.items() if v is not None and base.get(s) is not None]
        mean_delta = statistics.fmean(deltas) if deltas else math.nan
        if len(deltas) >= 2:
            half = stats.t.ppf(0.975, len(deltas) - 1) * statistics.stdev(deltas) / math.sqrt(len(deltas))
        else:
            half = math.nan
        out.append({"config": label, "runs": len(values), "ok": len(ok),
                    "val_bpb": statistics.fmean(ok) if ok else math.nan, "delta": mean_delta,
                    "ci_low": mean_delta - half, "ci_high": mean_delta + half,
                    "noise_sd": statistics.stdev(noise) if len(noise) >= 2 else math.nan})
    return out


def write_outputs(summary: list[dict], run_dir: Path, title: str) -> dict[str, Path]:
    """ablation.md (the table) and ablation.png (Δval_bpb per config with its interval) in run_dir."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    noise = summary[0]["noise_sd"] if summary else math.nan
    lines = [f"# {title}", "", "Δ is val_bpb minus the baseline's with the same seed (negative: better), with a 95 % "
             f"t-interval over seeds. The baseline's own spread across seeds (noise floor): sd {noise:.4f}.", "",
             "| config | runs ok | mean val_bpb | Δ | 95 % interval |", "|---|---|---|---|---|"]
    for s in summary:
        interval = "-" if math.isnan(s["ci_low"]) else f"[{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]"
        lines.append(f"| {s['config']} | {s['ok']}/{s['runs']} | {s['val_bpb']:.4f} | {s['delta']:+.4f} | "
                     f"{interval} |")
    md = run_dir / "ablation.md"
    md.write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = [s for s in summary if s["config"] != "baseline"]
    deltas = [s["delta"] for s in shown]
    errors = [[s["delta"] - s["ci_low"] if not math.isnan(s["ci_low"]) else 0 for s in shown],
              [s["ci_high"] - s["delta"] if not math.isnan(s["ci_high"]) else 0 for s in shown]]
    ax.bar(range(len(shown)), deltas, yerr=errors, capsize=3,
           color=["#2a9d4b" if d < 0 else "#d62728" for d in deltas])
    if not math.isnan(noise):
        ax.axhspan(-noise, noise, color="grey", alpha=0.2, label="± baseline sd (noise floor)")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(shown)), [s["config"] for s in shown], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="Δ val_bpb vs baseline (lower: better)", title=title)
    png = run_dir / "ablation.png"
    fig.savefig(png)
    return {"table": md, "chart": png}
