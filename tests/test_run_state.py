"""kit.run_state: the loop's state rebuilt from the ledger is the state the loop had when it wrote it, record by
record; and what the state makes of the noise floor, near misses and kept edits."""

import numpy as np

from kit.acceptance import Verdict
from kit.loop import ResearchLoop
from kit.memory import code_hash
from kit.predictor import make_rule
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, RunState

from .helpers import TRAIN_PY, StandIn, loop_config, make_record


class Varied(StandIn):
    """Each edit's fate follows from its code: a quarter are near misses that a re-run confirms, a quarter near
    misses found out, most lose, a few crash."""

    def __call__(self, source, run_dir, config, monitor=None):
        u = int(code_hash(source)[:6], 16) / 16 ** 6
        if source != self.baseline and u > 0.93:
            return _crash(run_dir)
        self.first, self.later = (2.47, 2.44) if u < 0.25 else (2.47, 2.56) if u < 0.5 else (2.6 + u / 10, 2.6)
        return super().__call__(source, run_dir, config, monitor)


def _crash(run_dir):
    from kit.results import RunResult, Status

    return RunResult(status=Status.CRASH, val_bpb=None, reason="RuntimeError: boom", training_seconds=0.5,
                     total_seconds=1.0, peak_mem_mb=None, num_steps=1, curve=((0.5, 3.0),), fingerprint={},
                     seed=0, run_dir=str(run_dir))


def _summary(state: RunState) -> tuple:
    inc, near = state.incumbent, state.near_miss
    return (len(state.records), tuple(state.noise_values),
            None if inc is None else (inc.code_hash, inc.source, tuple(inc.values), inc.curve),
            None if near is None else (near.source, near.description, near.diff, tuple(near.values), near.curve),
            tuple(sorted(state.sources.items())), tuple(state.memory.observation().tolist()), state.failures,
            len(state.stop_rule.history))


def test_the_rebuilt_state_equals_the_live_one_after_every_record(tmp_path):
    config = loop_config(tmp_path, iterations=40, policy="greedy", early_stopping="calibrated")
    live: list[tuple] = []
    loop = ResearchLoop(config, on_event=lambda e: live.append(_summary(loop.state)) if e["event"] == "record"
                        else None, environment=Varied(TRAIN_PY.read_text(), first=0, later=0))
    try:
        loop.run()
        records = loop.state.records
        kinds = {r.policy for r in records}
        assert {NOISE_POLICY, CONFIRM_POLICY, "greedy"} <= kinds, "the world must give near misses"
        assert sum(r.accepted for r in records) >= 2 and any(r.status == "crash" for r in records)
        for k in range(1, len(records) + 1):
            rebuilt = RunState.rebuild(records[:k], loop.repo.source_of, noise_sigmas=config.noise_sigmas,
                                       max_runs=1 + config.confirm_runs, stop_rule=make_rule("calibrated", 4.0))
            assert _summary(rebuilt) == live[k - 1], f"after record {k}"
    finally:
        loop.close()


def test_the_first_ok_noise_run_is_kept_and_the_others_join_its_mean():
    state = RunState(noise_sigmas=2.0, max_runs=3)
    assert state.verdict(NOISE_POLICY, "ok", 2.50) is Verdict.KEEP
    state.add(make_record(iteration=1, policy=NOISE_POLICY, val_bpb=2.50, code_hash="b" * 64, accepted=True),
              "BASELINE")
    assert state.verdict(NOISE_POLICY, "ok", 2.52) is Verdict.DROP
    state.add(make_record(iteration=2, policy=NOISE_POLICY, val_bpb=2.52, code_hash="b" * 64, accepted=False),
              "BASELINE")
    assert state.incumbent.values == [2.50, 2.52] and state.incumbent.source == "BASELINE"
    assert state.noise_values == [2.50, 2.52] and np.isclose(state.acceptance.sigma, np.std([2.5, 2.52], ddof=1))


def test_a_near_miss_waits_for_its_re_runs_and_a_kept_one_becomes_the_incumbent():
    state = RunState(noise_sigmas=2.0, max_runs=3)
    for i, value in enumerate((2.50, 2.52, 2.48), start=1):
        state.add(make_record(iteration=i, policy=NOISE_POLICY, val_bpb=value, code_hash="b" * 64,
                              accepted=i == 1), "BASELINE")
    assert state.verdict("random", "ok", 2.47) is Verdict.AGAIN  # below the 3-run bar, above the 1-run one
    state.add(make_record(iteration=4, policy="random", val_bpb=2.47, code_hash="e" * 64, accepted=False), "EDIT")
    assert state.near_miss.source == "EDIT" and state.near_miss.values == [2.47]
    assert state.sources == {"e" * 64: ("EDIT", state.records[-1].description)}
    assert state.verdict(CONFIRM_POLICY, "ok", 2.47) is Verdict.KEEP
    state.add(make_record(iteration=5, policy=CONFIRM_POLICY, val_bpb=2.47, code_hash="e" * 64, accepted=True))
    assert state.near_miss is None
    assert state.incumbent.code_hash == "e" * 64 and state.incumbent.values == [2.47, 2.47]
    assert state.incumbent.source == "EDIT"  # the near miss's train.py, carried over by its re-run


def test_failures_count_in_a_row_and_a_duplicate_does_not_count():
    state = RunState()
    for i, status in enumerate(("crash", "timeout"), start=1):
        state.add(make_record(iteration=i, status=status, val_bpb=None, accepted=False))
    assert state.failures == 2
    state.add(make_record(iteration=3, status="rejected", val_bpb=None, accepted=False,
                          reward_parts={"duplicate": -0.5}))
    assert state.failures == 2  # a duplicate never ran: it says nothing about train.py
    state.add(make_record(iteration=4, status="ok", val_bpb=2.5, accepted=False))
    assert state.failures == 0
