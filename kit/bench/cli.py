"""The benchmarks' command line: `python -m kit bench …`.

    python -m kit bench record --profile cpu --runs N [--design] [--out data/curves-cpu.jsonl.gz]
    python -m kit bench early-stopping [--curves data/curves-cpu.jsonl.gz] [--orders 50]
    python -m kit bench agents [--environment {replay,synthetic}] [--seeds 20] [--experiments 300] [--jobs 2]

Owns: their arguments, one-line errors for bad input, and the reports' headers (what was measured, how, where).
Does not own: the benchmarks (the modules beside this one).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from kit import REPO_ROOT
from kit.arguments import SANDBOXES, OneLineParser, UsageError, ensure_data, positive, positive_int, profiles
from kit.policies import REGISTRY

CURVES = REPO_ROOT / "data" / "curves-cpu.jsonl.gz"
NO_CURVES = "record some with `python -m kit bench record --profile cpu --runs 150`"
# what the agents benchmark can run: every policy that needs nothing beyond the loop (no model, no endpoint)
BENCHABLE = tuple(name for name, entry in REGISTRY.items() if not entry.needs)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m kit bench", description="Record learning curves; benchmark early "
                           "stopping and agents on them.")
    benches = parser.add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    rec = benches.add_parser("record", help="run full experiments of train.py and random edits of it; append each "
                             "run's curve to a dataset (resumes)")
    rec.add_argument("--profile", choices=profiles(), default="cpu")
    rec.add_argument("--runs", type=positive_int, required=True, help="stop once the dataset holds this many runs")
    rec.add_argument("--out", type=Path, help="default: data/curves-<profile>.jsonl.gz (data/design-<profile>."
                     "jsonl.gz with --design)")
    rec.add_argument("--design", action="store_true", help="record the tabular world's design instead: catalog "
                     "walks and Sobol points around the baseline, each under the same seeds")
    rec.add_argument("--seed", type=int, default=0, help="seed of the choice of runs")
    rec.add_argument("--budget", type=positive, default=None, help="training seconds (default: the profile's)")
    rec.add_argument("--sandbox", choices=SANDBOXES, default="auto")
    rec.set_defaults(run=_record)

    stop = benches.add_parser("early-stopping", help="replay recorded curves under every stop rule and Optuna's "
                              "pruners; write bench/early_stopping.md and a plot")
    stop.add_argument("--curves", type=Path, default=CURVES)
    stop.add_argument("--orders", type=positive_int, default=50, help="random orders of the runs to replay")
    stop.add_argument("--seed", type=int, default=0)
    stop.add_argument("--noise-sigmas", type=float, default=2.0,
                      help="a run is kept if it beats the incumbent by this many baseline standard deviations "
                           "(the loop's default)")
    stop.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "early_stopping.md")
    stop.set_defaults(run=_early_stopping)

    agents = benches.add_parser("agents", help="every policy through the loop, many seeds, on a world replayed from "
                                "recorded runs (or a synthetic one); write bench/agents.md and a plot")
    agents.add_argument("--environment", choices=("replay", "synthetic"), default="replay")
    agents.add_argument("--curves", type=Path, default=CURVES)
    agents.add_argument("--policies", default=",".join(BENCHABLE), help="comma-separated")
    agents.add_argument("--seeds", type=positive_int, default=20)
    agents.add_argument("--experiments", type=positive_int, default=300, help="agent experiments per run")
    agents.add_argument("--synthetic-seed", type=int, default=1, help="which synthetic objective")
    agents.add_argument("--jobs", type=positive_int, default=1, help="worker processes (one core each)")
    agents.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "agents.md")
    agents.set_defaults(run=_agents)
    return parser


def _read_curves(path: Path) -> list[dict]:
    from kit.bench.recorder import read_dataset

    if not path.exists():
        raise UsageError(f"no recorded curves at {path}: {NO_CURVES}")
    return read_dataset(path)


def _record(args: argparse.Namespace) -> int:
    from kit.bench.recorder import record

    ensure_data(args.profile)
    name = "design" if args.design else "curves"
    out = getattr(args, "out", None) or REPO_ROOT / "data" / f"{name}-{args.profile}.jsonl.gz"
    records = record(out, args.runs, profile=args.profile, seed=args.seed, budget=args.budget, sandbox=args.sandbox,
                     design=args.design)
    print(f"{len(records)} runs in {out}")
    return 0


def _early_stopping(args: argparse.Namespace) -> int:
    from kit.bench import early_stopping

    records = _read_curves(args.curves)
    try:
        stream = early_stopping.Stream.of(early_stopping.load_runs(records), noise_sigmas=args.noise_sigmas)
    except ValueError as error:
        raise UsageError(str(error)) from None
    summaries = early_stopping.run_benchmark(stream, args.orders, seed=args.seed)
    devices = sorted({str(r.get("device")) for r in records})
    machine = f"curves recorded on {', '.join(devices)}; replayed on {platform.machine()} with {os.cpu_count()} cores"
    command = f"python -m kit bench early-stopping --curves {args.curves.name} --orders {args.orders}"
    out = early_stopping.write_report(summaries, stream, records, args.orders, args.out, machine, command)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _agents(args: argparse.Namespace) -> int:
    from kit.bench import agents

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if any(p not in BENCHABLE for p in policies) or len(policies) < 2:
        raise UsageError(f"--policies takes two or more of {', '.join(BENCHABLE)}; got {args.policies!r}")
    baseline = (REPO_ROOT / "train.py").read_text()
    command = (f"python -m kit bench agents --environment {args.environment} --seeds {args.seeds} "
               f"--experiments {args.experiments} --policies {','.join(policies)}")
    if args.environment == "synthetic":
        from kit.bench.environments import SyntheticConfig, SyntheticEnvironment

        environment = SyntheticEnvironment(baseline, SyntheticConfig(seed=args.synthetic_seed))
        budget, world = environment.config.budget, environment.describe()
        command += f" --synthetic-seed {args.synthetic_seed}"
    else:
        from kit.bench.replay import ReplayEnvironment

        try:
            environment = ReplayEnvironment(baseline, _read_curves(args.curves))
        except ValueError as error:
            raise UsageError(str(error)) from None
        budget = environment.budget
        cv = environment.surrogate.cross_validate()
        world = (f"replayed from {sum(len(v) for v in environment.recorded.values())} recorded runs in "
                 f"{args.curves.name} (the surrogate's 5-fold held-out error on {cv['runs']} ok runs: RMSE "
                 f"{cv['rmse']:.4f}, MAE {cv['mae']:.4f}, Spearman {cv['spearman']:.2f}; a constant predictor: RMSE "
                 f"{cv['constant_rmse']:.4f}, MAE {cv['constant_mae']:.4f}; fitted seed noise "
                 f"{cv['noise_sd']:.4f})")
    started = time.perf_counter()
    trajectories = agents.run_all(policies, args.seeds, environment, args.experiments, budget, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    header = ["# Agents head to head", "",
              f"Measured by `{command}` in one run on {platform.machine()} with {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}, in {minutes:.0f} minutes with {args.jobs} worker processes. "
              f"World: {world}. Every policy runs the unchanged loop (a noise floor of 3 baseline runs, the gate, "
              "same-progress early stopping, keeping an edit when the mean of its runs beats the incumbent's by 2σ "
              "scaled to the runs on each side, near misses re-run under up to 2 new seeds, git, ledger) for "
              f"{args.experiments} experiments per seed; an experiment is a proposal or a re-run of a near miss, so "
              "a duplicate or rejected proposal counts as one, and so does each re-run."]
    out = agents.write_report(trajectories, args.out, header)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def main(argv: list[str]) -> int:
    """Run one benchmark command (kit.cli.main prints a UsageError as one line, exit status 2)."""
    args = _parser().parse_args(argv)
    return args.run(args)
