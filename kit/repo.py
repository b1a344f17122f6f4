"""train.py's history in RUN_DIR/repo: one branch, the baseline as its first commit and a commit per kept edit.

Owns: the git calls (the committer's identity is set per call, so a machine without one works), reading train.py
at any commit of the run (and so the train.py any record ran), and moving the branch back to the commit the ledger
names.
Does not own: deciding what to keep (kit/loop.py); the ledger, not git, is the truth on resume.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from kit import edits
from kit.ledger import Record
from kit.memory import code_hash

BRANCH = "autoresearch"


class TrainRepo:
    """The run directory's git repository of train.py."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, *args: str) -> str:
        """What git prints, stripped."""
        return self._git(*args).strip()

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", "-c", "user.name=autoresearch-rl", "-c", "user.email=autoresearch@localhost",
                               "-C", str(self.path), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def exists(self) -> bool:
        return (self.path / ".git").exists()

    def init(self, baseline: str) -> str:
        """A new repository whose first commit is the baseline; returns that commit."""
        self.path.mkdir(parents=True, exist_ok=True)
        self("init", "-q", "-b", BRANCH)
        (self.path / "train.py").write_text(baseline)
        self("add", "train.py")
        self("commit", "-q", "-m", "baseline")
        return self.head()

    def head(self) -> str:
        return self("rev-parse", "HEAD")

    def source(self) -> str:
        """train.py as the branch has it now."""
        return (self.path / "train.py").read_text()

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one repository per loop; commits never change
    def show(self, commit: str) -> str:
        """train.py at a commit of the run."""
        return self._git("show", f"{commit}:train.py")

    def source_of(self, record: Record) -> str | None:
        """The train.py a record ran: at its commit, or its parent commit's with its diff applied; None when that
        does not give the code the record names (a record of another repository, say)."""
        try:
            if record.commit:
                return self.show(record.commit)
            if record.parent_commit is None:
                return None
            source = edits.apply_unified_diff(self.show(record.parent_commit), record.diff)
        except (RuntimeError, edits.EditError):
            return None
        return source if code_hash(source) == record.code_hash else None

    def commit(self, source: str, message: str) -> str:
        """Commit source as train.py; returns the commit."""
        (self.path / "train.py").write_text(source)
        self("commit", "-q", "-am", message)
        return self.head()

    def reset(self, commit: str) -> None:
        """Move the branch (and the work tree) to commit: a commit whose record a kill prevented is dropped."""
        self("reset", "-q", "--hard", commit)
