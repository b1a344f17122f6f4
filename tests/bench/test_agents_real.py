"""bench/agents_real.py: the real check's tables are read from the loops' ledgers and the fresh-seed runs."""

import argparse
import importlib.util

from kit import REPO_ROOT
from kit.loop import run_loop
from kit.memory import code_hash

from ..helpers import StandIn, loop_config

spec = importlib.util.spec_from_file_location("agents_real", REPO_ROOT / "bench" / "agents_real.py")
agents_real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agents_real)


def test_each_loop_is_read_from_its_ledger_and_judged_by_its_fresh_runs(tmp_path):
    baseline = (REPO_ROOT / "train.py").read_text()
    rows = []
    for policy in ("random", "greedy"):  # two labels of the same loop: the same edit kept by both
        run_loop(loop_config(tmp_path / policy, iterations=6), environment=StandIn(baseline, first=2.47, later=2.47))
        rows.append(agents_real.summarize(policy, 0, tmp_path / policy / "run"))
    assert rows[0]["digest"] == rows[1]["digest"]
    row = rows[0]
    assert row["experiments"] == 3 and row["confirmations"] == 1
    assert abs(row["baseline"] - 2.50) < 1e-9 and abs(row["noise_sd"] - 0.02) < 1e-9
    assert row["final"] == 2.47 and row["final_runs"] == 2 and len(row["kept"]) == 1
    assert row["digest"] == code_hash(row["source"]) != code_hash(baseline)

    fresh = {code_hash(baseline): [2.60, 2.62], row["digest"]: [2.55, 2.57]}
    args = argparse.Namespace(hours=0.5, fresh_runs=2)
    text = agents_real.report(rows, fresh, code_hash(baseline), args, wall=0.51)
    assert "The baseline under the same fresh seeds: 2.6100." in text
    assert "| random | 1 | 2.5600 | 0.0500 | 2.4700 |" in text  # one seed: a mean, no interval
    assert "random − greedy: 0.0000" in text and "0 of 1 seeds lower" in text
    assert "| random | 0 | 3 (1) |" in text and "| 2.4700 (2) | 2.5600 |" in text


def test_an_interval_widens_with_the_spread_of_the_seeds():
    assert agents_real.interval([1.0]) == "1.0000"
    narrow, wide = agents_real.interval([1.0, 1.01, 0.99]), agents_real.interval([1.0, 1.1, 0.9])
    assert narrow.startswith("1.0000 [") and wide.startswith("1.0000 [")
    assert float(wide.split("[")[1].split(",")[0]) < float(narrow.split("[")[1].split(",")[0]) < 1.0
