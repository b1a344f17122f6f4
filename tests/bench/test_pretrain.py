"""kit.bench.pretrain: the prior draws development members around starts that move values, never ranges; the same
seed makes the same weights, and they fit the kit's train.py; a report per block of episodes."""

import math

import pytest
import torch

from kit import edits
from kit.bench.family import DEVELOPMENT, held_out_member
from kit.bench.pretrain import PretrainConfig, draw_episode, pretrain, write_report
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
    assert all(e.member in DEVELOPMENT for e in episodes) and len({e.member for e in episodes}) > 50
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
