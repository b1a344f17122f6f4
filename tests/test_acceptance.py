"""Keeping an edit on the mean of its runs: the margin, near misses run again, and the loop doing it."""

import math

import pytest

from kit.acceptance import Acceptance, Verdict, margin
from kit.harness import RunResult, Status
from kit.ledger import Ledger
from kit.loop import CANDIDATE_FILE, CONFIRM_POLICY, NOISE_POLICY, LoopConfig, run_loop
from kit.memory import code_hash


def test_one_run_against_one_run_needs_the_full_margin_and_more_runs_need_less():
    assert margin(0.03, 2.0, 1, 1) == pytest.approx(0.06)
    assert margin(0.03, 2.0, 4, 4) == pytest.approx(0.03)  # the standard error halves with four runs a side
    assert margin(0.03, 2.0, 3, 3) < margin(0.03, 2.0, 2, 3) < margin(0.03, 2.0, 1, 3)
    with pytest.raises(ValueError, match="at least one run"):
        margin(0.03, 2.0, 0, 1)


def test_a_clear_gain_is_kept_a_near_miss_is_run_again_and_a_loss_dropped():
    rule = Acceptance(sigma=0.02, sigmas=2.0, max_runs=3)
    incumbent = [2.50, 2.52, 2.48]
    assert rule.verdict([2.40], incumbent) is Verdict.KEEP
    assert rule.verdict([2.47], incumbent) is Verdict.AGAIN  # below the 3-run bar, above the 1-run one
    assert rule.verdict([2.49], incumbent) is Verdict.DROP  # even a mean of three like it would not clear
    assert rule.verdict([2.47, 2.47], incumbent) is Verdict.KEEP
    assert rule.verdict([2.47, 2.53], incumbent) is Verdict.DROP
    assert rule.verdict([2.47, 2.48, 2.485], incumbent) is Verdict.DROP  # three runs used up
    assert rule.verdict([], incumbent) is Verdict.DROP
    assert Acceptance(0.02, 2.0, max_runs=1).verdict([2.47], incumbent) is Verdict.DROP


def test_the_bars_are_the_incumbents_mean_less_the_margin():
    rule = Acceptance(sigma=0.02, sigmas=2.0, max_runs=3)
    assert rule.bar([2.5, 2.5, 2.5], 1) == pytest.approx(2.5 - 0.04 * math.sqrt(2 / 3))
    assert rule.retry_bar([2.5, 2.5, 2.5]) == pytest.approx(2.5 - 0.04 * math.sqrt(1 / 3))
    with pytest.raises(ValueError, match="sigma >= 0"):
        Acceptance(sigma=-1.0)


class _StandIn:
    """The baseline lands at 2.50/2.52/2.48 under the noise floor's three seeds (sd 0.02); any edit lands at
    `first` under the frozen seed and at `later` under every other seed."""

    def __init__(self, baseline: str, first: float, later: float):
        import prepare

        self.baseline, self.first, self.later = baseline, first, later
        self.frozen = prepare.get_profile("smoke").seed
        self.seeds: list[int] = []

    def __call__(self, source, run_dir, config, monitor=None):
        seed = self.frozen if config.seed is None else config.seed
        self.seeds.append(seed)
        if source == self.baseline:
            value = {0: 2.50, 1: 2.52, 2: 2.48}[seed - self.frozen]
        else:
            value = self.first if seed == self.frozen else self.later
        return RunResult(status=Status.OK, val_bpb=value, reason="", training_seconds=1.0, total_seconds=1.0,
                         peak_mem_mb=1.0, num_steps=3, curve=((0.5, 3.0), (1.0, value)),
                         fingerprint={"device": "cpu"}, seed=seed, run_dir=str(run_dir))


def _config(tmp_path, **overrides):
    from .conftest import REPO

    return LoopConfig(**{"run_dir": tmp_path / "run", "profile": "smoke", "policy": "random",
                         "early_stopping": "none", "train_py": REPO / "train.py", **overrides})


def _records(tmp_path):
    with Ledger(tmp_path / "run", readonly=True) as ledger:
        return ledger.records()


def test_a_near_miss_confirmed_under_a_new_seed_is_kept(tmp_path):
    from .conftest import REPO

    world = _StandIn((REPO / "train.py").read_text(), first=2.47, later=2.47)
    run_loop(_config(tmp_path, iterations=5), environment=world)
    records = _records(tmp_path)
    assert [r.policy for r in records] == [NOISE_POLICY] * 3 + ["random", CONFIRM_POLICY]
    first, again = records[3], records[4]
    assert not first.accepted and again.accepted and again.commit
    assert again.code_hash == first.code_hash and again.seed == world.frozen + 1
    assert "run 2 of at most 3" in again.description
    assert code_hash((tmp_path / "run" / "repo" / "train.py").read_text()) == first.code_hash
    assert not (tmp_path / "run" / CANDIDATE_FILE).exists()


def test_a_lucky_first_run_is_found_out_and_dropped(tmp_path):
    from .conftest import REPO

    baseline = (REPO / "train.py").read_text()
    run_loop(_config(tmp_path, iterations=5), environment=_StandIn(baseline, first=2.47, later=2.56))
    records = _records(tmp_path)
    assert records[4].policy == CONFIRM_POLICY and not records[4].accepted
    assert (tmp_path / "run" / "repo" / "train.py").read_text() == baseline


def test_without_confirmations_a_near_miss_is_simply_not_kept(tmp_path):
    from .conftest import REPO

    world = _StandIn((REPO / "train.py").read_text(), first=2.47, later=2.47)
    run_loop(_config(tmp_path, iterations=6, confirm_runs=0), environment=world)
    assert [r.policy for r in _records(tmp_path)][3:] == ["random"] * 3
    assert not any(r.accepted for r in _records(tmp_path)[3:])


def test_a_loop_stopped_between_a_near_miss_and_its_confirmation_resumes_it(tmp_path):
    from .conftest import REPO

    world = _StandIn((REPO / "train.py").read_text(), first=2.47, later=2.47)
    run_loop(_config(tmp_path, iterations=4), environment=world)
    assert (tmp_path / "run" / CANDIDATE_FILE).exists()
    run_loop(_config(tmp_path, iterations=5), environment=world)
    records = _records(tmp_path)
    assert records[4].policy == CONFIRM_POLICY and records[4].accepted
    assert records[4].code_hash == records[3].code_hash


def test_a_policy_checkpoint_of_another_shape_stops_the_resume_with_what_to_do(tmp_path):
    import torch

    from kit.loop import ResumeError

    from .conftest import REPO

    world = _StandIn((REPO / "train.py").read_text(), first=2.47, later=2.47)
    run_loop(_config(tmp_path, iterations=4, policy="ppo"), environment=world)
    checkpoint = tmp_path / "run" / "policy.pt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["policy"] = {"actor.0.weight": torch.zeros(3, 3)}  # as an older kit's actor would have saved it
    torch.save(saved, checkpoint)
    with pytest.raises(ResumeError, match="move it away to start the policy afresh"):
        run_loop(_config(tmp_path, iterations=5, policy="ppo"), environment=world)
    assert len(_records(tmp_path)) == 4  # nothing recorded is lost or added


def test_the_cli_says_so_in_one_line(smoke_data, tmp_path, capsys):
    import torch

    from kit.__main__ import main

    from .conftest import REPO

    run_loop(_config(tmp_path, iterations=4, policy="ppo"),
             environment=_StandIn((REPO / "train.py").read_text(), first=2.47, later=2.47))
    checkpoint = tmp_path / "run" / "policy.pt"
    saved = torch.load(checkpoint, weights_only=False)
    saved["policy"] = {"actor.0.weight": torch.zeros(3, 3)}
    torch.save(saved, checkpoint)
    code = main(["loop", "--profile", "smoke", "--policy", "ppo", "--iterations", "5", "--run-dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "move it away" in err
