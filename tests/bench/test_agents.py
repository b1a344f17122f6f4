"""kit.bench.agents and comparison: policies through the real loop on stand-in worlds; the report's tests."""

import math
from pathlib import Path

import numpy as np
import pytest

from kit import REPO_ROOT
from kit.bench import agents, comparison
from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
from kit.bench.family import FamilyConfig, SyntheticFamily
from kit.cli import main

BASELINE = (REPO_ROOT / "train.py").read_text()


ENV = SyntheticEnvironment(BASELINE, SyntheticConfig(seed=1))


@pytest.fixture(scope="module")
def trajectories():
    return agents.run_all(["random", "tpe"], 3, lambda seed: ENV, 26, ENV.config.budget, log=lambda *_: None, jobs=2)


def test_worker_processes_give_what_one_process_gives(trajectories, tmp_path: Path):
    alone = agents.run_one("tpe", 1, ENV, 26, ENV.config.budget, tmp_path)
    pooled = next(t for t in trajectories if t.policy == "tpe" and t.seed == 1)
    assert (alone.best, alone.incumbent, alone.reevaluated) == (pooled.best, pooled.incumbent, pooled.reevaluated)
    assert [(t.policy, t.seed) for t in trajectories] == [(p, s) for p in ("random", "tpe") for s in range(3)]


def test_what_a_user_gets_is_the_kept_train_py_valued_without_noise_and_under_fresh_seeds(trajectories):
    for t in trajectories:
        assert ENV.optimum <= t.kept <= t.baseline_worth
        # five fresh seeds of the final train.py: its noise-free worth, give or take the noise of a mean of five
        assert abs(t.reevaluated - t.kept) < 4 * ENV.config.noise / math.sqrt(len(agents.REEVALUATION_SEEDS))
        assert t.keeps == 0 or t.kept < t.baseline_worth


def test_trajectories_count_experiments_hours_and_losses(trajectories):
    for t in trajectories:
        assert len(t.best) == len(t.incumbent) == len(t.hours) == 26 == sum(t.statuses.values())
        assert all(b >= a for a, b in zip(t.best[1:], t.best, strict=False)) and t.best[0] <= t.baseline + 1e-9
        assert all(b >= a for a, b in zip(t.hours, t.hours[1:], strict=False))
        assert 3 * 66.0 / 3600 <= t.hours[0] and t.hours[-1] <= 29 * 66.0 / 3600  # 60 s + 6 s a run at most
        assert t.incumbent_at(0.0) == t.baseline_worth and t.incumbent_at(t.hours[-1]) == t.kept
        assert t.losses["pruned"] == t.statuses.get("pruned", 0)
        assert t.losses["rejected"] + t.losses["duplicate"] == t.statuses.get("rejected", 0)


def _trajectory(policy: str, seed: int, final: float) -> agents.Trajectory:
    return agents.Trajectory(policy, seed, (2.5,), (final,), (1.0,), 2.5, 2.5, final, 0.1, {"ok": 1},
                             dict.fromkeys(agents.LOSSES, 0))


def test_paired_tests_pair_by_seed_and_correct_for_the_number_of_pairs():
    rng = np.random.default_rng(0)
    worlds = rng.normal(2.45, 0.05, 20)  # seed i of every policy meets world i: most of the spread is the world's
    world = comparison.World("w", "", [_trajectory(p, s, worlds[s] + shift) for p, shift in
                                       (("a", -0.01), ("b", 0.0), ("c", 0.0)) for s in range(20)])
    measure = next(iter(comparison.measures(world).values()))
    assert comparison.strongest(world, measure) == "a"
    pairs = comparison.paired(world, measure, "a", ["b", "c"])
    assert all(q.seeds == 20 and q.rank_biserial == -1.0 and q.difference == pytest.approx(-0.01) for q in pairs)
    assert all(q.p < 1e-4 and q.p < q.p_holm <= 2 * q.p for q in pairs)
    from scipy.stats import mannwhitneyu  # unpaired, the world's spread would hide the difference

    assert mannwhitneyu(worlds - 0.01, worlds, alternative="less").pvalue > 0.2
    assert comparison.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    ties = comparison.paired(world, measure, "b", ["c"])[0]
    assert ties.p == 1.0 and ties.rank_biserial == 0.0  # no difference on any seed


def test_report_has_a_row_per_policy_the_paired_tests_and_a_verdict(trajectories, tmp_path: Path):
    world = comparison.World("synthetic", "the easy world", trajectories)
    out = comparison.write_report([world], tmp_path / "agents.md", ["# test", "how"])
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "# test" and lines[2].startswith("- on synthetic, **")
    for policy in ("random", "tpe"):
        assert sum(line.startswith(f"| {policy} |") for line in lines) == 2  # what a user gets; cost and losses
    assert "fresh seeds" in text and "p (Holm)" in text and out.with_suffix(".png").stat().st_size > 0


def test_an_interrupted_benchmark_resumes_from_its_cache_without_running_a_finished_run_again(tmp_path: Path):
    cache = tmp_path / "cache"
    first = agents.run_all(["random"], 2, lambda seed: ENV, 4, ENV.config.budget, log=lambda *_: None, cache=cache)
    (cache / "random-1.json").unlink()  # as if the benchmark was killed before seed 1 ended
    ran = []

    def world(seed: int):
        ran.append(seed)
        return ENV

    again = agents.run_all(["random"], 2, world, 4, ENV.config.budget, log=lambda *_: None, cache=cache)
    assert ran == [1]
    same = [(t.policy, t.seed, t.best, t.incumbent, t.hours, t.reevaluated, t.statuses, t.losses, t.keeps)
            for t in first]
    assert [(t.policy, t.seed, t.best, t.incumbent, t.hours, t.reevaluated, t.statuses, t.losses, t.keeps)
            for t in again] == same  # read back whole, the tuples as tuples
    assert math.isnan(again[0].unsure)  # a nan survives the file
    assert not list(cache.glob("*.tmp"))
    # the folder is named by the code and the world's data: other code or other recordings never share it
    assert agents.fingerprint("replay", "300") != agents.fingerprint("replay", "150")


def test_each_seed_of_the_family_meets_its_own_member(tmp_path: Path):
    def member(seed: int) -> SyntheticFamily:
        return SyntheticFamily(BASELINE, FamilyConfig(member=seed))  # development members: 0 and 1

    ts = agents.run_all(["random"], 2, member, 4, 60.0, log=lambda *_: None)
    assert [t.baseline_worth for t in ts] == [member(s).expected_bpb(BASELINE) for s in range(2)]


def test_cli_refuses_bad_policies_worlds_and_missing_curves(tmp_path: Path, capsys):
    assert main(["bench", "agents", "--policies", "ppo"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["bench", "agents", "--environment", "moon"]) == 2
    assert "one or more of family" in capsys.readouterr().err
    assert main(["bench", "agents", "--curves", str(tmp_path / "none.jsonl.gz")]) == 2
    assert "record some" in capsys.readouterr().err
    assert main(["bench", "agents", "--environment", "tabular", "--design", str(tmp_path / "none.jsonl.gz")]) == 2
    assert "--design" in capsys.readouterr().err
    (tmp_path / "cache").write_text("not a folder")
    assert main(["bench", "agents", "--environment", "synthetic", "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "is a file: give a folder" in err and err.count("\n") == 1


def test_a_loop_that_pauses_after_failures_is_resumed_until_it_has_its_experiments(tmp_path: Path):
    from kit.bench.environments import simulated_result
    from kit.results import Status

    def failing(source, run_dir, config, monitor=None):  # the baseline runs; every edit times out
        if source == BASELINE:
            return simulated_result("test", 60.0, 0, run_dir, Status.OK, "", ((30.0, 3.0), (60.0, 2.9)), 2.5,
                                    60.0, 66.0)
        return simulated_result("test", 60.0, 0, run_dir, Status.TIMEOUT, "killed", (), None, 60.0, 90.0)

    t = agents.run_one("random", 0, failing, 9, 60.0, tmp_path)
    assert len(t.best) == 9 and t.statuses == {"timeout": 9} and t.pauses == 2  # 3 failures in a row, 3 times
