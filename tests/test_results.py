"""kit.results: the failure set, a run that never ran, and a curve fed point by point to a monitor."""

from kit.loop import LoopConfig
from kit.results import FAILURES, CurveStream, HarnessConfig, RunResult, Status


def test_the_failure_set_is_every_outcome_that_says_train_py_does_not_work():
    assert FAILURES == {Status.CRASH, Status.TIMEOUT, Status.REJECTED, Status.TAMPERED}
    assert "crash" in FAILURES and "ok" not in FAILURES and "pruned" not in FAILURES  # plain strings compare too


def test_a_run_refused_before_it_ran_is_rejected_with_nothing_measured():
    result = RunResult.not_run("duplicate of an experiment already run")
    assert result.status is Status.REJECTED and result.reason == "duplicate of an experiment already run"
    assert result.val_bpb is None and result.curve == () and result.training_seconds == result.total_seconds == 0
    assert result.to_json()["status"] == "rejected"


def test_a_stream_shows_the_monitor_the_growing_curve_and_stops_where_it_says():
    seen = []

    def monitor(curve):
        seen.append(list(curve))
        return "too slow" if len(curve) == 3 else None

    stream = CurveStream(monitor)
    assert stream.feed([(1, 5.0), (2, 4.0), (3, 3.5), (4, 3.0)]) == "too slow"
    assert stream.curve == [(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)]  # the point after the stop is not taken
    assert seen == [[(1.0, 5.0)], [(1.0, 5.0), (2.0, 4.0)], [(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)]]
    assert stream.stop_reason == "too slow"


def test_without_a_monitor_the_whole_curve_is_taken():
    stream = CurveStream(None)
    assert stream.feed([[1, 5.0], [2, 4.0]]) is None  # recorded curves come as lists
    assert stream.curve == [(1.0, 5.0), (2.0, 4.0)] and stream.stop_reason is None


def test_the_contention_limits_default_to_the_environments(monkeypatch, tmp_path):
    """How a machine that is always busy (or a test suite) says once that its runs are to be judged anyway."""
    monkeypatch.delenv("AUTORESEARCH_CONTENTION_LIMIT")
    monkeypatch.delenv("AUTORESEARCH_PACE_LIMIT")
    assert HarnessConfig().contention_limit == LoopConfig(tmp_path).contention_limit == 0.10
    assert LoopConfig(tmp_path).pace_limit == 0.75
    monkeypatch.setenv("AUTORESEARCH_CONTENTION_LIMIT", "1")
    monkeypatch.setenv("AUTORESEARCH_PACE_LIMIT", "0")
    assert HarnessConfig().contention_limit == LoopConfig(tmp_path).contention_limit == 1.0
    assert LoopConfig(tmp_path).pace_limit == 0.0 and HarnessConfig(contention_limit=0.2).contention_limit == 0.2


def test_limits_out_of_range_are_refused(tmp_path):
    import pytest

    for bad in ({"pace_limit": 1.0}, {"contention_limit": 0.0}, {"quiet_wait": float("nan")}, {"contended_reruns": -1}):
        with pytest.raises(ValueError, match="need 0 < contention_limit <= 1"):
            LoopConfig(tmp_path, **bad)
