"""The kit's command line.

    python -m kit prepare --profile cpu
    python -m kit experiment [train.py] --profile {smoke,cpu,gpu} [--budget S] [--run-dir DIR] [--json]
    python -m kit loop --profile cpu --policy {ppo,random,greedy,tpe,cmaes} [--iterations N] [--hours H] [--run-dir DIR]
                       [--early-stopping {power-law,linear,same-progress,calibrated,none}]
    python -m kit report RUN_DIR
    python -m kit bench record --profile cpu --runs N [--out data/curves-cpu.jsonl.gz]
    python -m kit bench early-stopping [--curves data/curves-cpu.jsonl.gz] [--orders 50]
    python -m kit bench agents [--environment {replay,synthetic}] [--seeds 20] [--experiments 300]

Owns: argument parsing, one-line errors for bad input (exit 2), and printing results.
Does not own: any of the work (kit/harness.py, prepare.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kit.harness import REPO_ROOT, HarnessConfig, run_experiment
from kit.policy import POLICIES
from kit.predictor import RULES

PROFILES = ("smoke", "cpu", "gpu")


class UsageError(Exception):
    """Bad input: printed as one line that says what to do, exit status 2."""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (and says where help is) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m kit", description="autoresearch-rl: an RL agent that "
                                     "improves train.py on its own.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    prep = commands.add_parser("prepare", help="prepare the frozen data of a profile")
    prep.add_argument("--profile", choices=PROFILES, default="cpu")

    exp = commands.add_parser("experiment", help="run one experiment of a train.py and print its result")
    exp.add_argument("train_py", nargs="?", default=str(REPO_ROOT / "train.py"), help="default: the kit's train.py")
    exp.add_argument("--profile", choices=PROFILES, default="cpu")
    exp.add_argument("--budget", type=_positive, default=None, help="training seconds (default: the profile's)")
    exp.add_argument("--run-dir", type=Path, default=None, help="default: runs/experiment-<time>")
    exp.add_argument("--seed", type=int, default=None, help="seed for the frozen side (default: the profile's)")
    exp.add_argument("--sandbox", choices=("auto", "bwrap", "unshare", "none"), default="auto")
    exp.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")

    loop = commands.add_parser("loop", help="run the research loop until the termination oracle or a stop")
    loop.add_argument("--profile", choices=PROFILES, default="cpu")
    loop.add_argument("--policy", choices=POLICIES, default="ppo")
    loop.add_argument("--iterations", type=_positive_int, default=None, help="stop at this many experiments recorded")
    loop.add_argument("--hours", type=_positive, default=None, help="stop after this many wall-clock hours")
    loop.add_argument("--gpu-hours", type=_positive, default=None, help="stop after this many GPU-hours of experiments")
    loop.add_argument("--run-dir", type=Path, default=None, help="default: runs/<policy>-<profile>; same dir resumes")
    loop.add_argument("--seed", type=int, default=0, help="seed of the policy")
    loop.add_argument("--budget", type=_positive, default=None, help="training seconds (default: the profile's)")
    loop.add_argument("--train-py", type=Path, default=REPO_ROOT / "train.py", help="baseline of a new run directory")
    loop.add_argument("--sandbox", choices=("auto", "bwrap", "unshare", "none"), default="auto")
    loop.add_argument("--lm-model", default=None, help="the lm policy's causal LM: a local path or a hub name")
    loop.add_argument("--llm-url", default=None, help="the llm proposer's OpenAI-compatible endpoint, e.g. "
                      "http://127.0.0.1:8000/v1 (API key from $OPENAI_API_KEY)")
    loop.add_argument("--llm-model", default=None, help="the model name the llm endpoint serves")
    loop.add_argument("--early-stopping", choices=(*RULES, "none"), default="same-progress",
                      help="stop rule asked while a run trains (default: same-progress, which "
                           "bench/early_stopping.md found safe)")
    loop.add_argument("--confirm-runs", type=int, default=2, help="runs under new seeds a near miss gets before it "
                      "is dropped (0: judge every edit on one run)")

    bench = commands.add_parser("bench", help="record learning curves; benchmark early stopping and agents")
    benches = bench.add_subparsers(dest="bench", required=True, parser_class=_OneLineParser,
                                    metavar="{record,early-stopping,agents}")
    rec = benches.add_parser("record", help="run full experiments of train.py and random edits of it; append each "
                             "run's curve to a dataset (resumes)")
    rec.add_argument("--profile", choices=PROFILES, default="cpu")
    rec.add_argument("--runs", type=_positive_int, required=True, help="stop once the dataset holds this many runs")
    rec.add_argument("--out", type=Path, default=None, help="default: data/curves-<profile>.jsonl.gz")
    rec.add_argument("--seed", type=int, default=0, help="seed of the choice of runs")
    rec.add_argument("--budget", type=_positive, default=None, help="training seconds (default: the profile's)")
    rec.add_argument("--sandbox", choices=("auto", "bwrap", "unshare", "none"), default="auto")

    stop = benches.add_parser("early-stopping", help="replay recorded curves under every stop rule and Optuna's "
                              "pruners; write bench/early_stopping.md and a plot")
    stop.add_argument("--curves", type=Path, default=REPO_ROOT / "data" / "curves-cpu.jsonl.gz")
    stop.add_argument("--orders", type=_positive_int, default=50, help="random orders of the runs to replay")
    stop.add_argument("--seed", type=int, default=0)
    stop.add_argument("--noise-sigmas", type=float, default=2.0,
                      help="a run is kept if it beats the incumbent by this many baseline standard deviations "
                           "(the loop's default)")
    stop.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "early_stopping.md")

    agents = benches.add_parser("agents", help="every policy through the loop, many seeds, on a world replayed from "
                                "recorded runs (or a synthetic one); write bench/agents.md and a plot")
    agents.add_argument("--environment", choices=("replay", "synthetic"), default="replay")
    agents.add_argument("--curves", type=Path, default=REPO_ROOT / "data" / "curves-cpu.jsonl.gz")
    agents.add_argument("--policies", default="ppo,random,greedy,tpe,cmaes", help="comma-separated")
    agents.add_argument("--seeds", type=_positive_int, default=20)
    agents.add_argument("--experiments", type=_positive_int, default=300, help="agent experiments per run")
    agents.add_argument("--synthetic-seed", type=int, default=1, help="which synthetic objective")
    agents.add_argument("--jobs", type=_positive_int, default=1, help="worker processes (one core each)")
    agents.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "agents.md")

    report = commands.add_parser("report", help="write results.tsv, progress.png and summary.md of a run directory")
    report.add_argument("run_dir", type=Path)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _loop(args: argparse.Namespace) -> int:
    from kit.ledger import LedgerLocked
    from kit.loop import LoopConfig, ResumeError, run_loop

    _read_train_py(str(args.train_py))
    _ensure_data(args.profile)
    run_dir = args.run_dir or Path("runs") / f"{args.policy}-{args.profile}"
    try:
        config = LoopConfig(run_dir=run_dir, profile=args.profile, policy=args.policy, iterations=args.iterations,
                            hours=args.hours, gpu_hours=args.gpu_hours, seed=args.seed, budget=args.budget,
                            train_py=args.train_py, sandbox=args.sandbox, early_stopping=args.early_stopping,
                            lm_model=args.lm_model, llm_url=args.llm_url, llm_model=args.llm_model,
                            confirm_runs=args.confirm_runs)
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        reason = run_loop(config)
    except (LedgerLocked, ResumeError) as error:
        raise UsageError(str(error)) from None
    print(f"{reason}\nreport: {Path(run_dir) / 'summary.md'}, results.tsv, progress.png")
    return 0


def _report(args: argparse.Namespace) -> int:
    from kit.ledger import Ledger, write_report

    if not (args.run_dir / "ledger.sqlite").exists():
        raise UsageError(f"no ledger in {args.run_dir}: give the --run-dir of a loop")
    with Ledger(args.run_dir, readonly=True) as ledger:
        paths = write_report(args.run_dir, ledger)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from kit import curves

    if args.bench == "early-stopping":
        return _early_stopping(args)
    if args.bench == "agents":
        return _agents(args)
    _ensure_data(args.profile)
    out = args.out or REPO_ROOT / "data" / f"curves-{args.profile}.jsonl.gz"
    records = curves.record(out, args.runs, profile=args.profile, seed=args.seed, budget=args.budget,
                            sandbox=args.sandbox)
    print(f"{len(records)} runs in {out}")
    return 0


def _early_stopping(args: argparse.Namespace) -> int:
    import platform

    from kit import curves, stopping_bench

    if not args.curves.exists():
        raise UsageError(f"no recorded curves at {args.curves}: record some with "
                         "`python -m kit bench record --profile cpu --runs 150`")
    records = curves.read_dataset(args.curves)
    try:
        stream = stopping_bench.Stream.of(stopping_bench.load_runs(records), noise_sigmas=args.noise_sigmas)
    except ValueError as error:
        raise UsageError(str(error)) from None
    summaries = stopping_bench.run_benchmark(stream, args.orders, seed=args.seed)
    devices = sorted({str(r.get("device")) for r in records})
    machine = f"curves recorded on {', '.join(devices)}; replayed on {platform.machine()} with {os.cpu_count()} cores"
    command = f"python -m kit bench early-stopping --curves {args.curves.name} --orders {args.orders}"
    out = stopping_bench.write_report(summaries, stream, records, args.orders, args.out, machine, command)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _agents(args: argparse.Namespace) -> int:
    import platform

    from kit import agents_bench, curves
    from kit.policy import POLICIES

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES or p in ("lm", "llm")]
    if unknown or len(policies) < 2:
        raise UsageError(f"--policies takes two or more of ppo, random, greedy, tpe, cmaes; got {args.policies!r}")
    baseline = (REPO_ROOT / "train.py").read_text()
    command = (f"python -m kit bench agents --environment {args.environment} --seeds {args.seeds} "
               f"--experiments {args.experiments} --policies {','.join(policies)}")
    if args.environment == "synthetic":
        from kit.environments import SyntheticConfig, SyntheticEnvironment

        environment = SyntheticEnvironment(baseline, SyntheticConfig(seed=args.synthetic_seed))
        budget, world = environment.config.budget, environment.describe()
        command += f" --synthetic-seed {args.synthetic_seed}"
    else:
        from kit.replay import ReplayEnvironment

        if not args.curves.exists():
            raise UsageError(f"no recorded curves at {args.curves}: record some with "
                             "`python -m kit bench record --profile cpu --runs 150`")
        try:
            environment = ReplayEnvironment(baseline, curves.read_dataset(args.curves))
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
    trajectories = agents_bench.run_all(policies, args.seeds, environment, args.experiments, budget, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    header = ["# Agents head to head", "",
              f"Measured by `{command}` in one run on {platform.machine()} with {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}, in {minutes:.0f} minutes with {args.jobs} worker processes. "
              f"World: {world}. Every policy runs the unchanged loop (a noise floor of 3 baseline runs, the gate, "
              "same-progress early stopping, keeping an edit when the mean of its runs beats the incumbent's by 2σ "
              "scaled to the runs on each side, near misses re-run under up to 2 new seeds, git, ledger) for "
              f"{args.experiments} experiments per seed; an experiment is a proposal or a re-run of a near miss, so "
              "a duplicate or rejected proposal counts as one, and so does each re-run."]
    out = agents_bench.write_report(trajectories, args.out, header)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _read_train_py(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path} not found: give the path of a train.py (the kit's own is {REPO_ROOT / 'train.py'})")
    source = file.read_text(encoding="utf-8", errors="replace")
    if not source.strip():
        raise UsageError(f"{path} is empty: give a train.py with a model and a training loop")
    return source


def _ensure_data(profile_name: str) -> None:
    """smoke makes its data on the spot; the others must be prepared once, on purpose."""
    import prepare

    profile = prepare.get_profile(profile_name)
    if profile.name == "smoke":
        prepare.prepare_data(profile)
    elif not (prepare.data_dir(profile) / "manifest.json").exists():
        raise UsageError(f"no data for profile '{profile.name}' in {prepare.data_dir(profile)}: "
                         f"run `python prepare.py --profile {profile.name}` first")


def _experiment(args: argparse.Namespace) -> int:
    source = _read_train_py(args.train_py)
    _ensure_data(args.profile)
    run_dir = args.run_dir or Path("runs") / f"experiment-{time.strftime('%Y%m%d-%H%M%S')}"
    config = HarnessConfig(profile=args.profile, budget=args.budget, seed=args.seed, sandbox=args.sandbox)
    result = run_experiment(source, run_dir, config)
    shown = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
    print(f"{result.status.value}: val_bpb {shown}, {result.num_steps} steps, {result.training_seconds:.1f} s "
          f"training, {result.total_seconds:.1f} s total{' - ' + result.reason if result.reason else ''}")
    print(f"recorded in {result.run_dir}")
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare":
            import prepare

            return prepare.main(["--profile", args.profile])
        if args.command == "loop":
            return _loop(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            return _bench(args)
        return _experiment(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
