"""kit.bench.pretrain: the prior draws development members around starts that move values, never ranges; the same
seed makes the same weights, and they fit the kit's train.py; a report per block of episodes."""

import math

import pytest
import torch

from kit import edits
from kit.bench.family import DEVELOPMENT, held_out_member
from kit.bench.pretrain import (
    LEARNING,
    VALIDATION,
    PretrainConfig,
    draw_episode,
    pretrain,
    validate,
    validation_table,
    write_report,
)
from kit.loop import SITUATION_NAMES
from kit.memory import Memory
from kit.policies import pretrained

from ..helpers import TRAIN_PY

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BASELINE = TRAIN_PY.read_text()


def test_episodes_are_reproducible_development_members_around_starts_that_move_values_not_ranges():
    config = PretrainConfig(episodes=60)
    episodes = [draw_episode(i, BASELINE, config) for i in range(60)]
    assert episodes == [draw_episode(i, BASELINE, config) for i in range(60)]
    assert all(e.member in DEVELOPMENT and e.member in LEARNING for e in episodes)
    assert len({e.member for e in episodes}) > 50 and not set(LEARNING) & set(VALIDATION)
    assert not {e.member for e in episodes} & {held_out_member(i) for i in range(100)}
    assert sum(e.start != BASELINE for e in episodes) > 50
    catalog = edits.build_catalog(BASELINE)
    assert all(edits.build_catalog(e.start) == catalog for e in episodes)
    assert all(config.experiments[0] <= e.experiments <= config.experiments[1] for e in episodes)
    assert {e.budget for e in episodes} == set(config.budgets)
    base = {k.name: k for k in edits.knobs(BASELINE)}
    for e in episodes:  # a moved learning rate stays in the lower two thirds of its range, where runs train
        for k in edits.knobs(e.start):
            if k.name.endswith("_LR") and k.value != base[k.name].value:
                assert k.normalized(k.value) <= 0.67
    assert draw_episode(0, BASELINE, PretrainConfig(seed=1)) != episodes[0]


def test_the_same_seed_makes_the_same_weights_and_they_fit_the_kits_train_py(tmp_path):
    config = PretrainConfig(episodes=2, experiments=(6, 10))
    first = pretrain(config, tmp_path / "a.pt", log=lambda line: None)
    again = pretrain(config, tmp_path / "b.pt", log=lambda line: None)
    knobs, catalog = edits.knobs(BASELINE), edits.build_catalog(BASELINE)
    expects = pretrained.signature(knobs, catalog, len(knobs) + Memory.observation_size + len(SITUATION_NAMES),
                                   "progress")
    (a, about), (b, _) = pretrained.load(tmp_path / "a.pt", expects), pretrained.load(tmp_path / "b.pt", expects)
    assert sorted(a) == sorted(b) and all(torch.equal(a[name], b[name]) for name in a)
    assert about["episodes"] == 2 and about["experiments"] == sum(s.experiments for s in first)
    assert [(s.member, s.gain, s.end_worth) for s in first] == [(s.member, s.gain, s.end_worth) for s in again]
    assert all(math.isfinite(s.start_worth) and math.isfinite(s.end_worth) and s.gain >= 0 for s in first)
    report = write_report(first, tmp_path / "pretrain.md", "Made here.", block=1)
    assert report.read_text().count("\n| ") == 3 and "Made here." in report.read_text()


def test_validation_runs_the_shipped_weights_and_the_others_on_members_pre_training_never_draws():
    world = validate(2, 4, BASELINE, policies=("ppo", "greedy"), log=lambda line: None)
    assert sorted({(t.policy, t.seed) for t in world.trajectories}) == [("greedy", 0), ("greedy", 1), ("ppo", 0),
                                                                        ("ppo", 1)]
    assert world.experiments == 4 and str(VALIDATION.start) in world.description
    table = validation_table(world)
    assert "| ppo − greedy |" in table and table.count("\n| ppo |") == 1 and "kept, after 4" in table
    with pytest.raises(ValueError, match="validation members"):
        validate(len(VALIDATION) + 1, 4, BASELINE)
