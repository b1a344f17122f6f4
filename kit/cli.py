"""The kit's command line: `python -m kit …`, or `autoresearch-rl …` once the package is installed.

    python -m kit prepare [--profile cpu]
    python -m kit experiment [train.py] [--profile cpu] [--budget S] [--seed N] [--run-dir DIR] [--json]
    python -m kit loop [--profile cpu] [--policy ppo] [--iterations N] [--hours H] [--run-dir DIR] [--workers N] ...
    python -m kit report RUN_DIR
    python -m kit dashboard RUN_DIR [RUN_DIR ...] [--port 8080]   optuna-dashboard on runs' Optuna mirrors
    python -m kit bench {record,early-stopping,agents} ...     (kit/bench/cli.py)

Owns: the commands' arguments, dispatch (one function per command), one-line errors for bad input (exit 2) and
printing. Choices come from the registries (kit.policies.REGISTRY, kit.predictor.RULES, prepare.PROFILES) and
defaults from the config dataclasses: a flag not given is not passed on (kit/arguments.py), so a default is written in
one place only. Does not own: any of the work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kit import REPO_ROOT
from kit.arguments import (
    SANDBOXES,
    OneLineParser,
    UsageError,
    default,
    ensure_data,
    given,
    positive,
    positive_int,
    profiles,
    read_train_py,
    share,
)

# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from kit.loop import LoopConfig
    from kit.policies import REGISTRY
    from kit.predictor import RULES
    from kit.results import HarnessConfig
    from kit.reward import REWARDS, RewardConfig

    parser = OneLineParser(prog="python -m kit", description="autoresearch-rl: an RL agent that improves train.py "
                           "on its own.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    prep = commands.add_parser("prepare", help="prepare the frozen data of a profile")
    prep.add_argument("--profile", choices=profiles(), help="default: $AUTORESEARCH_PROFILE or cpu")
    prep.set_defaults(run=_prepare)

    exp = commands.add_parser("experiment", help="run one experiment of a train.py and print its result")
    exp.add_argument("train_py", nargs="?", help=f"default: the kit's train.py ({REPO_ROOT / 'train.py'})")
    exp.add_argument("--profile", choices=profiles(), help=f"default: {default(HarnessConfig, 'profile')}")
    exp.add_argument("--budget", type=positive, help="training seconds (default: the profile's)")
    exp.add_argument("--run-dir", type=Path, help="default: runs/experiment-<time>")
    exp.add_argument("--seed", type=int, help="seed for the frozen side (default: the profile's)")
    exp.add_argument("--sandbox", choices=SANDBOXES, help=f"default: {default(HarnessConfig, 'sandbox')}")
    exp.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    exp.set_defaults(run=_experiment)

    policies = "; ".join(f"{name}: {entry.summary}" for name, entry in REGISTRY.items())
    loop = commands.add_parser("loop", help="run the research loop until the termination oracle or a stop")
    loop.add_argument("--profile", choices=profiles(), help=f"default: {default(LoopConfig, 'profile')}")
    loop.add_argument("--policy", choices=tuple(REGISTRY),
                      help=f"{policies} (default: {default(LoopConfig, 'policy')})")
    loop.add_argument("--iterations", type=positive_int, help="stop at this many experiments recorded")
    loop.add_argument("--hours", type=positive, help="stop after this many wall-clock hours")
    loop.add_argument("--gpu-hours", type=positive, help="stop after this many GPU-hours of experiments")
    loop.add_argument("--run-dir", type=Path, help="default: runs/<policy>-<profile>; the same directory resumes")
    loop.add_argument("--seed", type=int, help=f"seed of the policy (default: {default(LoopConfig, 'seed')})")
    loop.add_argument("--budget", type=positive, help="training seconds (default: the profile's)")
    loop.add_argument("--train-py", type=Path, help="baseline of a new run directory (default: the kit's train.py)")
    loop.add_argument("--sandbox", choices=SANDBOXES, help=f"default: {default(LoopConfig, 'sandbox')}")
    loop.add_argument("--lm-model", help="the lm policy's causal LM: a local path or a hub name")
    loop.add_argument("--llm-url", help="the llm policy's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                      "(API key from $OPENAI_API_KEY)")
    loop.add_argument("--llm-model", help="the model name the llm endpoint serves")
    loop.add_argument("--llm-share", type=share, help="cmaes-llm: the share of CMA-ES's proposals the LLM may "
                      f"override (default: {default(LoopConfig, 'llm_share')})")
    loop.add_argument("--early-stopping", choices=(*RULES, "none"), help="stop rule asked while a run trains "
                      f"(default: {default(LoopConfig, 'early_stopping')}, which bench/early_stopping.md found safe)")
    loop.add_argument("--from-scratch", action="store_true", help="ppo: start from random weights, not the shipped "
                      "pre-trained ones")
    loop.add_argument("--reward", dest="reward_kind", choices=REWARDS, help="what an experiment is worth to a "
                      "learning policy: progress, the confirmed gain of what the loop keeps less the compute spent, or "
                      f"composite, the source's (default: {default(RewardConfig, 'kind')}; kit/reward.py)")
    loop.add_argument("--confirm-runs", type=int, help="runs under new seeds a near miss gets before it is dropped "
                      f"(0: judge every edit on one run; default: {default(LoopConfig, 'confirm_runs')})")
    loop.add_argument("--contention-limit", type=share, help="share of a run's cores other processes may use while "
                      "it trains before it is contended: not judged "
                      f"(default: {default(LoopConfig, 'contention_limit')}; 1 turns the check off)")
    loop.add_argument("--pace-limit", type=share, help="a re-run of code that ran before, at under this share of its "
                      f"earlier steps per second, is contended (default: {default(LoopConfig, 'pace_limit')}; 0: off)")
    loop.add_argument("--contended-reruns", type=int, help="times a contended experiment is run again before the loop "
                      f"pauses (default: {default(LoopConfig, 'contended_reruns')})")
    loop.add_argument("--quiet-wait", type=float, help="seconds to wait for a busy machine to be quiet before the "
                      f"re-run (default: {default(LoopConfig, 'quiet_wait'):g})")
    loop.add_argument("--workers", type=positive_int, default=1, help="experiments at once, on Ray: one GPU each "
                      "on CUDA, else a share of the cores each (default: 1, no Ray)")
    loop.add_argument("--ray-address", help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of "
                      "starting one on this machine; needs --workers")
    loop.add_argument("--cores-per-worker", type=positive_int, help="CPU cores each worker pins itself to (default: "
                      "this machine's cores / --workers)")
    loop.set_defaults(run=_loop)

    report = commands.add_parser("report", help="write results.tsv, progress.png, summary.md and report.html of a run "
                                 "directory")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(run=_report)

    board = commands.add_parser("dashboard", help="serve optuna-dashboard on a run directory's Optuna mirror "
                                "(rebuilt from the ledger, and kept in step while a loop runs), or on several side by "
                                "side")
    board.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="one run directory, or several to "
                       "compare (mirrored into one temporary storage, a study each)")
    board.add_argument("--port", type=positive_int, default=8080)
    board.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    board.set_defaults(run=_dashboard)

    commands.add_parser("bench", help="record learning curves; benchmark early stopping and agents (see "
                        "`python -m kit bench --help`)", add_help=False)
    return parser


def _prepare(args: argparse.Namespace) -> int:
    import prepare

    return prepare.main(["--profile", args.profile] if "profile" in args else [])


def _experiment(args: argparse.Namespace) -> int:
    from kit.harness import run_experiment
    from kit.results import HarnessConfig

    source = read_train_py(getattr(args, "train_py", REPO_ROOT / "train.py"))
    config = HarnessConfig(**given(args, HarnessConfig))
    ensure_data(config.profile)
    run_dir = getattr(args, "run_dir", None) or Path("runs") / f"experiment-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_experiment(source, run_dir, config)
    shown = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
    print(f"{result.status.value}: val_bpb {shown}, {result.num_steps} steps, {result.training_seconds:.1f} s "
          f"training, {result.total_seconds:.1f} s total{' - ' + result.reason if result.reason else ''}")
    print(f"recorded in {result.run_dir}")
    if getattr(args, "json", False):
        print(json.dumps(result.to_json()))
    return 0


def _loop(args: argparse.Namespace) -> int:
    from kit.ledger import LedgerLocked
    from kit.loop import LoopConfig, ResumeError, run_loop
    from kit.policies.pretrained import WeightsMismatch
    from kit.reward import RewardConfig
    from kit.stopping import StopConditions
    from kit.workers import WorkersUnavailable

    options = given(args, LoopConfig)
    policy = options.get("policy", default(LoopConfig, "policy"))
    profile = options.get("profile", default(LoopConfig, "profile"))
    read_train_py(options.get("train_py", default(LoopConfig, "train_py")))
    ensure_data(profile)
    options.setdefault("run_dir", Path("runs") / f"{policy}-{profile}")
    if "reward_kind" in args:
        options["reward"] = RewardConfig(kind=args.reward_kind)
    try:
        config = LoopConfig(**options, stop=StopConditions(**given(args, StopConditions)))
    except ValueError as error:
        raise UsageError(str(error)) from None
    address, cores = getattr(args, "ray_address", None), getattr(args, "cores_per_worker", None)
    if args.workers == 1 and (address or cores):
        raise UsageError("--ray-address and --cores-per-worker are for several workers: give --workers N as well")
    try:
        if args.workers > 1:
            from kit.parallel import run_parallel_loop

            reason = run_parallel_loop(config, args.workers, address=address, cores=cores)
        else:
            reason = run_loop(config)
    except (LedgerLocked, ResumeError, WeightsMismatch, WorkersUnavailable) as error:
        raise UsageError(str(error)) from None
    print(f"{reason}\nreport: {Path(config.run_dir) / 'summary.md'}, results.tsv, progress.png, report.html")
    return 0


def _report(args: argparse.Namespace) -> int:
    from kit.ledger import Ledger
    from kit.report import write_report

    if not (args.run_dir / "ledger.sqlite").exists():
        raise UsageError(f"no ledger in {args.run_dir}: give the --run-dir of a loop")
    with Ledger(args.run_dir, readonly=True) as ledger:
        paths = write_report(args.run_dir, ledger)
    print("\n".join(str(p) for p in paths.values()))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import threading

    from kit.mirror import Mirror, side_by_side, storage_url

    for run_dir in args.run_dirs:
        if not (run_dir / "ledger.sqlite").exists():
            raise UsageError(f"no ledger in {run_dir}: give the --run-dir of a loop")
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise UsageError("optuna-dashboard is not installed: pip install -r requirements.txt") from None
    scratch = Path(tempfile.mkdtemp(prefix="kit-dashboard-")) if len(args.run_dirs) > 1 else None
    mirrors = [Mirror.of(args.run_dirs[0])] if scratch is None else \
        side_by_side(args.run_dirs, scratch / "side-by-side.sqlite3")
    for mirror in mirrors:
        mirror.study  # noqa: B018 - the storage and the studies exist before the server opens them

    def follow() -> None:
        """Rebuild the mirrors from the ledgers (a run directory from before the mirror, a loop of an older kit, or
        several side by side), then keep them in step: the page shows trials as they arrive."""
        while True:
            for mirror in mirrors:
                try:
                    if added := mirror.follow_ledger():
                        print(f"{mirror.name}: {added} trial(s) added from its ledger", flush=True)
                except Exception as error:  # noqa: BLE001 - shown, and tried again
                    print(f"{mirror.name}: could not bring the mirror up to the ledger ({error}); trying again",
                          file=sys.stderr)
            time.sleep(5)

    threading.Thread(target=follow, daemon=True, name="mirror").start()
    print(f"optuna-dashboard: http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    try:
        run_server(storage_url(mirrors[0].storage), host=args.host, port=args.port)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # the benchmarks have their own parser, imported only when asked for
            from kit.bench.cli import main as bench

            return bench(argv[1:])
        try:
            parser = _parser()
        except ValueError as error:  # a default taken from the environment is not usable
            raise UsageError(str(error)) from None
        args = parser.parse_args(argv)
        return args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
