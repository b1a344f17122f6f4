"""The llm proposer against a chat-completions server started here on loopback: good replies, rate limits,
timeouts, server errors and malformed replies (none of which may raise)."""

import json

import pytest

from kit import REPO_ROOT, edits
from kit.memory import Memory
from kit.policies import State
from kit.policies.llm import LLMConfig, LLMProposer

from ..helpers import ledger_records, loop_config
from .chat_server import chat

BASELINE = (REPO_ROOT / "train.py").read_text()
EDITED = edits.set_values(BASELINE, {"WEIGHT_DECAY": 0.04})
GOOD = "lower weight decay\n\n```diff\n" + edits.unified_diff(BASELINE, EDITED) + "```\n"


def propose(url, script, *replies, **config):
    script.replies.extend(replies)
    waits = []
    proposer = LLMProposer(LLMConfig(url=url, model="local-model", timeout=config.pop("timeout", 5.0),
                                     backoff=0.01, **config), sleep=waits.append)
    state = State(source=BASELINE, catalog=[], mask=None, observation=None, knobs=[], memory=Memory())
    return proposer.propose(state), waits


def test_a_good_reply_becomes_a_candidate(server, monkeypatch):
    script, url = server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    proposal, waits = propose(url, script, (200, chat(GOOD), {}, 0))
    assert proposal.error is None and proposal.candidate == EDITED
    assert proposal.description == "llm: lower weight decay" and waits == []
    request = script.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "local-model" and "Research agenda" in request["body"]["messages"][1]["content"]


def test_rate_limits_are_waited_out_as_the_server_asks(server):
    script, url = server
    proposal, waits = propose(url, script, (429, b"slow down", {"Retry-After": "3"}, 0),
                              (503, b"busy", {}, 0), (200, chat(GOOD), {}, 0))
    assert proposal.candidate == EDITED and waits == [3.0, 0.02]  # Retry-After, then the doubled backoff


def test_a_timeout_is_retried(server):
    script, url = server
    proposal, waits = propose(url, script, (200, chat(GOOD), {}, 1.5), (200, chat(GOOD), {}, 0), timeout=0.5)
    assert proposal.candidate == EDITED and len(waits) == 1


@pytest.mark.parametrize("reply", [
    (200, b"not json at all", {}, 0),
    (200, json.dumps({"choices": []}).encode(), {}, 0),
    (200, chat(None), {}, 0),
    (200, chat("I think you should lower the learning rate."), {}, 0),
    (401, b"unauthorized", {}, 0),
])
def test_malformed_or_refused_replies_become_errors_not_exceptions(server, reply):
    script, url = server
    proposal, _ = propose(url, script, reply, retries=0)
    assert proposal.candidate is None and proposal.error
    assert "\n" not in proposal.error


def test_giving_up_after_the_retries(server):
    script, url = server
    proposal, waits = propose(url, script, *[(500, b"oops", {}, 0)] * 3, retries=2)
    assert proposal.candidate is None and "no reply after 3 attempts" in proposal.error and len(waits) == 2


@pytest.mark.slow
def test_the_loop_runs_what_the_endpoint_proposes(server, tmp_path, smoke_data):
    from kit.loop import run_loop

    script, url = server
    script.replies.append((200, chat(GOOD), {}, 0))
    run_loop(loop_config(tmp_path, iterations=2, policy="llm", llm_url=url, llm_model="local-model", noise_repeats=1,
                         early_stopping="same-progress"))
    ran = ledger_records(tmp_path / "run")
    assert [r.policy for r in ran] == ["noise-floor", "llm"]
    assert ran[1].description == "llm: lower weight decay" and "+WEIGHT_DECAY = 0.04" in ran[1].diff
    assert ran[1].status in ("ok", "pruned") and len(script.requests) == 1


@pytest.mark.parametrize("policy", ["llm", "cmaes-llm"])
def test_cli_asks_for_the_endpoint(tmp_path, policy, smoke_data):  # data made first: its progress goes to stderr
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kit", "loop", "--profile", "smoke", "--policy", policy,
                           "--run-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith(f"error: the {policy} policy needs llm_url: give --llm-url")
    assert done.stderr.count("\n") == 1
