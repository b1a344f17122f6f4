"""Every notebook, executed headless with papermill on the smoke profile, and what it wrote checked."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kit import REPO_ROOT
from kit.ledger import Ledger

NOTEBOOKS = REPO_ROOT / "notebooks"
pytestmark = pytest.mark.slow


def execute(name: str, out: Path, **parameters) -> nbformat.NotebookNode:
    import papermill

    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(REPO_ROOT),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(json.dumps(output.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_every_notebook_is_thin():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        for cell in code:
            assert not any(line.lstrip().startswith(("def ", "class ")) for line in cell.source.splitlines()), \
                f"{path.name} defines a function or class; put it in kit/"
            assert "sys.path" not in cell.source, f"{path.name} edits sys.path; the kit is installed (pip install -e .)"


def test_setup_notebook(tmp_path: Path, smoke_data):
    run_dir = tmp_path / "setup"
    nb = execute("00_setup.ipynb", tmp_path / "out.ipynb", profile="smoke", repeats=2, budget=2.0,
                 run_dir=str(run_dir))
    floor = json.loads((run_dir / "noise_floor.json").read_text())
    assert floor["profile"] == "smoke" and len(floor["runs"]) == 2
    assert floor["ok"] == 2 and math.isfinite(floor["mean"]) and math.isfinite(floor["stdev"])
    assert "sandbox" in outputs_text(nb)


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory, smoke_data) -> Path:
    """The overnight job, killed with SIGKILL mid-run and started again with the same parameters."""
    tmp = tmp_path_factory.mktemp("loop")
    run_dir = tmp / "run"
    args = [sys.executable, "-m", "papermill", str(NOTEBOOKS / "01_research_loop.ipynb"), str(tmp / "out.ipynb"),
            "-p", "profile", "smoke", "-p", "policy", "random", "-p", "budget", "2.0", "-p", "run_dir", str(run_dir),
            "--cwd", str(REPO_ROOT)]
    first = subprocess.Popen([*args, "-p", "iterations", "50"], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _records(run_dir) < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert _records(run_dir) >= 2, "the first papermill run recorded nothing"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _records(run_dir)
    # the kernel notices its parent is gone and exits, releasing the run directory
    done = subprocess.run([*args, "-p", "iterations", str(before + 2)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def _records(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_research_loop_notebook_resumes_after_a_kill(loop_run: Path):
    with Ledger(loop_run, readonly=True) as ledger:
        records = ledger.records()
    assert len(records) >= 4
    assert [r.iteration for r in records] == list(range(1, len(records) + 1))  # one run, continued: no restart
    assert (loop_run / "dashboard.png").stat().st_size > 0 and (loop_run / "summary.md").exists()


def test_convergence_notebook(loop_run: Path, tmp_path: Path):
    execute("02_convergence_bound.ipynb", tmp_path / "out.ipynb", run_dir=str(loop_run), synthetic_seeds=60,
            epsilons=[0.0, 0.01])
    import pandas as pd

    table = pd.read_csv(loop_run / "convergence_bound.csv")
    assert list(table["epsilon"]) == [0.0, 0.01] and (table["trials"] > 0).all()
    coverage = pd.read_csv(loop_run / "coverage_check.csv")
    assert len(coverage) == 3 and coverage["p_min"].gt(0).all()
    assert coverage.loc[0, "holds"]  # random search meets the bound's assumption
    assert (loop_run / "best_so_far.png").exists()


def test_ablation_notebook(tmp_path: Path, smoke_data):
    run_dir = tmp_path / "ablation"
    execute("03_ablation.ipynb", tmp_path / "out.ipynb", profile="smoke", seeds=1, budget=2.0, run_dir=str(run_dir),
            improvements=["QK-norm", "depth +2"])
    rows = json.loads((run_dir / "ablation.json").read_text())
    assert {r["config"] for r in rows} == {"baseline", "QK-norm", "depth +2", "all"}
    table = (run_dir / "ablation.md").read_text()
    assert table.count("\n| ") == 5 and "| baseline |" in table and (run_dir / "ablation.png").exists()


def test_mdp_primer_notebook(tmp_path: Path, smoke_data):
    run_dir = tmp_path / "primer"
    nb = execute("04_mdp_primer.ipynb", tmp_path / "out.ipynb", steps=2, run_dir=str(run_dir))
    assert (run_dir / "baseline" / "result.json").exists() and (run_dir / "step-1" / "result.json").exists()
    text = outputs_text(nb)
    assert "losses/approx_kl" in text and "ImprovementEstimate" in text and "accuracy" in text
