"""The views in a real browser (Debian's Chromium, driven through chromedriver by Selenium): the research-loop
notebook run in JupyterLab on the smoke profile, with its dashboard's running curve advancing, Stop stopping the loop
and the finished state and report appearing; report.html opened from disk; and optuna-dashboard serving the Optuna
mirror of a run directory written without one. Each test keeps a screenshot in tests/artifacts/ (the README's
pictures are these).

CI installs chromium and chromium-driver and sets AUTORESEARCH_BROWSER_TESTS=required, so there they fail rather
than skip when the browser is missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kit import REPO_ROOT
from kit.mirror import storage_url

from .helpers import TRAIN_PY

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("AUTORESEARCH_TEST_ARTIFACTS", REPO_ROOT / "tests" / "artifacts"))
TOKEN = "autoresearch-browser-test"


def _executables() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    why = "no chromium and chromedriver on PATH: apt-get install chromium chromium-driver"
    if os.environ.get("AUTORESEARCH_BROWSER_TESTS") == "required":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _executables()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(120)
    yield session
    session.quit()


def _screenshot(browser, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_url(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with status {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:g} s")


def _until(condition, timeout: float, what: str):
    """condition()'s first truthy value, polled until timeout (generous: a busy machine is slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:g} s for {what}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# ---------------------------------------------------------------------------
# The notebook's live dashboard in JupyterLab
# ---------------------------------------------------------------------------


@pytest.fixture
def jupyterlab(tmp_path, smoke_data):
    """JupyterLab on loopback, serving a copy of the research-loop notebook set to a smoke run in tmp_path/run."""
    import papermill

    root = tmp_path / "lab"
    root.mkdir()
    run_dir = tmp_path / "run"
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "01_research_loop.ipynb"), str(root / "loop.ipynb"),
                               parameters={"profile": "smoke", "policy": "random", "iterations": 40, "budget": 6.0,
                                           "run_dir": str(run_dir)}, prepare_only=True)
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no pop-up asking to go online
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces")}
    server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                               f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}",
                               f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.port_retries=0",
                               "--LabApp.extension_manager=readonly",  # it would look for extensions online
                               *(["--allow-root"] if os.geteuid() == 0 else [])],
                              env=env, cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "jupyterlab.log", "w"))  # noqa: SIM115 - closed with the process
    try:
        _wait_for_url(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", server)
        yield f"http://127.0.0.1:{port}", run_dir
    finally:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "STOP").touch()  # a loop still running in the kernel ends after its experiment
        _stop(server)


def test_the_notebook_dashboard_follows_a_run_and_stop_stops_it(browser, jupyterlab):
    from selenium.webdriver.common.by import By

    base, run_dir = jupyterlab
    browser.get(f"{base}/lab/tree/loop.ipynb?token={TOKEN}")
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120, "the notebook to open")
    _until(lambda: "Idle" in browser.find_element(By.TAG_NAME, "body").text, 120, "the kernel to start")
    run_menu = _until(lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                               if e.text == "Run"], 30, "the Run menu")
    run_menu[0].click()
    _until(lambda: browser.find_elements(By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"), 30,
           "Run All Cells in the Run menu")[0].click()

    def status() -> str:
        found = browser.find_elements(By.CSS_SELECTOR, ".autoresearch-status")
        return found[0].text if found else ""

    _until(lambda: "running" in status(), 300, "the dashboard to show a running loop")
    # the running experiment's curve advances while it trains: its progress reports grow between two looks
    import re

    def reports() -> tuple[str, int] | None:
        match = re.search(r"running (\d{5}): (\d+) progress reports", status())
        return (match[1], int(match[2])) if match and int(match[2]) > 0 else None

    # two looks at one running experiment, the second with more of its curve (from the first agent experiment on,
    # after the noise floor's three, so that the figure has runs to show); a look that comes too late for its
    # experiment is simply the first look at the next
    looks = []

    def advanced() -> bool:
        now = reports()
        if now is not None and now[0] >= "00004" and now not in looks:
            looks.append(now)
        return len(looks) >= 2 and looks[-2][0] == looks[-1][0] and looks[-1][1] > looks[-2][1]

    _until(advanced, 600, "the running curve to advance during a run")
    images = browser.find_elements(By.CSS_SELECTOR, ".autoresearch-dashboard img")
    assert images and browser.execute_script("return arguments[0].naturalWidth", images[0]) > 0
    dashboard = browser.find_element(By.CSS_SELECTOR, ".autoresearch-dashboard")
    browser.execute_script("arguments[0].scrollIntoView()", dashboard)
    _screenshot(browser, "dashboard-running.png")

    stop = [b for b in browser.find_elements(By.CSS_SELECTOR, ".autoresearch-dashboard button") if b.text == "Stop"]
    assert len(stop) == 1 and stop[0].is_enabled()
    stop[0].click()
    _until(lambda: "stopped: stopped by the stop file" in status(), 300, "the finished state after Stop")
    buttons = browser.find_elements(By.CSS_SELECTOR, ".autoresearch-dashboard button")
    assert buttons and not any(b.is_enabled() for b in buttons)  # nothing to pause, resume or stop any more
    assert "[   1] " in browser.find_element(By.CSS_SELECTOR, ".autoresearch-log").text  # the loop's lines
    _until(lambda: "train.py now:" in browser.find_element(By.TAG_NAME, "body").text, 60,
           "the report cell to fill in once the loop stopped")
    browser.execute_script("arguments[0].scrollIntoView()", dashboard)
    _screenshot(browser, "dashboard-stopped.png")
    assert (run_dir / "report.html").exists() and not (run_dir / "STOP").exists()


# ---------------------------------------------------------------------------
# report.html and optuna-dashboard, on a run directory of a stand-in world
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A loop of 40 experiments on the synthetic world (milliseconds each), its report written."""
    from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
    from kit.loop import LoopConfig, run_loop
    from kit.stopping import StopConditions

    run_dir = tmp_path_factory.mktemp("stand-in") / "synthetic-run"
    world = SyntheticEnvironment(TRAIN_PY.read_text(), SyntheticConfig(seed=1))
    run_loop(LoopConfig(run_dir=run_dir, profile="smoke", policy="greedy", budget=60.0,
                        stop=StopConditions(iterations=40)), environment=world, say=lambda line: None)
    return run_dir


def test_report_html_renders_the_run_from_disk(browser, finished_run):
    from selenium.webdriver.common.by import By

    browser.get((finished_run / "report.html").as_uri())
    assert browser.title == "Research run synthetic-run"
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings[:3] == ["Where it stands", "Learning curves", "Kept edits"] and "Environment" in headings
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 2 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 300
                                    for i in images)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "finished: iterations: 40 experiments recorded" in body and "40 experiments:" in body
    rows = browser.find_elements(By.XPATH, "//h2[text()='Every experiment']/following-sibling::table[1]//tr")
    assert len(rows) == 1 + 40
    browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 100)
    _screenshot(browser, "report.png")


def test_optuna_dashboard_shows_a_run_written_without_a_mirror(browser, finished_run, tmp_path):
    from selenium.webdriver.common.by import By

    old = tmp_path / "older-run"
    shutil.copytree(finished_run, old)
    for written_since in ("optuna.sqlite3", "loop.json", "report.html"):  # as a run directory from before them
        (old / written_since).unlink()
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "kit", "dashboard", str(old), "--port", str(port)],
                              cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for_url(f"http://127.0.0.1:{port}/", server)
        import optuna

        _until(lambda: len(optuna.load_study(study_name="older-run", storage=storage_url(old)).trials) == 40, 300,
               "the mirror to be rebuilt from the ledger, a trial per record")
        browser.get(f"http://127.0.0.1:{port}/dashboard")
        _until(lambda: "older-run" in browser.find_element(By.TAG_NAME, "body").text, 120,
               "optuna-dashboard to list the run's study")
        [link] = [a for a in browser.find_elements(By.TAG_NAME, "a") if "older-run" in a.text] or \
            [a for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/studies/']")]
        link.click()
        _until(lambda: browser.find_elements(By.CSS_SELECTOR, "svg .main-svg, .js-plotly-plot"), 120,
               "the study's plots")
        time.sleep(2)  # the history plot draws its points once its data arrives
        _screenshot(browser, "optuna-dashboard.png")
    finally:
        _stop(server)
