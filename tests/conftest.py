"""Shared fixtures: every test session gets its own data directory, so tests never touch a user's data."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_DATA_ROOT = Path(tempfile.mkdtemp(prefix="autoresearch-test-data-"))
os.environ["AUTORESEARCH_DATA"] = str(_DATA_ROOT)
os.environ.pop("AUTORESEARCH_PROFILE", None)
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
