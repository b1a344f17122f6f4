"""bench/agents_real.py: the real check's table is read from the loops' ledgers and written as its own section."""

import importlib.util

from kit import REPO_ROOT
from kit.loop import run_loop

from ..helpers import StandIn, loop_config

spec = importlib.util.spec_from_file_location("agents_real", REPO_ROOT / "bench" / "agents_real.py")
agents_real = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agents_real)


def test_the_summary_comes_from_the_ledger_and_replaces_only_its_section(tmp_path):
    world = StandIn((REPO_ROOT / "train.py").read_text(), first=2.47, later=2.47)
    run_loop(loop_config(tmp_path, iterations=6), environment=world)
    row = agents_real.summarize("random", tmp_path / "run")
    assert row["experiments"] == 3 and row["confirmations"] == 1 and row["baseline_runs"] == 3
    assert abs(row["baseline"] - 2.50) < 1e-9 and abs(row["noise_sd"] - 0.02) < 1e-9
    assert row["final"] == 2.47 and row["final_runs"] == 2 and len(row["kept"]) == 1

    out = tmp_path / "agents.md"
    out.write_text("# replay report\n\nnumbers\n")
    for _ in range(2):  # a second check replaces the first
        agents_real.write_section(out, agents_real.section([row], 0.5, 0.51))
    text = out.read_text()
    assert text.startswith("# replay report\n\nnumbers\n\n") and text.count(agents_real.SECTION) == 1
    assert "| random | 3 (1) |" in text and "2.4700 (2)" in text
