"""What the kit's command lines share: a parser that answers bad usage in one line and passes on only the flags
given, the argument types, and the checks of a train.py and a profile's data.

Owns: `UsageError` (bad input, printed as one line, exit status 2), `OneLineParser`, `default` and `given` (a
config dataclass's defaults are the only ones), and the small checks both command lines make.
Does not own: the commands (kit/cli.py, kit/bench/cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from kit import REPO_ROOT

SANDBOXES = ("auto", "bwrap", "unshare", "none")


class UsageError(Exception):
    """Bad input: printed as one line that says what to do, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage in one line (and says where help is), and leaves out every flag not given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, argument_default=argparse.SUPPRESS, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def default(config: type, name: str) -> Any:
    """The default a config dataclass gives a field: for help texts, so it is written in one place only."""
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def given(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The flags given on the command line that are fields of config."""
    names = {f.name for f in dataclasses.fields(config)}
    return {k: v for k, v in vars(args).items() if k in names}


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1 (0.1 is 10 %), got {text!r}")
    return value


def profiles() -> tuple[str, ...]:
    import prepare

    return tuple(prepare.PROFILES)


def ensure_data(profile_name: str) -> None:
    """smoke makes its data on the spot; the others must be prepared once, on purpose."""
    import prepare

    profile = prepare.get_profile(profile_name)
    if profile.name == "smoke":
        prepare.prepare_data(profile)
    elif not (prepare.data_dir(profile) / "manifest.json").exists():
        raise UsageError(f"no data for profile '{profile.name}' in {prepare.data_dir(profile)}: "
                         f"run `python prepare.py --profile {profile.name}` first")


def read_train_py(path: str | Path) -> str:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path} not found: give the path of a train.py (the kit's own is {REPO_ROOT / 'train.py'})")
    source = file.read_text(encoding="utf-8", errors="replace")
    if not source.strip():
        raise UsageError(f"{path} is empty: give a train.py with a model and a training loop")
    return source
