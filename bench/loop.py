"""The agent's own time per experiment, part by part, against the budget; writes bench/loop.md.

    python bench/loop.py

Each part of an iteration that is not training is timed on the real objects the loop uses, on the
kit's real train.py: the proposal (observation, mask, policy forward, applying the edit), the gate,
the reward, a PPO update on a full rollout buffer, a durable ledger append, taking the record into the
loop's state, a git commit. The per-
experiment cost counts the PPO update at 1/num_steps, since the loop updates once per num_steps runs.
"""

from __future__ import annotations

import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kit import REPO_ROOT as REPO
from kit import edits, gate
from kit.ledger import Ledger, Record
from kit.memory import Experiment, Memory, code_hash
from kit.policies import Setup, State, make_policy
from kit.ppo import PPOConfig
from kit.repo import TrainRepo
from kit.reward import compute_reward
from kit.run_state import RunState

REPEATS = 30


def median_seconds(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    source = (REPO / "train.py").read_text()
    catalog = edits.build_catalog(source)
    names = [k.name for k in edits.knobs(source)]
    memory = Memory()
    rng = np.random.default_rng(0)
    for i in range(40):  # a memory as full as it gets: 32 recent + 5 best
        memory.add(Experiment(index=i, code_hash=f"{i:064x}", description=f"edit {i}", status="ok",
                              val_bpb=float(2.5 + rng.random()), reward=float(rng.normal()), accepted=False))
    observation = lambda: np.concatenate([edits.config_vector(source, names), memory.observation()])  # noqa: E731
    policy = make_policy("ppo", Setup(catalog=catalog, knobs=edits.knobs(source), observation_size=observation().size,
                                      edit_features=edits.edit_features(source, catalog, names), ppo=PPOConfig(),
                                      from_scratch=True))
    curve = [(t * 0.4, 3.0 - t * 0.01) for t in range(150)]

    def state() -> State:
        return State(source=source, catalog=catalog, mask=edits.edit_mask(source, catalog),
                     observation=observation().astype(np.float32), knobs=edits.knobs(source))

    def propose():
        proposal = policy.propose(state())
        candidate = edits.apply_edit(source, proposal.edit)
        return candidate, edits.unified_diff(source, candidate), code_hash(candidate)

    candidate, diff, digest = propose()
    n = policy.rollout.cfg.num_steps
    seen = state()
    transitions = [(policy.propose(seen), float(rng.normal())) for _ in range(n)]

    def ppo_update():  # the rollout as the loop fills it: n transitions, the last one triggers the update
        for proposal, reward in transitions:
            policy.rollout.add(seen.observation, proposal.action, proposal.logprob, proposal.value, reward, seen.mask,
                               next_obs=observation)

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "run")
        record = dict(iteration=1, policy="ppo", description="MATRIX_LR ×1.25", diff=diff, parent_commit="0" * 40,
                      commit=None, status="ok", reason="", val_bpb=2.6, reward=0.1, reward_parts={"accuracy": 0.1},
                      accepted=False, curve=curve, predictions=[], timings={}, policy_stats={}, fingerprint={},
                      peak_mem_mb=600.0, training_seconds=60.0, total_seconds=66.0, seed=1337, code_hash=digest)
        run_state, iterations = RunState(), itertools.count(1)
        git = TrainRepo(Path(tmp) / "repo")
        git.init(source)
        versions = [source, candidate]

        def commit():  # alternate the two versions so every commit has a change
            versions.reverse()
            git.commit(versions[0], "edit")
        parts = {
            "proposal (observation, mask, policy, edit, diff, hash)": median_seconds(propose),
            "gate": median_seconds(lambda: gate.check_source(candidate)),
            "reward": median_seconds(lambda: compute_reward("ok", 2.6, 2.7, 66.0, 60.0, curve)),
            f"PPO update ({n} transitions) / {n}": median_seconds(ppo_update, 10) / n,
            "ledger append (durable)": median_seconds(lambda: ledger.append(Record(**record))),
            "the loop's state takes the record in": median_seconds(
                lambda: run_state.add(Record(**{**record, "iteration": next(iterations)}), candidate)),
            "git commit (accepted edits only)": median_seconds(commit, 10),
        }
        ledger.close()
    total = sum(parts.values())
    lines = ["# The agent's own time per experiment", "",
             f"Measured by `python bench/loop.py` in one run on {platform.machine()}, {torch.get_num_threads()} torch "
             f"threads, torch {torch.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}: "
             f"medians of {REPEATS} repeats on the kit's train.py ({len(catalog)} catalog edits, {len(names)} knobs).",
             "", "| part | ms | % of a 60 s budget (`cpu`) | % of a 300 s budget (`gpu`) |", "|---|---:|---:|---:|"]
    for name, seconds in parts.items():
        lines.append(f"| {name} | {1000 * seconds:.2f} | {100 * seconds / 60:.3f} | {100 * seconds / 300:.4f} |")
    lines.append(f"| **total** | **{1000 * total:.2f}** | **{100 * total / 60:.3f}** | **{100 * total / 300:.4f}** |")
    lines += ["", "Target: at most 0.5 % of the budget. The git commit is paid only when an edit is kept; it is "
              "counted in full here."]
    (REPO / "bench" / "loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
