"""kit.policies.hybrid: CMA-ES whose proposals an LLM may override, against a chat server on loopback. What the LLM
sees, what it may change, what CMA-ES learns from the values that ran, and replies that cannot be used."""

import contextlib
import io

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from kit import REPO_ROOT
from kit.bench.environments import SyntheticConfig, SyntheticEnvironment
from kit.hyperparams import parse_hyperparameters
from kit.loop import LoopConfig, run_loop
from kit.memory import Memory
from kit.policies import State
from kit.policies.hybrid import HybridPolicy, parse_values
from kit.policies.llm import LLMConfig
from kit.policies.samplers import SamplerConfig
from kit.stopping import StopConditions

from ..helpers import QUADRATIC, ledger_records, tell
from .chat_server import chat

KNOBS = parse_hyperparameters(QUADRATIC)  # A, B in [0, 1], C in [-1, 1], LR in [1e-4, 0.1] (log), N in [0, 10]


def _hybrid(url, share=1.0, seed=0):
    llm = LLMConfig(url=url, model="local-model", timeout=5.0, retries=0)
    return HybridPolicy(KNOBS, llm, seed=seed, share=share, sleep=lambda s: None)


def _state():
    return State(QUADRATIC, [], np.zeros(0, bool), np.zeros(0, np.float32), KNOBS, memory=Memory())


def test_the_llm_sees_the_search_and_its_values_run_and_are_told_to_cmaes(server):
    script, url = server
    script.replies.append((200, chat("A = 0.9\nN = 2"), {}, 0))
    policy, state = _hybrid(url), _state()
    policy.witness(KNOBS, 1.0)  # the noise floor, as the loop tells it: CMA-ES proposes from the first experiment
    proposal = policy.propose(state)
    assert proposal.values["A"] == 0.9 and proposal.values["N"] == 2
    assert proposal.description.startswith("cmaes-llm (LLM): A 0.5 -> 0.9") and "N 5 -> 2" in proposal.description
    prompt = script.requests[0]["body"]["messages"][1]["content"]
    assert "mean 0.5" in prompt and "step size: 0.1 " in prompt and "LR [0.0001, 0.1], log scale" in prompt
    assert "No experiments yet." in prompt and "proposed" in prompt
    tell(policy, state, proposal, 1.5)
    _, asked, ran = policy.study.trials
    assert asked.state is TrialState.FAIL and ran.state is TrialState.COMPLETE and ran.value == 1.5
    assert ran.params["A"] == 0.9 and ran.params["N"] == 2
    assert any(key.endswith("generation") for key in ran.system_attrs)  # a member of CMA-ES's generation


def test_a_pruned_run_the_llm_chose_is_told_as_cmaes_own_would_be(server):
    script, url = server
    told = {}
    for pruned_as in ("forecast", "pruned"):
        script.replies.append((200, chat("A = 0.9"), {}, 0))
        llm = LLMConfig(url=url, model="local-model", timeout=5.0, retries=0)
        policy = HybridPolicy(KNOBS, llm, share=1.0, sleep=lambda s: None, config=SamplerConfig(pruned_as=pruned_as))
        state = _state()
        policy.witness(KNOBS, 1.0)
        tell(policy, state, policy.propose(state), 1.7, pruned=True)
        _, asked, ran = policy.study.trials
        assert asked.state is TrialState.FAIL and ran.params["A"] == 0.9
        told[pruned_as] = (ran.state, ran.value, ran.intermediate_values)
    assert told == {"forecast": (TrialState.COMPLETE, 1.7, {}), "pruned": (TrialState.PRUNED, 1.7, {0: 1.7})}


def test_cmaes_moves_towards_what_the_llm_ran(server):
    script, url = server
    policy, state = _hybrid(url), _state()
    policy.witness(KNOBS, 1.0)  # the noise floor, as the loop tells it: CMA-ES starts at once
    for _ in range(12):  # more than one generation (8 for 5 knobs)
        script.replies.append((200, chat("A = 0.95\nB = 0.05"), {}, 0))
        proposal = policy.propose(state)
        tell(policy, state, proposal, 1.0)
    mean, sigma = policy.search_distribution(policy.study.ask())
    assert mean["A"] > 0.8 and mean["B"] < 0.2, mean  # it started at 0.5 and 0.5


def test_without_a_share_the_endpoint_is_never_asked(server):
    script, url = server
    policy, state = _hybrid(url, share=0.0), _state()
    for _ in range(5):
        proposal = policy.propose(state)
        assert proposal.description.startswith("cmaes-llm: ")
        tell(policy, state, proposal, 1.0)
    assert script.requests == []


@pytest.mark.parametrize("reply, why", [
    ((200, chat("A = 1.5"), {}, 0), "A = 1.5 is outside its range [0.0, 1.0]"),
    ((200, chat("DEPTH = 4"), {}, 0), "sets DEPTH, which is not a ranged knob"),
    ((200, chat("Lower the learning rate."), {}, 0), "no NAME = value line"),
    ((401, b"unauthorized", {}, 0), "HTTP 401"),
])
def test_an_unusable_reply_leaves_cmaes_proposal_and_says_why(server, reply, why):
    script, url = server
    script.replies.append(reply)
    policy, state = _hybrid(url), _state()
    proposal = policy.propose(state)
    assert proposal.description.startswith("cmaes-llm: ") and why in proposal.description
    assert "\n" not in proposal.description and all(k.in_range(proposal.values[k.name]) for k in KNOBS)
    tell(policy, state, proposal, 1.0)
    assert [t.state for t in policy.study.trials] == [TrialState.COMPLETE]


def test_reading_a_reply():
    assert parse_values("```\nA = 0.25\nN = 3.0\n```", KNOBS) == {"A": 0.25, "N": 3}
    assert parse_values("KEEP", KNOBS) == {}
    for text in ("A = half", "A = 1" + "+1" * 100_000, "A = " + "-" * 100_000 + "1"):  # RecursionError, MemoryError
        with pytest.raises(ValueError, match="not a literal"):
            parse_values(text, KNOBS)
    with pytest.raises(ValueError, match="share"):
        _hybrid("http://127.0.0.1:9/v1", share=1.5)


def test_the_loop_runs_the_hybrid_and_the_llm_overrides_about_its_share(server, tmp_path):
    script, url = server
    baseline = (REPO_ROOT / "train.py").read_text()
    script.replies.extend([(200, chat("WEIGHT_DECAY = 0.04"), {}, 0)] * 40)
    with contextlib.redirect_stdout(io.StringIO()):
        run_loop(LoopConfig(run_dir=tmp_path, profile="smoke", policy="cmaes-llm", budget=60.0, seed=0,
                            llm_url=url, llm_model="local-model", llm_share=0.5,
                            stop=StopConditions(iterations=43)),
                 environment=SyntheticEnvironment(baseline, SyntheticConfig(seed=1)))
    records = ledger_records(tmp_path)
    agent = [r for r in records if r.policy == "cmaes-llm"]
    overridden = [r for r in agent if r.description.startswith("cmaes-llm (LLM)")]
    assert len(agent) >= 30 and 0.3 < len(overridden) / len(agent) < 0.7
    assert len(script.requests) == len(overridden)
    # the loop told CMA-ES of the noise floor first: three finished trials at the baseline's values
    trials = torch.load(tmp_path / "policy.pt", weights_only=False)["policy"]["trials"]
    noise = [r.val_bpb for r in records if r.policy == "noise-floor"]
    assert [t["value"] for t in trials[:3]] == noise and all(t["params"]["MODEL_DIM"] == 128 for t in trials[:3])
