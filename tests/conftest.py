"""Shared fixtures: every test session gets its own data directory, so tests never touch a user's data, the cores
that were free when it started, so a program already busy on the machine shares none with its experiments, and
the contention checks off except where a test is about them."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from kit.machine import TICKS, busy_ticks


def _free_cores(seconds: float = 0.5) -> set[int]:
    """The cores less than half busy over `seconds` (the quietest one if none is)."""
    cores = sorted(os.sched_getaffinity(0))
    before = {core: busy_ticks([core]) for core in cores}
    time.sleep(seconds)
    busy = {core: (busy_ticks([core]) - before[core]) / TICKS / seconds for core in cores}
    return {core for core in cores if busy[core] < 0.5} or {min(cores, key=busy.get)}


# The session and every process it starts keep to the free cores: a program busy on the machine (a build, a CPU
# hog) is then scheduled on the others, so the runs' clocks and contention measurement see only themselves.
os.sched_setaffinity(0, _free_cores())
_DATA_ROOT = Path(tempfile.mkdtemp(prefix="autoresearch-test-data-"))
os.environ["AUTORESEARCH_DATA"] = str(_DATA_ROOT)
os.environ.pop("AUTORESEARCH_PROFILE", None)
# A busy machine may slow a test, never change its verdict: the contention checks are off for every test (and every
# process it starts) but their own, which give their limits explicitly.
os.environ["AUTORESEARCH_CONTENTION_LIMIT"], os.environ["AUTORESEARCH_PACE_LIMIT"] = "1", "0"
os.environ.pop("AUTORESEARCH_HANDOFF", None)

from .helpers import TRAIN_PY  # noqa: E402 - after the environment above


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_DATA_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_data() -> Path:
    import prepare

    return prepare.prepare_data(prepare.get_profile("smoke"))


@pytest.fixture(scope="session")
def baseline_source() -> str:
    return TRAIN_PY.read_text()


@pytest.fixture
def one_torch_thread():
    """Tiny networks run fastest on one thread, and the machine may be shared with other work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
