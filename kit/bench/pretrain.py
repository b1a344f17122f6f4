"""Pre-training the PPO policy to research: many research runs of the unchanged loop, each against a world drawn
from a prior, one policy carried from each run to the next; the shipped weights are what it ends with.

Owns: `PretrainConfig`, `draw_episode` (the prior: a development member of the synthetic family, built around a
baseline whose knobs were moved within their declared ranges, a training budget and a number of experiments, so
that what the policy learns is about research in general, not one world's answer), `pretrain` (the episodes in
order, each starting from the weights, optimizer and sampling generator the one before ended with, and ending with
kit.ppo.Rollout.finish: a research run is the episode), and writing the weights (kit/policies/pretrained.py).
Does not own: the loop (kit/loop.py), the worlds (kit/bench/family.py) or the network (kit/policies/operator.py).

It learns on LEARNING members only; `validate` runs the weights, PPO from scratch and the peers on VALIDATION
members, where pre-training's settings are chosen. Held out of both: every member the agents benchmark meets
(kit/bench/family.held_out_member) and the recorded cpu worlds (replay and tabular), so that both judge the weights
on worlds they never saw.
"""

from __future__ import annotations

import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kit import REPO_ROOT, edits
from kit.bench.agents import run_all, run_to_end
from kit.bench.comparison import World, measures, paired
from kit.bench.family import DEVELOPMENT, FamilyConfig, SyntheticFamily, value_at
from kit.ledger import Ledger
from kit.loop import POLICY_FILE, LoopConfig
from kit.policies import pretrained
from kit.policies.operator import OperatorPolicy
from kit.ppo import PPOConfig
from kit.reward import RewardConfig
from kit.run_state import NOISE_POLICY, runs_of
from kit.stopping import StopConditions

NOISE_REPEATS = 3  # the loop's default noise floor, as every benchmark run has it
LEARNING = range(DEVELOPMENT.start, DEVELOPMENT.start + 800)
"""The development members pre-training draws from; the rest of DEVELOPMENT judge its settings (validation)."""
VALIDATION = range(LEARNING.stop, DEVELOPMENT.stop)


@dataclass(frozen=True)
class PretrainConfig:
    episodes: int = 60
    """Research runs to learn from, one after the other (60 did as well on validation members as 100 with longer
    runs did, in a third of the time)."""
    seed: int = 0
    """Seed of the prior's draws and of the policy: the same seed makes the same weights."""
    experiments: tuple[int, int] = (40, 120)
    """Least and most agent experiments of an episode (drawn uniformly), so the policy meets runs of every length."""
    budgets: tuple[float, ...] = (30.0, 60.0, 120.0)
    """Training seconds of an episode's experiments, one drawn per episode."""
    moved: float = 0.3
    """Share of the baseline's numeric knobs an episode's start moves."""
    spread: float = 0.1
    """Standard deviation of such a move, in the knob's normalized [0, 1] coordinate."""
    noise_free: bool = True
    """Pay kept edits the world's noise-free gain (kit.reward.RewardConfig.noise_free), not the measured one."""

    def __post_init__(self) -> None:
        low, high = self.experiments
        if self.episodes < 1 or not 1 <= low <= high or not self.budgets or min(self.budgets) <= 0 \
                or not 0 <= self.moved <= 1 or not self.spread >= 0:
            raise ValueError(f"need episodes >= 1, 1 <= experiments[0] <= experiments[1], positive budgets, "
                             f"0 <= moved <= 1 and spread >= 0, got {self}")


@dataclass(frozen=True)
class Episode:
    """One research run of pre-training: the world, where it starts, its budget and its length."""

    index: int
    member: int  # of the synthetic family, always a development member
    start: str  # the train.py the run starts from
    budget: float
    experiments: int


@dataclass(frozen=True)
class EpisodeSummary:
    index: int
    member: int
    experiments: int
    budget: float
    start_worth: float  # the world's noise-free val_bpb of the start
    end_worth: float  # the same of the train.py the run ended with
    gain: float  # 100 × log(noise floor's mean / the final incumbent's mean): what the rewards added up to
    explained_variance: float  # the critic's, averaged over the episode's updates
    seconds: float


def draw_episode(index: int, baseline: str, config: PretrainConfig) -> Episode:
    """Episode `index` of the prior: a development member built around a start that moves some of the baseline's
    numeric knobs a little (learning rates only downwards of the top third of their range, so the start trains)."""
    rng = np.random.default_rng([0x9E7, config.seed, index])
    member = int(rng.integers(LEARNING.start, LEARNING.stop))
    values = {}
    for k in edits.knobs(baseline):
        if k.low is None or k.kind not in ("int", "float") or not k.high > k.low or rng.random() >= config.moved:
            continue
        u = k.normalized(k.value) + config.spread * float(rng.standard_normal())
        values[k.name] = value_at(k, min(u, 0.66) if k.name.endswith("_LR") else u)
    start = edits.set_values(baseline, values) if values else baseline
    budget = float(config.budgets[int(rng.integers(len(config.budgets)))])
    low, high = config.experiments
    return Episode(index, member, start, budget, int(rng.integers(low, high + 1)))


def pretrain(config: PretrainConfig, out: Path = pretrained.WEIGHTS, baseline: str | None = None,
             ppo: PPOConfig = PPOConfig(), log: Callable[[str], None] = print) -> list[EpisodeSummary]:
    """Learn from config.episodes research runs, in order, and write the weights to out; the summaries of the runs.

    The weights expect the kit's train.py's knobs and catalog (the starts move values, never ranges)."""
    baseline = baseline if baseline is not None else (REPO_ROOT / "train.py").read_text()
    started, checkpoint, summaries = time.perf_counter(), None, []
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # git and the ledger write many small files
    with tempfile.TemporaryDirectory(prefix="pretrain-", dir=scratch) as work:
        for index in range(config.episodes):
            episode = draw_episode(index, baseline, config)
            checkpoint, summary = run_episode(episode, checkpoint, Path(work), config.seed, ppo,
                                              RewardConfig(noise_free=config.noise_free))
            summaries.append(summary)
            recent = summaries[-20:]
            log(f"episode {index + 1}/{config.episodes}: member {episode.member}, {episode.experiments} experiments "
                f"of {episode.budget:g} s: noise-free {summary.start_worth:.4f} -> {summary.end_worth:.4f}, "
                f"gain {summary.gain:.2f} (last 20: {statistics.fmean(s.gain for s in recent):.2f}); explained "
                f"variance {summary.explained_variance:.2f} ({summary.seconds:.0f} s)")
    policy = _policy_of(checkpoint, baseline, ppo)
    about = {"episodes": config.episodes, "config": asdict(config), "seconds": round(time.perf_counter() - started),
             "machine": f"{platform.machine()}, torch {torch.__version__}", "reward": RewardConfig().kind,
             "experiments": sum(s.experiments for s in summaries)}
    catalog, knobs = edits.build_catalog(baseline), edits.knobs(baseline)
    pretrained.save(out, policy.parameters_to_save(),
                    pretrained.signature(knobs, catalog, policy.observation_size, RewardConfig().kind), about)
    return summaries


def run_episode(episode: Episode, checkpoint: dict | None, work: Path, seed: int, ppo: PPOConfig,
                reward: RewardConfig) -> tuple[dict, EpisodeSummary]:
    """One research run of the loop from the policy in checkpoint (from scratch when None), then the episode's end
    (one last update with nothing to bootstrap from); the policy's checkpoint after it, and what the run did."""
    started = time.perf_counter()
    run_dir = work / f"episode-{episode.index}"
    run_dir.mkdir(parents=True)
    if checkpoint is not None:
        torch.save(checkpoint, run_dir / POLICY_FILE)  # the loop resumes the policy from it
    train_py = run_dir / "start.py"
    train_py.write_text(episode.start)
    world = SyntheticFamily(episode.start, FamilyConfig(member=episode.member, budget=episode.budget))
    config = LoopConfig(run_dir=run_dir, profile="smoke", policy="ppo", seed=seed,
                        budget=episode.budget, train_py=train_py, from_scratch=True, ppo=ppo, reward=reward,
                        noise_repeats=NOISE_REPEATS, mirror=False,
                        stop=StopConditions(iterations=episode.experiments + NOISE_REPEATS))
    run_to_end(config, world)
    saved = torch.load(run_dir / POLICY_FILE, weights_only=False)
    policy = _policy_of(saved, episode.start, ppo)
    policy.rollout.finish()
    policy.forget()  # the next run starts with no memory of its edits, as a run from the shipped weights does
    with Ledger(run_dir, readonly=True) as ledger:
        records = ledger.records()
    kept = [r for r in records if r.accepted]
    noise = [r for r in records if r.policy == NOISE_POLICY]
    gain = 100 * math.log(statistics.fmean(runs_of(records, noise[0].code_hash))
                          / statistics.fmean(runs_of(records, kept[-1].code_hash))) if kept and noise else 0.0
    variances = [r.policy_stats["losses/explained_variance"] for r in records
                 if math.isfinite(r.policy_stats.get("losses/explained_variance", math.nan))]
    final = (run_dir / "repo" / "train.py").read_text()
    summary = EpisodeSummary(episode.index, episode.member, episode.experiments, episode.budget,
                             world.expected_bpb(episode.start), world.expected_bpb(final), gain,
                             statistics.fmean(variances) if variances else math.nan,
                             time.perf_counter() - started)
    return policy.checkpoint(), summary


def _policy_of(checkpoint: dict, source: str, ppo: PPOConfig) -> OperatorPolicy:
    """The PPO policy a loop on source builds, holding checkpoint's weights, optimizer and buffer."""
    catalog = edits.build_catalog(source)
    names = [k.name for k in edits.knobs(source)]
    observation_size = checkpoint["policy"]["critic.0.weight"].shape[1]
    features, knob_index = edits.edit_features(source, catalog, names)
    policy = OperatorPolicy(observation_size, len(catalog), edit_features=features, edit_knobs=knob_index, ppo=ppo)
    policy.restore(checkpoint)
    return policy


VALIDATION_POLICIES = ("ppo", "ppo-scratch", "greedy", "tpe", "cmaes")


def validate(seeds: int, experiments: int, baseline: str | None = None, jobs: int = 1,
             policies: tuple[str, ...] = VALIDATION_POLICIES, log: Callable[[str], None] = print) -> World:
    """The shipped weights (`ppo`) against PPO from scratch and the peers on validation members (never drawn for
    pre-training, nor met by the agents benchmark), seed i on member VALIDATION.start + i: how settings of the
    pre-training are judged without touching the benchmark's held-out worlds."""
    baseline = baseline if baseline is not None else (REPO_ROOT / "train.py").read_text()
    if seeds > len(VALIDATION):
        raise ValueError(f"there are {len(VALIDATION)} validation members, got {seeds=}")

    def world(seed: int) -> SyntheticFamily:
        return SyntheticFamily(baseline, FamilyConfig(member=VALIDATION.start + seed))

    runs = run_all(list(policies), seeds, world, experiments, FamilyConfig().budget, log=log, jobs=jobs)
    return World("validation", f"development members {VALIDATION.start}–{VALIDATION.start + seeds - 1}", runs)


def validation_table(world: World) -> str:
    """Median of each measure per policy, and `ppo` against each other policy (paired, one-sided, Holm)."""
    chosen = {name: m for name, m in measures(world).items() if not name.startswith("kept, at")}
    rows = ["| policy | " + " | ".join(chosen) + " |", "|---" * (len(chosen) + 1) + "|"]
    for policy in world.policies:
        rows.append(f"| {policy} | " + " | ".join(
            f"{float(np.median([m(t) for t in world.of(policy)])):.4f}" for m in chosen.values()) + " |")
    others = [p for p in world.policies if p != "ppo"]
    rows += ["", "| ppo − other, median paired difference (p, Holm) | " + " | ".join(chosen) + " |",
             "|---" * (len(chosen) + 1) + "|"]
    tests = {name: {q.other: q for q in paired(world, m, "ppo", others)} for name, m in chosen.items()}
    for other in others:
        rows.append(f"| ppo − {other} | " + " | ".join(
            f"{tests[name][other].difference:+.4f} ({tests[name][other].p_holm:.2g})" for name in chosen) + " |")
    return "\n".join(rows)


def write_report(summaries: list[EpisodeSummary], out: Path, header: str, block: int = 20,
                 validation: World | None = None) -> Path:
    """bench/pretrain.md: how the runs went as the policy learned, a block of episodes per row."""
    rows = ["| episodes | experiments | noise-free start | noise-free end | gain (100 × log) | critic's explained "
            "variance |", "|---|---|---|---|---|---|"]
    for first in range(0, len(summaries), block):
        part = summaries[first:first + block]
        variances = [s.explained_variance for s in part if math.isfinite(s.explained_variance)]
        rows.append(f"| {first + 1}–{first + len(part)} | {statistics.fmean(s.experiments for s in part):.0f} | "
                    f"{statistics.fmean(s.start_worth for s in part):.4f} | "
                    f"{statistics.fmean(s.end_worth for s in part):.4f} | "
                    f"{statistics.fmean(s.gain for s in part):.2f} | "
                    f"{statistics.fmean(variances) if variances else math.nan:.2f} |")
    text = "\n\n".join(["# Pre-training the PPO policy", header,
                         "Each episode is one research run of the unchanged loop on a development member of the "
                         "synthetic family (kit/bench/family.py) built around a start whose knobs were moved a little, "
                         "with its own budget and length; the policy goes from each run to the next. Means per block "
                         "of episodes:", "\n".join(rows)]
                        + (["## The weights on validation members",
                            f"{len(validation.of('ppo'))} seeds × {validation.experiments} experiments, seed i on "
                            f"development member {VALIDATION.start} + i (never drawn for pre-training, nor met by "
                            "the agents benchmark), through the unchanged loop as in bench/agents.md: the noise-free "
                            "val_bpb of the train.py kept after so many experiments, and the final one re-run under "
                            "fresh seeds. `ppo` starts from these weights and goes on learning; `ppo-scratch` from "
                            "random ones.", validation_table(validation)] if validation is not None else []))
    Path(out).write_text(text + "\n")
    return Path(out)
