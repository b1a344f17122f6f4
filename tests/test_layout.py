"""The layout's rules: the core never imports kit.bench, each package's map names every module it holds, and the
project stands alone (nothing points outside the repository)."""

import ast
import subprocess
import sys

import pytest

from .helpers import REPO

CORE = ["kit.cli", "kit.loop", "kit.parallel", "kit.workers", "kit.harness", "kit.dashboard", "kit.checkup",
        "kit.convergence", "kit.ablation", "kit.mirror", "kit.report_html", "kit.policies.operator",
        "kit.policies.search", "kit.policies.samplers", "kit.policies.llm"]


def test_the_core_loads_no_module_of_kit_bench():
    code = ("import sys, importlib\n"
            f"for name in {CORE!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'kit.bench' or m.startswith('kit.bench.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["kit", "kit/policies", "kit/bench"])
def test_each_package_map_names_every_module_it_holds(package):
    folder = REPO / package
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    modules = {p.name for p in folder.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").exists()}
    missing = sorted(m for m in modules if m not in doc)
    assert not missing, f"{package}/__init__.py's docstring does not name {missing}"


def test_nothing_points_outside_the_repository():
    pointing = []
    for path in [REPO / "README.md", *REPO.glob("kit/**/*.py"), *REPO.glob("tests/**/*.py"),
                 *REPO.glob("notebooks/*.ipynb"), *REPO.glob("bench/*.py"), *REPO.glob("bench/*.md")]:
        if "../" + "shared" in path.read_text(errors="replace"):
            pointing.append(str(path.relative_to(REPO)))
    assert not pointing
