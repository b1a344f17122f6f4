"""The real check of bench/agents.md: policies through the real loop on the `cpu` profile, no surrogate, the same
hours each, side by side; writes its section of bench/agents.md.

    python prepare.py --profile cpu
    python bench/agents_real.py --policies ppo,greedy --hours 0.75

Each policy gets its own loop process pinned to its own core (taskset, one torch thread), started at the same
moment and stopped by the same --hours, so both meet the same machine at the same time. Every number comes from
the loops' ledgers. A run directory that exists is resumed. One seed per policy: this checks the direction the
replayed world points in, it cannot give a significance level.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kit import REPO_ROOT as REPO
from kit.bench.agents import REAL_CHECK as SECTION
from kit.ledger import Ledger, Record
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, runs_of


def run_side_by_side(policies: list[str], hours: float, root: Path) -> float:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < len(policies):
        raise SystemExit(f"error: {len(policies)} policies need as many cores, this machine gives {len(cores)}; "
                         "name fewer policies")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()
    processes = []
    for core, policy in zip(cores, policies, strict=False):
        log = open(root / f"{policy}.log", "a")  # noqa: SIM115 - open for the child's lifetime
        argv = ["taskset", "-c", str(core), sys.executable, "-m", "kit", "loop", "--profile", "cpu", "--policy",
                policy, "--hours", str(hours), "--run-dir", str(root / policy)]
        processes.append((policy, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)))
    for policy, process in processes:
        if process.wait() != 0:
            raise SystemExit(f"error: the {policy} loop failed; see {root / f'{policy}.log'}")
    return (time.monotonic() - started) / 3600


def mean_of(records: list[Record], digest: str) -> tuple[float, int]:
    values = runs_of(records, digest)
    return statistics.fmean(values), len(values)


def summarize(policy: str, run_dir: Path) -> dict:
    with Ledger(run_dir, readonly=True) as ledger:
        records = ledger.records()
    noise = [r for r in records if r.policy == NOISE_POLICY]
    agent = [r for r in records if r.policy != NOISE_POLICY]
    kept = [r for r in records if r.accepted]
    baseline, baseline_runs = mean_of(records, noise[0].code_hash)
    final, final_runs = mean_of(records, kept[-1].code_hash)
    statuses: dict[str, int] = {}
    for r in agent:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    oks = [r.val_bpb for r in agent if r.status == "ok"]
    return {"policy": policy, "experiments": len(agent),
            "confirmations": sum(r.policy == CONFIRM_POLICY for r in agent),
            "statuses": statuses, "hours": sum(r.total_seconds for r in records) / 3600,
            "baseline": baseline, "baseline_runs": baseline_runs,
            "noise_sd": statistics.stdev([r.val_bpb for r in noise if r.val_bpb is not None]),
            "best_run": min(oks) if oks else float("nan"), "final": final, "final_runs": final_runs,
            "kept": [r.description for r in kept if r.policy != NOISE_POLICY]}


def section(rows: list[dict], hours: float, wall: float) -> str:
    lines = [SECTION, "",
             f"Measured by `python bench/agents_real.py --policies {','.join(r['policy'] for r in rows)} --hours "
             f"{hours:g}` on {platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}: the "
             f"loops ran side by side, one core and one torch thread each, for {wall:.2f} h of wall-clock time. "
             "The real harness, sandbox and same-progress early stopping; val_bpb from the frozen evaluator. With "
             "one core a run trains fewer steps than the profile's usual two, so the values sit above the replayed "
             "world's; both policies meet the same machine.", "",
             "| policy | experiments (re-runs of near misses) | outcomes | hours of experiments | baseline: mean "
             "of the noise floor (runs, sd) | best single run | final train.py: mean of its runs (runs) | edits "
             "kept |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        kept = "; ".join(r["kept"]) or "none"
        lines.append(f"| {r['policy']} | {r['experiments']} ({r['confirmations']}) | {outcomes} | {r['hours']:.2f} | "
                     f"{r['baseline']:.4f} ({r['baseline_runs']}, {r['noise_sd']:.4f}) | {r['best_run']:.4f} | "
                     f"{r['final']:.4f} ({r['final_runs']}) | {kept} |")
    return "\n".join(lines) + "\n"


def write_section(out: Path, text: str) -> None:
    """Replace this script's section of the report (it runs to the end of the file), or append it."""
    report = out.read_text() if out.exists() else ""
    head = report.split(SECTION)[0].rstrip("\n")
    out.write_text((head + "\n\n" if head else "") + text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="ppo,greedy", help="comma-separated, one core each")
    parser.add_argument("--hours", type=float, default=0.75, help="wall-clock hours of each loop")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "real-check")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "agents.md")
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    args.root.mkdir(parents=True, exist_ok=True)
    wall = run_side_by_side(policies, args.hours, args.root)
    rows = [summarize(p, args.root / p) for p in policies]
    write_section(args.out, section(rows, args.hours, wall))
    print(section(rows, args.hours, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
