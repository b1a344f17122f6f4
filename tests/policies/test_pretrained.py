"""kit.policies.pretrained: ppo starts from the shipped weights, made for the kit's train.py; weights made for
another train.py, catalog, observation or reward, or none at all, are refused in one line that says what to do."""

import dataclasses

import numpy as np
import pytest
import torch

from kit import edits
from kit.cli import main
from kit.loop import LoopConfig, ResearchLoop
from kit.policies import Setup, make_policy, pretrained
from kit.policies.operator import OperatorPolicy

from ..helpers import TRAIN_PY, loop_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _saved(tmp_path, policy: OperatorPolicy, expects: str = "made-for-this"):
    path = tmp_path / "weights.pt"
    pretrained.save(path, policy.parameters_to_save(), expects, {"reward": "progress"})
    return path


def test_a_policy_started_from_saved_weights_acts_as_the_one_that_saved_them(tmp_path):
    trained, fresh = OperatorPolicy(4, 6, seed=1), OperatorPolicy(4, 6, seed=2)
    x = torch.randn(5, 4)
    assert not torch.allclose(trained.actor(x), fresh.actor(x))
    about = fresh.start_from(_saved(tmp_path, trained), "made-for-this")
    assert about == {"reward": "progress"}
    torch.testing.assert_close(trained.actor(x), fresh.actor(x))
    torch.testing.assert_close(trained.get_value(x), fresh.get_value(x))


@pytest.mark.parametrize("case", ["other run", "other shape", "no file", "not weights"])
def test_weights_that_do_not_fit_are_refused_in_one_line_that_says_what_to_do(tmp_path, case):
    path = _saved(tmp_path, OperatorPolicy(4, 6, seed=1, hidden_size=32 if case == "other shape" else 64))
    if case == "no file":
        path = tmp_path / "missing.pt"
    elif case == "not weights":
        path.write_bytes(b"not a torch file")
    with pytest.raises(pretrained.WeightsMismatch) as refused:
        OperatorPolicy(4, 6, seed=2).start_from(path, "made-for-that" if case == "other run" else "made-for-this")
    message = str(refused.value)
    assert "\n" not in message and "--from-scratch" in message and "kit bench pretrain" in message


def test_the_signature_follows_ranges_catalog_observation_and_reward_but_not_values():
    source = TRAIN_PY.read_text()
    knobs, catalog = edits.knobs(source), edits.build_catalog(source)
    own = pretrained.signature(knobs, catalog, 40, "progress")
    moved = edits.knobs(edits.set_values(source, {"MATRIX_LR": 0.016, "DEPTH": 6}))
    assert pretrained.signature(moved, catalog, 40, "progress") == own  # the observation carries the values
    assert pretrained.signature(knobs, catalog, 41, "progress") != own
    assert pretrained.signature(knobs, catalog, 40, "composite") != own
    assert pretrained.signature(knobs, catalog[:-1], 40, "progress") != own
    narrowed = source.replace("blocks [1, 16]", "blocks [1, 12]", 1)
    assert narrowed != source, "train.py declares DEPTH's range as [1, 16]"
    assert pretrained.signature(edits.knobs(narrowed), catalog, 40, "progress") != own


def test_the_shipped_weights_fit_the_kits_train_py_and_ppo_starts_from_them(tmp_path):
    loop = ResearchLoop(loop_config(tmp_path, policy="ppo"))
    try:
        setup = Setup(catalog=loop.catalog, knobs=edits.knobs(loop.source), observation_size=loop._observation(
            loop.source).size, edit_features=edits.edit_features(loop.source, loop.catalog, loop.knob_names))
        shipped, scratch = make_policy("ppo", setup), make_policy("ppo", dataclasses.replace(setup, from_scratch=True))
    finally:
        loop.close()
    parameters, about = pretrained.load(pretrained.WEIGHTS, pretrained.signature(
        setup.knobs, setup.catalog, setup.observation_size, "progress"))
    for name, p in shipped.named_parameters():
        torch.testing.assert_close(p, parameters[name])
    x = torch.as_tensor(np.zeros((1, setup.observation_size), np.float32))
    assert not torch.allclose(shipped.actor(x), scratch.actor(x))
    assert about["episodes"] >= 1 and pretrained.WEIGHTS.stat().st_size < 1_000_000  # small enough to version


def test_ppo_on_a_train_py_the_weights_were_not_made_for_says_so_in_one_line(tmp_path, capsys):
    other = tmp_path / "train.py"
    other.write_text(TRAIN_PY.read_text().replace("blocks [1, 16]", "blocks [1, 12]", 1))
    args = ["loop", "--profile", "smoke", "--policy", "ppo", "--iterations", "1", "--train-py", str(other),
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--from-scratch" in errors[0] and "another train.py" in errors[0], errors
    config = LoopConfig(run_dir=tmp_path / "scratch", profile="smoke", policy="ppo", train_py=other, from_scratch=True)
    ResearchLoop(config).close()  # from scratch it builds
