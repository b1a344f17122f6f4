"""The language-model policy and its prompt, offline: a tiny randomly initialized causal LM built from a config,
with a tokenizer trained here on the repository's own text (nothing is downloaded)."""

from pathlib import Path

import pytest
import torch

from kit import REPO_ROOT, edits
from kit.edits import EditError
from kit.memory import Experiment, Memory
from kit.policies import State
from kit.prompt import parse_completion, render_prompt

from ..helpers import ledger_records, loop_config, tell

BASELINE = (REPO_ROOT / "train.py").read_text()


@pytest.fixture(scope="module")
def tiny_lm():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([BASELINE, (REPO_ROOT / "program.md").read_text()], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


def make_policy(tiny_lm, **overrides):
    import copy

    from kit.policies.lm import LMPolicy, LMPolicyConfig

    model, tokenizer = tiny_lm
    config = LMPolicyConfig(model="tiny", max_new_tokens=24, device="cpu", ppo_every=2, **overrides)
    return LMPolicy(config, model=copy.deepcopy(model), tokenizer=tokenizer)


def memory_of(n: int) -> Memory:
    memory = Memory()
    for i in range(n):
        memory.add(Experiment(index=i + 1, code_hash=f"h{i}", description=f"MATRIX_LR ×1.{i:02d} and a long note "
                              "about why it might help the loss at the end of the budget", status="ok",
                              val_bpb=2.7 - 0.001 * i, reward=0.01 * i, accepted=i % 5 == 0))
    return memory


def state_for(source: str, memory: Memory) -> State:
    return State(source=source, catalog=[], mask=None, observation=None, knobs=edits.knobs(source), memory=memory)


def test_prompt_drops_old_memory_first_then_elides_train_py(tiny_lm):
    _, tokenizer = tiny_lm

    def count(text):
        return len(tokenizer(text)["input_ids"])

    memory = memory_of(32)
    full = render_prompt(BASELINE, memory, count, 10**6)
    assert full.recent_shown is None and not full.elided and "#    32" not in full.text and "   32 " in full.text
    # a little tighter: the oldest recent experiments go, the newest and the best stay, train.py stays whole
    tighter = render_prompt(BASELINE, memory, count, full.tokens - 200)
    assert tighter.tokens <= full.tokens - 200 and 0 < tighter.recent_shown < 32 and not tighter.elided
    assert "     32  " in tighter.text and BASELINE.rstrip() in tighter.text
    # much tighter: no recent experiments, then the longest definitions of train.py lose their bodies
    no_log = render_prompt(BASELINE, memory, count, 10**6).tokens - count(memory.render()) + count(memory.render(0))
    squeezed = render_prompt(BASELINE, memory, count, no_log - 400)
    assert squeezed.recent_shown == 0 and squeezed.elided and squeezed.tokens <= no_log - 400
    assert "MATRIX_LR = 0.02" in squeezed.text and "while training_time < TIME_BUDGET" in squeezed.text
    assert "lines elided to fit the context window" in squeezed.text
    with pytest.raises(ValueError, match="over the budget of 100"):
        render_prompt(BASELINE, memory, count, 100)


def test_completions_become_train_py_or_say_why_not():
    edited = edits.set_values(BASELINE, {"MATRIX_LR": 0.028})
    diff = edits.unified_diff(BASELINE, edited)
    source, text = parse_completion(f" raise the Muon LR\n\n```diff\n{diff}```\n", BASELINE)
    assert source == edited and text == "raise the Muon LR"
    assert parse_completion(f"whole file\n```python\n{edited}```", BASELINE)[0] == edited
    assert parse_completion(f"bare diff\n{diff}", BASELINE)[0] == edited
    for garbage in ("", "I would change the learning rate.", "```diff\n@@ nonsense @@\n```",
                    "```diff\n--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-no such line\n+x\n```"):
        with pytest.raises(EditError):
            parse_completion(garbage, BASELINE)


def test_garbage_completion_is_a_proposal_with_an_error(tiny_lm):
    policy = make_policy(tiny_lm, context_tokens=12000)
    proposal = policy.propose(state_for(BASELINE, memory_of(3)))
    assert proposal.candidate is None and "no ```diff block" in proposal.error  # a random LM writes noise
    assert proposal.tokens["completion"] and len(proposal.tokens["logprobs"]) == len(proposal.tokens["completion"])
    assert proposal.logprob < 0 and proposal.value == 0.0  # the value head starts at zero


def test_ppo_step_moves_only_adapters_lowers_the_loss_and_reports_kl(tiny_lm):
    policy = make_policy(tiny_lm, context_tokens=12000, update_epochs=1, learning_rate=5e-3)
    state = state_for(BASELINE, Memory())
    proposals = [policy.propose(state) for _ in range(2)]
    transitions = [{**p.tokens, "value": p.value, "reward": r} for p, r in zip(proposals, (1.0, -1.0), strict=True)]
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}

    def clipped_loss():
        with torch.no_grad():
            adv = torch.tensor([1.0, -1.0])
            return sum(float(policy._loss(torch.tensor(t["prompt"]), torch.tensor(t["completion"]),
                                          torch.tensor(t["logprobs"]), torch.tensor(t["logprobs"]), a,
                                          torch.tensor(t["reward"]))["policy_loss"])
                       for t, a in zip(transitions, adv, strict=True))

    loss_before = clipped_loss()
    stats = policy.update(transitions)
    assert clipped_loss() < loss_before
    moved = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("lora_" in n for n in moved), moved  # the base model is frozen
    assert {"losses/kl_ref", "losses/approx_kl", "losses/policy_loss", "losses/entropy"} <= set(stats)
    assert stats["losses/kl_ref"] >= 0
    policy.propose(state)  # after an update the adapters differ from the reference: KL is now positive
    again = policy.update(transitions)
    assert again["losses/kl_ref"] > 0


def test_it_learns_every_ppo_every_outcomes_and_checkpoints_round_trip(tiny_lm, tmp_path: Path):
    policy = make_policy(tiny_lm, context_tokens=12000)
    state = state_for(BASELINE, Memory())
    first = policy.propose(state)
    assert tell(policy, state, first, None, reward=0.5) == {} and len(policy.buffer) == 1
    stats = tell(policy, state, policy.propose(state), None, reward=-1.0)
    assert "losses/policy_loss" in stats and policy.buffer == []
    torch.save(policy.state_dict(), tmp_path / "lm.pt")
    restored = make_policy(tiny_lm, context_tokens=12000)
    restored.load_state_dict(torch.load(tmp_path / "lm.pt", weights_only=False))
    for (name, a), (_, b) in zip(policy.model.named_parameters(), restored.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert restored.proposals == policy.proposals


@pytest.mark.slow
def test_a_loop_step_with_the_lm_policy_rejects_its_garbage(tiny_lm, tmp_path: Path, smoke_data):
    from kit.loop import run_loop

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "tiny-lm")  # loaded back through from_pretrained, as a user's model would be
    tokenizer.save_pretrained(tmp_path / "tiny-lm")
    run_dir = tmp_path / "run"
    run_loop(loop_config(tmp_path, iterations=2, policy="lm", lm_model=str(tmp_path / "tiny-lm"), noise_repeats=1,
                         early_stopping="same-progress"))
    ran = ledger_records(run_dir)
    assert [r.policy for r in ran] == ["noise-floor", "lm"]
    lm = ran[1]
    assert lm.status == "rejected" and lm.reward < 0 and "rejected" in lm.reward_parts
    assert "no ```diff block" in lm.reason and lm.policy_stats["logprob"] < 0
    assert (run_dir / "policy.pt").exists()
