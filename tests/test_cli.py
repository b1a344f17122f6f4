"""kit.cli: one function per command, choices from the registries, defaults from the config dataclasses, a flag not
given never passed on, bad input answered in one line, and the console command."""

import shutil
import subprocess
import sys

import pytest

from kit.arguments import default, given
from kit.cli import _parser, main
from kit.loop import LoopConfig
from kit.policies import REGISTRY
from kit.predictor import RULES
from kit.results import HarnessConfig
from kit.stopping import StopConditions

from .helpers import REPO


def test_flags_not_given_are_not_passed_on_so_the_dataclass_defaults_hold():
    args = _parser().parse_args(["loop", "--policy", "greedy", "--iterations", "7"])
    assert given(args, LoopConfig) == {"policy": "greedy"}
    assert given(args, StopConditions) == {"iterations": 7}
    config = LoopConfig(run_dir=REPO / "runs" / "x", stop=StopConditions(**given(args, StopConditions)),
                        **given(args, LoopConfig))
    assert config.confirm_runs == default(LoopConfig, "confirm_runs") and config.stop.hours is None
    assert given(_parser().parse_args(["experiment", "--seed", "3"]), HarnessConfig) == {"seed": 3}


def test_choices_come_from_the_registries_and_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["loop", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for name, entry in REGISTRY.items():
        assert name in text and "".join(entry.summary.split()) in text
    assert all(rule in text for rule in RULES)
    assert f"default:{default(LoopConfig, 'early_stopping')}" in text
    assert f"default:{default(LoopConfig, 'confirm_runs')})" in text


@pytest.mark.parametrize("argv, words", [
    (["loop", "--iterations", "0"], "expected a positive whole number"),
    (["loop", "--policy", "sgd"], "invalid choice"),
    (["experiment", "--budget", "-1"], "expected a positive number of seconds"),
    (["bench", "agents", "--seeds", "x"], "expected a whole number"),
    (["loop", "--contention-limit", "10"], "expected a share between 0 and 1"),
])
def test_bad_flags_get_one_line_that_says_where_help_is(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and words in err and "--help" in err


def test_bad_input_to_a_command_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert main(["experiment", str(tmp_path / "missing.py"), "--profile", "smoke"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert main(["bench", "agents", "--policies", "ppo,lm"]) == 2  # lm needs a model: not benchmarkable
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "not found" in err[0] and "no ledger" in err[1] and "two or more of ppo, ppo-scratch, random" in err[2]


def test_an_unusable_contention_limit_in_the_environment_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("AUTORESEARCH_CONTENTION_LIMIT", "ten percent")
    assert main(["loop", "--help"]) == 2
    err = capsys.readouterr().err
    assert err == "error: AUTORESEARCH_CONTENTION_LIMIT must be a share between 0 and 1 (0.1 is 10 %), got 'ten percent'\n"


def test_python_dash_m_kit_and_the_console_command_are_the_same_cli():
    for argv in ([sys.executable, "-m", "kit", "--help"], [shutil.which("autoresearch-rl") or "autoresearch-rl",
                                                           "--help"]):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "loop" in done.stdout and "bench" in done.stdout and "experiment" in done.stdout
    bench = subprocess.run([sys.executable, "-m", "kit", "bench", "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert bench.returncode == 0 and "early-stopping" in bench.stdout and "record" in bench.stdout
