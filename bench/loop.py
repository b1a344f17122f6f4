"""The agent's own time per experiment, part by part, against the budget; writes bench/loop.md.

    python bench/loop.py

Each part of an iteration that is not training is timed on the real objects the loop uses, on the
kit's real train.py: the proposal (observation, mask, policy forward, applying the edit), the gate,
the reward, a PPO update on a full rollout buffer, a durable ledger append, a git commit. The per-
experiment cost counts the PPO update at 1/ppo_every, since the loop updates once per ppo_every runs.
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit import edits, gate  # noqa: E402
from kit.ledger import Ledger, Record  # noqa: E402
from kit.loop import LoopConfig, _Git  # noqa: E402
from kit.memory import Experiment, Memory, code_hash  # noqa: E402
from kit.policy import State, make_policy  # noqa: E402
from kit.ppo import PPOConfig, compute_gae, ppo_step  # noqa: E402
from kit.reward import compute_reward  # noqa: E402

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
    policy = make_policy("ppo", len(catalog), observation().size, edits.knobs(source), seed=0)
    config = LoopConfig(run_dir=Path("unused"))
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.ppo.learning_rate, eps=1e-5)
    curve = [(t * 0.4, 3.0 - t * 0.01) for t in range(150)]

    def propose():
        state = State(source=source, catalog=catalog, mask=edits.edit_mask(source, catalog),
                      observation=observation().astype(np.float32), knobs=edits.knobs(source))
        proposal = policy.propose(state)
        candidate = edits.apply_edit(source, proposal.edit)
        return candidate, edits.unified_diff(source, candidate), code_hash(candidate)

    candidate, diff, digest = propose()
    n = config.ppo_every

    def ppo_update():
        obs = torch.tensor(np.stack([observation() for _ in range(n)]), dtype=torch.float32)
        masks = torch.tensor(np.stack([edits.edit_mask(source, catalog)] * n))
        with torch.no_grad():
            actions, logprobs, _, values = policy.get_action_and_value(obs, mask=masks)
        advantages, returns = compute_gae(torch.randn(n), values.flatten(), torch.zeros(n), torch.tensor(0.0),
                                          torch.tensor(0.0), config.ppo.gamma, config.ppo.gae_lambda)
        batch = {"b_obs": obs, "b_actions": actions, "b_logprobs": logprobs, "b_advantages": advantages,
                 "b_returns": returns, "b_values": values.flatten(), "b_masks": masks}
        ppo_step(policy, batch, optimizer, PPOConfig())

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "run")
        record = dict(iteration=1, policy="ppo", description="MATRIX_LR ×1.25", diff=diff, parent_commit="0" * 40,
                      commit=None, status="ok", reason="", val_bpb=2.6, reward=0.1, reward_parts={"accuracy": 0.1},
                      accepted=False, curve=curve, predictions=[], timings={}, policy_stats={}, fingerprint={},
                      peak_mem_mb=600.0, training_seconds=60.0, total_seconds=66.0, seed=1337, code_hash=digest)
        git = _Git(Path(tmp) / "repo")
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
