"""kit.bench.agents: policies through the real loop on the synthetic world; the report's tables and test."""

import math
from pathlib import Path

import pytest

from kit import REPO_ROOT
from kit.bench import agents
from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
from kit.cli import main

BASELINE = (REPO_ROOT / "train.py").read_text()


ENV = SyntheticEnvironment(BASELINE, SyntheticConfig(seed=1))


@pytest.fixture(scope="module")
def trajectories():
    return agents.run_all(["random", "tpe"], 3, ENV, 26, ENV.config.budget, log=lambda *_: None, jobs=2)


def test_worker_processes_give_what_one_process_gives(trajectories, tmp_path: Path):
    alone = agents.run_one("tpe", 1, ENV, 26, ENV.config.budget, tmp_path)
    pooled = next(t for t in trajectories if t.policy == "tpe" and t.seed == 1)
    assert alone.best == pooled.best and alone.found == pooled.found
    assert [(t.policy, t.seed) for t in trajectories] == [(p, s) for p in ("random", "tpe") for s in range(3)]


def test_the_found_config_is_valued_without_noise(trajectories):
    for t in trajectories:
        # the synthetic objective's value of the best config: at least the optimum, within a few noise sds of
        # the lucky draw that made it the best
        assert ENV.optimum <= t.found <= t.best[-1] + 5 * ENV.config.noise


def test_trajectories_are_best_so_far_and_start_from_the_noise_floor(trajectories):
    for t in trajectories:
        assert len(t.best) == 26 and all(b >= a for a, b in zip(t.best[1:], t.best, strict=False))
        assert t.best[0] <= t.baseline + 1e-9 and math.isfinite(t.baseline)
        assert 3 * 66.0 < t.experiment_seconds <= 29 * 66.0 and sum(t.statuses.values()) == 26  # 60 s + 6 s a run


def test_report_has_a_row_per_policy_and_a_test_against_the_peer(trajectories, tmp_path: Path):
    out = agents.write_report(trajectories, tmp_path / "agents.md", ["# test"])
    text = out.read_text()
    for policy in ("random", "tpe"):
        assert sum(line.startswith(f"| {policy} |") for line in text.splitlines()) == 3
    assert "after 25" in text and out.with_suffix(".png").stat().st_size > 0
    peer, p = agents.significance(trajectories, "tpe", 26)
    assert peer == "random" and 0 <= p <= 1


def test_a_new_report_keeps_the_real_check_section(trajectories, tmp_path: Path):
    out = tmp_path / "agents.md"
    out.write_text(f"# old\n\n{agents.REAL_CHECK}\n\n| ppo | 1 |\n")
    text = agents.write_report(trajectories, out, ["# new"]).read_text()
    assert text.startswith("# new") and "# old" not in text
    assert text.endswith(f"{agents.REAL_CHECK}\n\n| ppo | 1 |\n")


def test_each_policy_is_tested_against_every_other_on_both_measures(trajectories):
    rows = agents.against_each(trajectories, "random", 26)
    assert [r[0] for r in rows] == ["tpe"] and all(0 <= p <= 1 for p in rows[0][1:])


def test_cli_refuses_bad_policies_and_missing_curves(tmp_path: Path, capsys):
    assert main(["bench", "agents", "--policies", "ppo"]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["bench", "agents", "--curves", str(tmp_path / "none.jsonl.gz")]) == 2
    assert "record some" in capsys.readouterr().err


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
