"""kit.repo: train.py's branch in a run directory: commits, reading any commit back, and moving the branch."""

from kit.repo import BRANCH, TrainRepo


def test_a_kept_edit_is_a_commit_and_a_reset_drops_what_came_after(tmp_path):
    repo = TrainRepo(tmp_path / "repo")
    assert not repo.exists()
    baseline = repo.init("A = 1\n")
    assert repo.exists() and repo("rev-parse", "--abbrev-ref", "HEAD") == BRANCH and repo.source() == "A = 1\n"
    edit = repo.commit("A = 2\n", "A 1 -> 2")
    assert repo.head() == edit != baseline and repo.source() == "A = 2\n"
    assert repo.show(baseline) == "A = 1\n" and repo.show(edit) == "A = 2\n"  # exactly, trailing newline too
    repo.reset(baseline)  # the ledger names the baseline: the edit's commit is dropped from the branch
    assert repo.head() == baseline and repo.source() == "A = 1\n"
