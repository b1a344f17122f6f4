"""The real check of bench/agents.md: policies through the real loop on the `cpu` profile, no surrogate, the same
hours each, side by side, over several seeds; then every final train.py re-measured under fresh seeds. Writes
bench/agents_real.md.

    python prepare.py --profile cpu
    python bench/agents_real.py --policies ppo,cmaes --seeds 3 --hours 0.4

For each seed, each policy gets its own loop process pinned to its own core (taskset, one torch thread), started
at the same moment and stopped by the same --hours, so all meet the same machine at the same time. The final
train.py of every loop, and the baseline, then run under --fresh-runs seeds no loop used, pinned one per core, so
the comparison rests on runs that did not choose what was kept. Every number comes from ledgers and those runs. A
finished loop or re-measurement is not run again: an interrupted check resumes with the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

from kit import REPO_ROOT as REPO
from kit.bench.agents import REEVALUATION_SEEDS
from kit.ledger import Ledger, Record
from kit.memory import code_hash
from kit.repo import TrainRepo
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, runs_of

SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cores_for(count: int) -> list[int]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        raise SystemExit(f"error: {count} policies need as many cores, this machine gives {len(cores)}; "
                         "name fewer policies")
    return cores


def run_side_by_side(policies: list[str], hours: float, root: Path, seed: int) -> float:
    """One seed's loops, started together, one core each; the wall-clock hours they took (0 if all had finished)."""
    cores = cores_for(len(policies))
    env = {**os.environ, **SINGLE_THREAD}
    started = time.monotonic()
    processes = []
    for core, policy in zip(cores, policies, strict=False):
        name = f"{policy}-seed{seed}"
        if (root / f"{name}.done").exists():
            continue
        log = open(root / f"{name}.log", "a")  # noqa: SIM115 - open for the child's lifetime
        argv = ["taskset", "-c", str(core), sys.executable, "-m", "kit", "loop", "--profile", "cpu", "--policy",
                policy, "--seed", str(seed), "--hours", str(hours), "--run-dir", str(root / name)]
        processes.append((name, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)))
    for name, process in processes:
        if process.wait() != 0:
            raise SystemExit(f"error: the {name} loop failed; see {root / f'{name}.log'}")
        (root / f"{name}.done").write_text("")
    return (time.monotonic() - started) / 3600 if processes else 0.0


def remeasure(sources: dict[str, str], runs: int, root: Path, cores: list[int]) -> dict[str, list[float]]:
    """val_bpb of each source (by code hash) under the first `runs` fresh seeds, one run per core at a time; every
    finished run is kept in root/remeasured.json, so an interrupted check does not repeat it."""
    store = root / "remeasured.json"
    done: dict[str, float | None] = json.loads(store.read_text()) if store.exists() else {}
    todo = [(digest, seed) for digest in sources for seed in REEVALUATION_SEEDS[:runs]
            if f"{digest}:{seed}" not in done]
    free = list(cores)

    def run(task: tuple[str, int]) -> None:
        digest, seed = task
        core = free.pop()
        try:
            folder = root / "remeasure" / f"{digest}-{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "train.py").write_text(sources[digest])
            argv = ["taskset", "-c", str(core), sys.executable, "-m", "kit", "experiment", str(folder / "train.py"),
                    "--profile", "cpu", "--seed", str(seed), "--run-dir", str(folder / "run"), "--json"]
            out = subprocess.run(argv, cwd=REPO, env={**os.environ, **SINGLE_THREAD}, capture_output=True, text=True,
                                 check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            done[f"{digest}:{seed}"] = result["val_bpb"] if result["status"] == "ok" else None
            store.write_text(json.dumps(done, indent=1))
        finally:
            free.append(core)

    with ThreadPoolExecutor(len(cores)) as pool:
        list(pool.map(run, todo))
    return {digest: [done[f"{digest}:{seed}"] for seed in REEVALUATION_SEEDS[:runs]] for digest in sources}


def summarize(policy: str, seed: int, run_dir: Path) -> dict:
    with Ledger(run_dir, readonly=True) as ledger:
        records = ledger.records()
    noise = [r for r in records if r.policy == NOISE_POLICY]
    agent = [r for r in records if r.policy != NOISE_POLICY]
    kept = [r for r in records if r.accepted]
    statuses: dict[str, int] = {}
    for r in agent:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    oks = [r.val_bpb for r in agent if r.status == "ok"]
    final_runs = runs_of(records, kept[-1].code_hash)
    final = TrainRepo(run_dir / "repo").source()
    return {"policy": policy, "seed": seed, "experiments": len(agent),
            "confirmations": sum(r.policy == CONFIRM_POLICY for r in agent),
            "statuses": statuses, "hours": sum(r.total_seconds for r in records) / 3600,
            "baseline": _mean(records, noise[0].code_hash), "noise_sd": statistics.stdev(
                [r.val_bpb for r in noise if r.val_bpb is not None]),
            "best_run": min(oks) if oks else math.nan, "final": statistics.fmean(final_runs),
            "final_runs": len(final_runs), "source": final, "digest": code_hash(final),
            "kept": [r.description for r in kept if r.policy != NOISE_POLICY]}


def _mean(records: list[Record], digest: str) -> float:
    return statistics.fmean(runs_of(records, digest))


def interval(values: list[float]) -> str:
    """Mean and 95 % t-interval of values (one per seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.4f} [{mean - half:.4f}, {mean + half:.4f}]"


def report(rows: list[dict], fresh: dict[str, list[float | None]], baseline_digest: str, args: argparse.Namespace,
           wall: float) -> str:
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})

    def fresh_mean(digest: str) -> float:
        values = fresh[digest]
        return math.nan if any(v is None for v in values) else statistics.fmean(values)

    base = fresh_mean(baseline_digest)
    lines = ["# Real check on the `cpu` profile (no surrogate)", "",
             f"Measured by `python bench/agents_real.py --policies {','.join(policies)} --seeds {len(seeds)} --hours "
             f"{args.hours:g} --fresh-runs {args.fresh_runs}` on {platform.machine()} with {os.cpu_count()} cores, "
             f"finished {time.strftime('%Y-%m-%d')}, {wall:.2f} h of wall-clock time in "
             "the sitting that finished it (a resumed check ran longer in all). For each seed the loops "
             f"ran side by side for {args.hours:g} h, one core and one torch thread each: the real harness, sandbox "
             "and same-progress early stopping, val_bpb from the frozen evaluator. Then each loop's final train.py "
             f"and the baseline ran under {args.fresh_runs} seeds no loop used, one core each. With one core a run "
             "trains fewer steps than the profile's usual two, so the values sit above the replayed world's.", "",
             "## What a user gets: the final train.py re-measured under fresh seeds (mean over seeds, 95 % interval)",
             "", f"The baseline under the same fresh seeds: {base:.4f}.", "",
             "| policy | seeds | final train.py, re-measured | its gain on the baseline | mean in-loop runs of it |",
             "|---|---:|---:|---:|---:|"]
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        finals = [fresh_mean(r["digest"]) for r in mine]
        lines.append(f"| {policy} | {len(mine)} | {interval(finals)} | {interval([base - f for f in finals])} | "
                     f"{statistics.fmean(r['final'] for r in mine):.4f} |")
    first = policies[0]
    for other in policies[1:]:
        pairs = [(fresh_mean(a["digest"]), fresh_mean(b["digest"])) for a in rows if a["policy"] == first
                 for b in rows if b["policy"] == other and b["seed"] == a["seed"]]
        differences = [a - b for a, b in pairs]
        lines += ["", f"Paired by seed, {first} − {other}: {interval(differences)} (negative: {first} lower); "
                  f"{sum(d < 0 for d in differences)} of {len(differences)} seeds lower."]
    lines += ["", "## Every loop", "",
              "| policy | seed | experiments (re-runs of near misses) | outcomes | hours of experiments | baseline: "
              "noise floor mean (sd) | best single run | final train.py: in-loop mean (runs) | re-measured | edits "
              "kept |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(f"| {r['policy']} | {r['seed']} | {r['experiments']} ({r['confirmations']}) | {outcomes} | "
                     f"{r['hours']:.2f} | {r['baseline']:.4f} ({r['noise_sd']:.4f}) | {r['best_run']:.4f} | "
                     f"{r['final']:.4f} ({r['final_runs']}) | {fresh_mean(r['digest']):.4f} | "
                     f"{'; '.join(r['kept']) or 'none'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="ppo,cmaes", help="comma-separated, one core each; the first is "
                        "compared with each other")
    parser.add_argument("--seeds", type=int, default=3, help="loops per policy, seeds 0, 1, ...")
    parser.add_argument("--hours", type=float, default=0.4, help="wall-clock hours of each loop")
    parser.add_argument("--fresh-runs", type=int, default=2, help="runs of each final train.py under fresh seeds")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "real-check")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "agents_real.md")
    args = parser.parse_args()
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not 1 <= args.fresh_runs <= len(REEVALUATION_SEEDS) or args.seeds < 1:
        raise SystemExit(f"error: --seeds takes 1 or more and --fresh-runs 1 to {len(REEVALUATION_SEEDS)}")
    cores = cores_for(len(policies))
    args.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for seed in range(args.seeds):
        run_side_by_side(policies, args.hours, args.root, seed)
    rows = [summarize(p, seed, args.root / f"{p}-seed{seed}") for seed in range(args.seeds) for p in policies]
    baseline = (REPO / "train.py").read_text()
    sources = {code_hash(baseline): baseline} | {r["digest"]: r["source"] for r in rows}
    fresh = remeasure(sources, args.fresh_runs, args.root, cores)
    text = report(rows, fresh, code_hash(baseline), args, (time.monotonic() - started) / 3600)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
