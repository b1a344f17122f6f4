"""kit.checkup: the machine check says what to do where something is missing, and the noise floor refuses a run
directory that started from another train.py."""

import pytest

from kit.checkup import environment_report, noise_floor
from kit.loop import run_loop

from .helpers import TRAIN_PY, StandIn, loop_config


def test_every_check_that_fails_says_what_to_do():
    rows = environment_report("smoke")
    assert {r["check"] for r in rows} >= {"python", "torch", "device", "sandbox", "data", "cores"}
    assert all(r["to do"] for r in rows if not r["ok"]) and all(not r["to do"] for r in rows if r["ok"])


def test_a_run_directory_of_another_baseline_is_refused_before_anything_runs(tmp_path):
    run_loop(loop_config(tmp_path, iterations=3), environment=StandIn(TRAIN_PY.read_text(), 2.5, 2.5))
    other = tmp_path / "other.py"
    other.write_text(TRAIN_PY.read_text() + "\n# another baseline\n")
    with pytest.raises(ValueError, match="holds the noise floor of another train.py; give a new run_dir"):
        noise_floor("smoke", tmp_path / "run", repeats=3, train_py=other)
