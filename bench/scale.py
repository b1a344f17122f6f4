"""The loop on 1, 2 and 4 workers side by side: experiments per hour and the driver's own time per result; writes
bench/scale.md.

    python bench/scale.py [--profile cpu] [--budget 10] [--experiments 8] [--workers 1,2,4] [--cores-per-worker 1]

Each count of workers runs the same loop (the ppo policy, the real harness, a short budget, the noise floor first)
for the same number of experiments on a local Ray started for it, each worker pinned to its own cores where the
machine has them. Experiments per hour: experiments recorded over the loop's wall time (Ray's start is not counted,
it is paid once a night). The driver's own time: what the loop spends outside waiting for workers (proposing,
judging, recording, git, the Optuna mirror, running.json, dispatching), per result. The CPU that anything else on
the machine used meanwhile is measured and printed: the figures stand only for a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kit import REPO_ROOT
from kit.loop import LoopConfig
from kit.machine import CpuWatch
from kit.parallel import ParallelLoop
from kit.results import contention_limit_default, cpu_name
from kit.stopping import StopConditions
from kit.workers import RayWorkers

OUT = REPO_ROOT / "bench" / "scale.md"


def measure(workers: int, args: argparse.Namespace, root: Path) -> dict:
    shared = workers * args.cores_per_worker > (os.cpu_count() or 1)
    config = LoopConfig(run_dir=root / f"workers-{workers}", profile=args.profile, policy="ppo", budget=args.budget,
                        stop=StopConditions(iterations=args.experiments), seed=0,
                        contention_limit=1.0 if shared else contention_limit_default())
    pool = RayWorkers(workers, args.profile, cores=args.cores_per_worker, say=print)
    try:
        with CpuWatch() as watch:
            loop = ParallelLoop(config, pool, say=print)
            started = time.monotonic()
            try:
                reason = loop.run()
            finally:
                loop.close()
            wall = time.monotonic() - started
    finally:
        pool.close()
    statuses = [r.status for r in loop.state.records]
    return {"workers": workers, "experiments": len(statuses), "wall": wall, "per_hour": len(statuses) / wall * 3600,
            "driver_ms": 1000 * statistics.median(loop.per_result), "driver_mean_ms": 1000 * loop.busy_seconds /
            max(loop.collected, 1), "shared": shared,
            "contended": statuses.count("contended"), "ok": statuses.count("ok"), "reason": reason,
            "others": watch.others_share, "where": sorted(set(pool.where))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--cores-per-worker", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        rows = [measure(n, args, Path(tmp)) for n in counts]
    total = time.monotonic() - began
    cores = os.cpu_count() or 1
    one = next((r for r in rows if r["workers"] == 1), rows[0])
    lines = [
        "# The loop on several workers",
        "",
        f"Measured by `python bench/scale.py --profile {args.profile} --budget {args.budget:g} --experiments "
        f"{args.experiments} --workers {args.workers} --cores-per-worker {args.cores_per_worker}` in one run on "
        f"{datetime.date.today()}: {cpu_name()}, {cores} cores, {platform.machine()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, Ray on this machine; {total / 60:.1f} minutes in all. Every count runs "
        f"the ppo policy on the real harness for {args.experiments} experiments (the noise floor's 3 first) with "
        f"{args.budget:g} s of training each.",
        "",
        "| workers | cores each | experiments | wall time | experiments per hour | × one worker | ideal × | "
        "driver ms per result (median; mean) | other CPU use |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ideal = min(r["workers"], cores // args.cores_per_worker)
        lines.append(f"| {r['workers']} | {args.cores_per_worker}{' (shared)' if r['shared'] else ''} | "
                     f"{r['experiments']} | {r['wall']:.0f} s | {r['per_hour']:.0f} | "
                     f"{r['per_hour'] / one['per_hour']:.2f} | {ideal} | "
                     f"{r['driver_ms']:.0f}; {r['driver_mean_ms']:.0f} | {r['others']:.1%} |")
    lines += ["", "Workers as they named themselves: " + "; ".join(
        f"{r['workers']}: " + ", ".join(r["where"]) for r in rows) + ".", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
