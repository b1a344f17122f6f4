"""The kit's command line.

    python -m kit prepare --profile cpu
    python -m kit experiment [train.py] --profile {smoke,cpu,gpu} [--budget S] [--run-dir DIR] [--json]

Owns: argument parsing, one-line errors for bad input (exit 2), and printing results.
Does not own: any of the work (kit/harness.py, prepare.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kit.harness import REPO_ROOT, HarnessConfig, run_experiment

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
    return parser


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
        return _experiment(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
