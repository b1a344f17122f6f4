"""The research loop: propose an edit of train.py, run it, score it, keep it or roll it back, learn, record.

Owns: the run directory and the order of things in it. ResearchLoop.run reads as the loop's steps; each step is
one helper, and the work is delegated: the state rebuilt from the ledger (kit/run_state.py), what a catalog policy
edits next (kit/frontier.py), the policy (kit/policies/), running one experiment (kit/harness.py, or a stand-in
world), the reward (kit/reward.py), the keep rule (kit/acceptance.py through the run state), git
(kit/repo.py), when to stop (kit/stopping.py) and the report (kit/report.py).
Does not own: any of those; widgets (the optional on_event callback feeds them).

    RUN_DIR/ledger.sqlite      every proposal and run (the source of truth on resume)
    RUN_DIR/repo/train.py      train.py on branch autoresearch; a kept edit is a commit
    RUN_DIR/experiments/NNNNN  one harness run directory per experiment
    RUN_DIR/policy.pt          policy weights, optimizer and rollout buffer
    RUN_DIR/candidate.py       the near miss being re-run under new seeds, while there is one
    RUN_DIR/STOP, RUN_DIR/HOLD     create STOP to stop after the running experiment; while HOLD exists no new
                                   experiment starts (the dashboard's pause button)
    RUN_DIR/PAUSED             why the loop stopped itself after failures in a row
    RUN_DIR/loop.json          running (and where), or how and why it ended (kit.stopping.LoopStatus)
    RUN_DIR/optuna.sqlite3     every record as a trial of an Optuna study, for optuna-dashboard (kit/mirror.py)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kit import REPO_ROOT, edits, seed_check
from kit.acceptance import Verdict
from kit.frontier import Frontier
from kit.harness import run_experiment
from kit.ledger import Ledger, Record
from kit.machine import busiest, foreign_gpu_processes, wait_until_quiet
from kit.memory import code_hash
from kit.mirror import Mirror
from kit.policies import REGISTRY, Outcome, Proposal, Setup, State, make_policy
from kit.ppo import PPOConfig
from kit.predictor import RULES, EarlyStopper, make_rule
from kit.repo import TrainRepo
from kit.report import write_report
from kit.results import (
    Environment,
    HarnessConfig,
    RunResult,
    Status,
    contention_limit_default,
    environment,
    fingerprint_differs,
    pace_limit_default,
)
from kit.reward import Reward, RewardConfig, compute_reward
from kit.run_state import CONFIRM_POLICY, NOISE_POLICY, NearMiss, RunState
from kit.stopping import (
    STOP_FILE,
    LoopStatus,
    StopConditions,
    first_ctrl_c_calls,
    stop_requested,
    wait_while_held,
    write_status,
)

SITUATION_NAMES = (
    "noise",  # tanh(NOISE_SCALE * the noise floor's standard deviation / the incumbent's mean): how loud the world is
    "left",  # the share of the run still to go under its iteration, hour or GPU-hour limit (1 without one)
)
NOISE_SCALE = 100.0  # a noise floor of 0.5 % of val_bpb reads about 0.46
CANDIDATE_FILE = "candidate.py"
PAUSED_FILE = "PAUSED"
POLICY_FILE = "policy.pt"
RUNNING_FILE = "running.json"  # what ran on several workers at once (kit/parallel.py)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:500]


def print_line(text: str) -> None:
    """Where the loop's lines go by default: standard output, at once (a log tailed overnight sees each)."""
    print(text, flush=True)


class ResumeError(ValueError):
    """A run directory the loop cannot go on with as it is; the message says what to do."""


@dataclass(frozen=True)
class LoopConfig:
    run_dir: Path
    """Where everything of this run lives; the same directory resumes the run."""
    profile: str = "cpu"
    """Profile of prepare.py: smoke, cpu or gpu."""
    policy: str = "ppo"
    """A policy of kit.policies.REGISTRY: ppo, random, greedy, tpe, cmaes, gp, cmaes-llm, lm or llm."""
    stop: StopConditions = field(default_factory=StopConditions)
    """When to stop: iterations, hours, GPU-hours, convergence."""
    seed: int = 0
    """Seed of the policy; experiments themselves use the frozen side's seed."""
    budget: float | None = None
    """Training seconds per experiment; None takes the profile's."""
    train_py: Path = REPO_ROOT / "train.py"
    """The baseline a new run directory starts from."""
    noise_repeats: int = 3
    """Baseline runs with different seeds that measure the noise floor before the agent starts."""
    noise_sigmas: float = 2.0
    """An edit is kept only if the mean of its runs beats the incumbent's mean by this many noise standard
    deviations (scaled by the runs on each side: kit/acceptance.py)."""
    confirm_runs: int = 2
    """Runs beyond the first, each under a new seed, that a near miss gets before it is dropped; 0 judges every
    edit on its one run."""
    max_failures: int = 3
    """Failures in a row that pause the loop."""
    contention_limit: float = field(default_factory=contention_limit_default)
    """Share of a run's cores other processes may use while it trains; above it the run is contended: recorded,
    not judged, and run again once the machine is quiet (kit/machine.py measures it). Default:
    $AUTORESEARCH_CONTENTION_LIMIT, else 0.10; 1 turns the check off."""
    contended_reruns: int = 2
    """Times a contended experiment is run again before the loop pauses for the machine to be freed."""
    quiet_wait: float = 300.0
    """Seconds the loop waits for a busy machine to become quiet before it runs a contended experiment again."""
    pace_limit: float = field(default_factory=pace_limit_default)
    """A run of a train.py that ran before (a noise-floor seed, a near miss's re-run) that made fewer than this share
    of the steps per second its earlier runs made is contended too: something slowed the machine (a shared GPU, a
    throttled or shared core) that the share of its cores does not show. Default: $AUTORESEARCH_PACE_LIMIT, else
    0.75; 0 turns the check off."""
    sandbox: str = "auto"
    """Sandbox backend of the harness: auto, bwrap, unshare or none."""
    early_stopping: str = "same-progress"
    """Stop rule of kit.predictor asked while a run trains (same-progress, power-law, linear, calibrated), or none.
    same-progress is the one bench/early_stopping.md found safe on real curves; power-law is the source's."""
    lm_model: str | None = None
    """The lm policy's causal LM: a local path or a hub name."""
    llm_url: str | None = None
    """The llm proposer's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."""
    llm_model: str | None = None
    """The model name the llm endpoint serves."""
    llm_share: float = 0.3
    """The cmaes-llm hybrid: the share of CMA-ES's proposals the LLM at the endpoint may override."""
    from_scratch: bool = False
    """ppo: start from random weights instead of the shipped pre-trained ones (kit/policies/pretrained.py)."""
    mirror: bool = True
    """Keep RUN_DIR/optuna.sqlite3, the Optuna study optuna-dashboard shows (kit/mirror.py), in step with every
    record. It costs about 0.2 s a record: nothing beside a real run, much beside a stand-in world's millisecond, so
    the benchmarks turn it off (`python -m kit dashboard` rebuilds it from the ledger whenever it is wanted)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.policy not in REGISTRY:
            raise ValueError(f"policy must be one of {', '.join(REGISTRY)}, got {self.policy=}")
        for name in REGISTRY[self.policy].needs:
            if not getattr(self, name):
                raise ValueError(f"the {self.policy} policy needs {name}: give --{name.replace('_', '-')}")
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"budget must be positive, got {self.budget=}")
        if not 0 <= self.llm_share <= 1:
            raise ValueError(f"llm_share is a share of the proposals, in [0, 1], got {self.llm_share=}")
        if self.llm_url is not None and not self.llm_url.startswith(("http://", "https://")):
            raise ValueError(f"llm_url must start with http:// or https://, got {self.llm_url!r}")
        if self.early_stopping != "none" and self.early_stopping not in RULES:
            raise ValueError(f"early_stopping must be none or one of {', '.join(RULES)}, got {self.early_stopping=}")
        if not (0 < self.contention_limit <= 1 and 0 <= self.pace_limit < 1) or self.contended_reruns < 0 or \
                not self.quiet_wait >= 0:  # written so that NaN fails too
            raise ValueError(f"need 0 < contention_limit <= 1, 0 <= pace_limit < 1, contended_reruns >= 0 and "
                             f"quiet_wait >= 0, got {self.contention_limit=}, {self.pace_limit=}, "
                             f"{self.contended_reruns=}, {self.quiet_wait=}")
        if self.noise_repeats < 1 or self.max_failures < 1 or self.confirm_runs < 0:
            raise ValueError(f"need noise_repeats, max_failures >= 1 and confirm_runs >= 0, got "
                             f"{self.noise_repeats=}, {self.max_failures=}, {self.confirm_runs=}")


@dataclass(frozen=True)
class Decision:
    """What became of a run: the verdict, the commit if it was kept, and the commit it was measured against."""

    verdict: Verdict
    commit: str | None
    parent: str | None


def new_key() -> str:
    """A name for a job, unique across drivers and resumes."""
    return uuid.uuid4().hex[:12]


@dataclass
class Job:
    """One experiment the loop decided to run (or an idea it settles without a run), and what judging it needs."""

    kind: str  # NOISE_POLICY, CONFIRM_POLICY, or the policy's name for its own idea (the ledger's policy column)
    source: str  # the train.py to run
    seed: int | None  # the frozen side's seed for it (None: the profile's)
    description: str
    diff: str  # against the incumbent when it was proposed
    state: State | None = None  # an idea: what the policy saw
    proposal: Proposal | None = None  # an idea: what the policy said
    error: str | None = None  # an idea no train.py could be made of
    duplicate: bool = False  # an idea whose code ran (or runs) already
    agent_seconds: float = 0.0  # what proposing it took
    key: str = field(default_factory=new_key)  # names it until it is recorded


class ResearchLoop:
    """One run directory's loop. `run()` returns why it stopped, in one line."""

    runs_several = False  # several experiments at once (kit/parallel.py)

    def __init__(self, config: LoopConfig, on_event: Callable[[dict], None] | None = None,
                 environment: Environment = run_experiment, say: Callable[[str], None] = print_line):
        """on_event: called with every event (a record, a progress point, a hold, the stop); say: where the loop's
        lines go (standard output; a notebook's dashboard shows them under itself instead)."""
        import prepare

        self.config, self.on_event, self.say = config, on_event, say
        self.environment = environment  # the real harness, or a synthetic or replayed world (kit/bench/)
        if config.reward.noise_free and not hasattr(environment, "expected_bpb"):
            raise ValueError("the noise-free reward needs a simulated world that knows each train.py's noise-free "
                             "val_bpb (kit/bench/family.py); a real run measures: leave RewardConfig.noise_free off")
        self.budget = float(config.budget or prepare.get_profile(config.profile).time_budget)
        self.frozen_seed = prepare.get_profile(config.profile).seed
        self.run_dir = Path(config.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir)
        self.repo = TrainRepo(self.run_dir / "repo")
        self.interrupted = False
        self.stopped_by_person = False  # a STOP file or Ctrl-C ended the run, not a limit
        self.contended: str | None = None  # why the loop pauses: its runs could not get the machine to themselves
        self.started = time.monotonic()  # run() sets it again: the hours limit counts this invocation
        self.unsettled: dict[str, Outcome] = {}  # code hash -> a near miss's proposal, told once its re-runs settle it
        self.mirror: Mirror | None = None
        try:
            self._resume()
        except BaseException as error:  # this loop holds the ledger, so loop.json is its to write
            write_status(self.run_dir, LoopStatus.running(config.stop).ended_as("failed", _one_line(error)))
            self.ledger.close()
            raise

    def _resume(self) -> None:
        """Everything from the ledger, the one source of truth: git is moved to the last kept commit, and the state
        is the ledger's records taken in one by one, as they were when they were new."""
        records = self.ledger.records()
        if not self.repo.exists():
            self.ledger.set_meta("baseline_commit", self.repo.init(Path(self.config.train_py).read_text()))
        kept = [r for r in records if r.accepted and r.commit]
        self.repo.reset(kept[-1].commit if kept else self.ledger.get_meta("baseline_commit"))
        self.source = self.repo.source()
        self.catalog = edits.build_catalog(self.source)
        self.knob_names = [k.name for k in edits.knobs(self.source)]
        rule = None if self.config.early_stopping == "none" else make_rule(self.config.early_stopping, self.budget)
        self.state = RunState.rebuild(records, self.repo.source_of, noise_sigmas=self.config.noise_sigmas,
                                      max_runs=1 + self.config.confirm_runs, stop_rule=rule)
        self.state.failures = 0  # a resume lifts a pause: the strikes start over
        self.policy = make_policy(self.config.policy, Setup(
            catalog=self.catalog, knobs=edits.knobs(self.source), observation_size=self._observation(self.source).size,
            seed=self.config.seed, edit_features=edits.edit_features(self.source, self.catalog, self.knob_names),
            ppo=self.config.ppo, reward=self.config.reward.kind,
            from_scratch=self.config.from_scratch or (self.run_dir / POLICY_FILE).exists(),  # a resume has its own
            lm_model=self.config.lm_model, llm_url=self.config.llm_url,
            llm_model=self.config.llm_model, llm_share=self.config.llm_share))
        self.frontier = Frontier(self.catalog)
        self._check_environment()
        self._load_policy()
        if self.config.mirror:
            self._mirror(records)
        running = self.run_dir / RUNNING_FILE
        if running.exists() and not self.runs_several:
            running.unlink()  # a loop with one worker proposes afresh
            self.say(f"{running} listed experiments of a loop with several workers that did not finish; they are not "
                     "run again with one worker (give --workers N for that)")
        paused = self.run_dir / PAUSED_FILE
        if paused.exists():
            self.say(f"resuming after a pause ({paused.read_text().strip()})")
            paused.unlink()

    # the loop ---------------------------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until a stop condition, a stop or a pause; write the report; return why it stopped. RUN_DIR/loop.json
        says it runs meanwhile, and then how it ended."""
        self.started, reason, ended = time.monotonic(), None, "failed"
        status = LoopStatus.running(self.config.stop)
        write_status(self.run_dir, status)
        with first_ctrl_c_calls(self._on_ctrl_c):
            try:
                while reason is None:
                    reason = self._turn()
                ended = "paused" if (self.run_dir / PAUSED_FILE).exists() else \
                    "stopped" if self.stopped_by_person else "finished"
            except KeyboardInterrupt:
                ended, reason = "stopped", "aborted by a second Ctrl-C (the running experiment is not recorded)"
                raise
            except BaseException as error:
                reason = _one_line(error)
                raise
            finally:
                write_status(self.run_dir, status.ended_as(ended, reason))  # before the report, which says it
                self._write_report()
        self._emit({"event": "stopped", "state": ended, "reason": reason})
        return reason

    def _turn(self) -> str | None:
        """One turn of the loop; why to stop, or None to go on."""
        wait_while_held(self.run_dir, lambda: self.interrupted, self._on_hold)
        # 1. stop when a limit, the termination oracle, the stop file or Ctrl-C says so
        if reason := self._stop_reason():
            return reason
        # 2. the next experiment: the noise floor first, then a near miss's re-run, else a new idea (settled at once
        # when it cannot or need not run)
        job = self._next_job()
        # 3. run it (a contended run again, once the machine is quiet) and judge it
        if job is not None and (measured := self._experiment(job)) is not None:
            self._finish(job, *measured)
        # 4. pause after failures in a row: train.py or the machine needs a person
        return self._pause_reason()

    def _next_job(self) -> Job | None:
        """What to run next: the noise floor first, then a near miss's re-run, else a new idea of the policy (None when
        that idea was settled without a run: a duplicate, or no train.py could be made of it)."""
        if self.state.noise_runs < self.config.noise_repeats:
            return self._noise_job(self.state.noise_runs)
        if self.state.near_miss is not None:
            return self._confirm_job(self.state.near_miss)
        return self._idea_job()

    def _noise_job(self, index: int) -> Job:
        """The baseline again, with another seed each time: how much val_bpb moves when nothing changes. The first
        (seed offset 0, the frozen seed every agent run uses) becomes the incumbent; the others join its mean."""
        return Job(NOISE_POLICY, self.source, self.frozen_seed + index, "baseline", "")

    def _confirm_job(self, near: NearMiss) -> Job:
        """The near miss once more under the next seed, run whole (no stop rule: the run counts in its mean)."""
        return Job(CONFIRM_POLICY, near.source, self.frozen_seed + len(near.values), near.description, near.diff)

    def _idea_job(self) -> Job | None:
        """One idea of the policy, proposed and made into a train.py; recorded at once (and None returned) when it is
        a duplicate of an experiment run or running, or no train.py could be made of it."""
        timer = time.perf_counter()
        # 1. what to edit: the incumbent, or (for a catalog policy whose edits of it are used up) the best not kept
        base, base_description, mask = self._base()
        state = State(source=base, catalog=self.catalog, mask=mask, observation=self._observation(base),
                      knobs=edits.knobs(base), memory=self.state.memory, incumbent=self.state.incumbent_mean)
        # 2. the policy proposes; the proposal becomes a train.py, or the reason there is none
        proposal = self.policy.propose(state)
        candidate, error = self._candidate(proposal, base)
        description = proposal.description + (f", on top of {base_description}" if base_description else "")
        job = Job(self.config.policy, candidate, None, description, edits.unified_diff(self.source, candidate),
                  state=state, proposal=proposal, error=error)
        digest = code_hash(candidate)
        job.duplicate = error is None and (self.state.memory.is_duplicate(digest) or digest in self._running())
        job.agent_seconds = time.perf_counter() - timer
        if error is None and not job.duplicate:
            return job
        self._finish(job, RunResult.not_run(error or "duplicate of an experiment already run"), [], None)
        return None

    def _finish(self, job: Job, result: RunResult, predictions: list, predicted: float | None) -> None:
        """Judge a run that ended (or an idea that was never run), tell the policy, record it. Its diff is taken
        against the incumbent it is judged against (with several workers another may have been kept meanwhile)."""
        if job.kind != NOISE_POLICY:
            job = dataclasses.replace(job, diff=edits.unified_diff(self.source, job.source))
        if job.kind == NOISE_POLICY:
            self._finish_noise(job, result)
        elif job.kind == CONFIRM_POLICY:
            self._finish_confirm(job, result)
        else:
            self._finish_idea(job, result, predictions, predicted)

    def _finish_noise(self, job: Job, result: RunResult) -> None:
        decision = self._decide(NOISE_POLICY, result, job.source, "baseline")
        self._witness(job.source, result)
        self._record(result, decision, job, description=f"baseline (noise floor, seed {job.seed})",
                     reward=Reward(0.0, {}), stats={})

    def _finish_confirm(self, job: Job, result: RunResult) -> None:
        """A near miss's re-run: kept when the mean of its runs clears the bar, dropped when it cannot any more."""
        digest = code_hash(job.source)
        near = self.state.near_misses.get(digest)
        earlier = near.values if near is not None else []
        if result.status is Status.OK and (why := self._seed_ignored(result, job.source)):
            result = dataclasses.replace(result, status=Status.TAMPERED, val_bpb=None, reason=why)
        incumbent = self.source
        decision = self._decide(CONFIRM_POLICY, result, job.source, job.description)
        self._witness(job.source, result)
        values = earlier + ([result.val_bpb] if result.status is Status.OK else [])
        mean = sum(values) / len(values) if values else float("nan")
        reward = self._reward(result, decision, values, (incumbent, job.source), rerun=True)
        stats = self._settle(digest, decision, reward)
        self._record(result, decision, job,
                     description=f"{job.description} (run {len(values)} of at most {1 + self.config.confirm_runs}, "
                                 f"seed {job.seed}; mean {mean:.6f})", reward=reward, stats=stats)

    def _finish_idea(self, job: Job, result: RunResult, predictions: list, predicted: float | None) -> None:
        timer = time.perf_counter()
        ran = job.error is None and not job.duplicate
        # 4. keep it (a commit), run it again (a near miss) or drop it, and score it
        incumbent = self.source
        decision = self._decide(job.kind, result, job.source, job.description)
        if ran:
            reward = self._reward(result, decision, [result.val_bpb], (incumbent, job.source), predicted=predicted)
        else:
            penalty = self.config.reward.duplicate if job.duplicate else self.config.reward.rejected
            reward = Reward(penalty, {"duplicate" if job.duplicate else "rejected": penalty})
        # 5. the policy learns what became of it, once it is settled (a near miss after its re-runs: _settle); a
        # pruned run's forecast stands in for the end it never reached (without it TPE and CMA-ES would see only
        # failures wherever early stopping works)
        observed = predicted if result.status is Status.PRUNED else result.val_bpb
        outcome = Outcome(job.state, job.proposal, observed, decision.verdict is Verdict.KEEP, reward.total,
                          next_observation=lambda: self._observation(self.source),
                          pruned=result.status is Status.PRUNED, duplicate=job.duplicate)
        stats = {"logprob": job.proposal.logprob, "value": job.proposal.value}
        if decision.verdict is Verdict.AGAIN:
            self.unsettled[code_hash(job.source)] = outcome
        else:
            stats.update(self.policy.observe(outcome))
            self._save_policy()  # before the record: a kill in between costs the policy one outcome, not the ledger
        stats["agent_seconds"] = job.agent_seconds + time.perf_counter() - timer
        # 6. record it
        self._record(result, decision, job, description=job.description, reward=reward, stats=stats,
                     predictions=predictions)

    def _settle(self, digest: str, decision: Decision, reward: Reward) -> dict:
        """A near miss's re-run: its reward joins its proposal's, and once the verdict is final (kept, or dropped) the
        policy is told the proposal's outcome with them all. The policy's numbers to log, if it was told. (A loop
        stopped in between tells no one: the resumed one finishes the re-runs, and the policy misses one outcome.)"""
        outcome = self.unsettled.get(digest)
        if outcome is None:
            return {}
        outcome = dataclasses.replace(outcome, reward=outcome.reward + reward.total,
                                      accepted=decision.verdict is Verdict.KEEP)
        if decision.verdict is Verdict.AGAIN:
            self.unsettled[digest] = outcome
            return {}
        del self.unsettled[digest]
        stats = self.policy.observe(outcome)
        self._save_policy()
        return stats

    def _reward(self, result: RunResult, decision: Decision, runs: list[float | None], sources: tuple[str, str],
                predicted: float | None = None, rerun: bool = False) -> Reward:
        """What a run earns: a kept one the gain of the incumbent's mean (before, against the mean of its runs), or
        with RewardConfig.noise_free the world's noise-free gain from sources (the incumbent before, the run's)."""
        before = self.state.incumbent_mean
        gain = 0.0
        if decision.verdict is Verdict.KEEP and before is not None:
            if self.config.reward.noise_free:
                worth = self.environment.expected_bpb
                gain = max(0.0, math.log(worth(sources[0]) / worth(sources[1])))
            else:
                gain = max(0.0, math.log(before / statistics.fmean(runs)))
        return compute_reward(result.status.value, result.val_bpb, before, result.total_seconds, self.budget,
                              list(result.curve), predicted=predicted, config=self.config.reward, gain=gain,
                              rerun=rerun)

    def _witness(self, source: str, result: RunResult) -> None:
        """Tell the policy of a judged run it did not propose (saved before the record, as its own outcomes are)."""
        if result.status is Status.CONTENDED:
            return
        self.policy.witness(edits.knobs(source), result.val_bpb if result.status is Status.OK else None)
        self._save_policy()

    def _experiment(self, job: Job) -> tuple[RunResult, list, float | None] | None:
        """Run one experiment (the stop rule watching a new idea, once there is an incumbent to compare with): the
        result, the stop rule's decisions and its last forecast. A contended run is recorded but not judged, and run
        again once the machine is quiet, up to contended_reruns times; after that None (the loop pauses)."""
        attempts = 1 + self.config.contended_reruns
        for attempt in range(1, attempts + 1):
            watch = _Watch(self._stopper(job), self._emit)
            result = self.environment(job.source, self._experiment_dir(), self._harness(job.seed), monitor=watch)
            result = self._slowed(result, job.source)
            if result.status is not Status.CONTENDED:
                return result, [d.to_json() for d in watch.decisions], watch.last_prediction
            self._record_contended(job, result, attempt, attempts)
            if attempt < attempts and not self._stopping():
                self.say(f"waiting up to {self.config.quiet_wait:g} s for the machine to be quiet, then the same "
                         "experiment again")
                wait_until_quiet(self.config.contention_limit, self.config.quiet_wait,
                                 give_up=self._stopping)
        self.contended = self._contended_reason(attempts, result)
        return None

    def _record_contended(self, job: Job, result: RunResult, attempt: int, attempts: int) -> None:
        self._record(result, Decision(Verdict.DROP, None, self.repo.head()), job,
                     description=f"{job.description} (contended: attempt {attempt} of {attempts})",
                     reward=Reward(0.0, {}), stats={})
        self._emit({"event": "contended", "attempt": attempt, "attempts": attempts})

    def _contended_reason(self, attempts: int, result: RunResult) -> str:
        users = [f"{name}: {cores:.2f} cores" for name, cores in busiest()]
        if result.fingerprint.get("device") == "cuda":
            users += [f"on its GPU: {what}" for what in foreign_gpu_processes().values()]
        users = ", ".join(users) or "no one now"
        return (f"paused: {attempts} runs in a row could not get the machine to themselves (using it: {users}); free "
                "it, then run the same command again to resume")

    def _stopper(self, job: Job) -> EarlyStopper | None:
        """The stop rule a new idea's run is watched by (once there is an incumbent to compare with), else None."""
        reference = self.state.stop_reference(self.budget) if job.kind not in (NOISE_POLICY, CONFIRM_POLICY) else None
        rule = self.state.stop_rule
        return EarlyStopper(rule, reference) if rule is not None and reference is not None else None

    def _check_environment(self) -> None:
        """A run measured in one environment goes on only in the same one (the real harness's: a stand-in world
        has its own): the kit's code, torch, the device and the data as the first measured record had them."""
        if self.environment is not run_experiment or (reference := self._reference_fingerprint()) is None:
            return
        import prepare

        profile = prepare.get_profile(self.config.profile)
        here = {**prepare.fingerprint(profile, self.budget, prepare.get_device()), **environment(prepare.get_device())}
        if why := fingerprint_differs(reference, here):
            raise ResumeError(f"{self.run_dir} was measured in another environment ({why}, now against then): its "
                              "results cannot be compared with new ones; start a new --run-dir, or go back to the "
                              "environment it was measured in")

    def _reference_fingerprint(self) -> dict | None:
        """The environment this run's results are compared in: its first measured record's."""
        return next((r.fingerprint for r in self.state.records if r.fingerprint and r.status != Status.CONTENDED),
                    None)

    def _running(self) -> set[str]:
        """Code hashes of experiments running now (none here: one runs at a time, and it is not proposing then)."""
        return set()

    def _slowed(self, result: RunResult, source: str, worker: str | None = None) -> RunResult:
        """The result, contended if this train.py ran before (on the same worker, where several run) and this run made
        clearly fewer steps per second than its earlier runs did (their median): the machine was not the one they
        had."""
        pace = result.timings.get("steps_per_second")
        digest = code_hash(source)
        earlier = [r.timings["steps_per_second"] for r in self.state.records if r.code_hash == digest
                   and r.status in (Status.OK, Status.PRUNED) and r.timings.get("steps_per_second")
                   and r.policy_stats.get("worker") == worker]
        if result.status not in (Status.OK, Status.PRUNED) or not pace or not earlier:
            return result
        typical = statistics.median(earlier)
        if pace >= self.config.pace_limit * typical:
            return result
        measured = f", val_bpb {result.val_bpb:.6f}" if result.val_bpb is not None else ""
        return dataclasses.replace(result, status=Status.CONTENDED, val_bpb=None, reason=(
            f"made {pace:.3g} steps/s, {pace / typical:.0%} of the {typical:.3g} its {len(earlier)} earlier run(s) "
            f"made (under {self.config.pace_limit:.0%}): the machine was slower than then; not judged; it would have "
            f"been {result.status.value}{measured}"))

    def _seed_ignored(self, result: RunResult, source: str) -> str | None:
        """Why a re-run under a new seed shows that the train.py ignores its seed (kit/seed_check.py), or None."""
        def signatures(records) -> list:
            found = (seed_check.signature(self._experiment_dir(r.iteration)) for r in records if r.status == Status.OK)
            return [s for s in found if s is not None]

        noise = signatures(r for r in self.state.records if r.policy == NOISE_POLICY)
        earlier = signatures(r for r in self.state.records if r.code_hash == code_hash(source))
        new = seed_check.signature(Path(result.run_dir)) if result.run_dir else None  # stand-in worlds have none
        return seed_check.seed_ignored(new, earlier, seed_check.typical_distance(noise))

    # the step's helpers -------------------------------------------------------------------------------------------

    def _base(self) -> tuple[str, str, np.ndarray]:
        """What the policy edits this step, what it is ("" for the incumbent), and which edits it may propose."""
        if self.policy.edits_catalog:
            return self.frontier.base(self.source, self.state)
        return self.source, "", edits.edit_mask(self.source, self.catalog)

    def _candidate(self, proposal: Proposal, base: str) -> tuple[str, str | None]:
        """The train.py a proposal stands for, and why there is none (then the incumbent itself is returned)."""
        try:
            if proposal.error is not None:
                raise edits.EditError(proposal.error)
            if proposal.candidate is not None:
                return proposal.candidate, None
            if proposal.values is not None:
                return edits.set_values(base, proposal.values), None
            return edits.apply_edit(base, proposal.edit), None
        except edits.EditError as error:
            return self.source, str(error)

    def _decide(self, policy: str, result: RunResult, source: str, description: str) -> Decision:
        """Judge a finished run and, if it won, keep it: the one place where the incumbent changes. A kept noise-floor
        run is the baseline's own commit; a kept edit is a new commit on the branch."""
        verdict = self.state.verdict(policy, result.status, result.val_bpb, code_hash(source))
        parent = self.repo.head()
        if verdict is not Verdict.KEEP:
            return Decision(verdict, None, parent)
        if policy == NOISE_POLICY:
            return Decision(verdict, self.ledger.get_meta("baseline_commit"), None)
        commit = self.repo.commit(source, description)
        self.source = source
        return Decision(verdict, commit, parent)

    def _observation(self, source: str) -> np.ndarray:
        """What a policy sees: source's knobs in their declared ranges, the memory, then the run's situation
        (SITUATION_NAMES), all of which mean the same in any run, so that a policy can be carried between them."""
        acceptance, incumbent = self.state.acceptance, self.state.incumbent_mean
        noise = math.tanh(NOISE_SCALE * acceptance.sigma / incumbent) if incumbent else 0.0
        left = self.config.stop.share_left(self.state.records, time.monotonic() - self.started)
        return np.concatenate([edits.config_vector(source, self.knob_names), self.state.memory.observation(),
                               np.array([noise, left])]).astype(np.float32)

    def _watch(self, stop_rule: bool = False) -> _Watch:
        """The harness monitor of the next run: progress events for the dashboard, and (for a new idea, once there
        is an incumbent to compare with) the stop rule."""
        reference = self.state.stop_reference(self.budget) if stop_rule else None
        rule = self.state.stop_rule
        return _Watch(EarlyStopper(rule, reference) if rule is not None and reference is not None else None,
                      self._emit)

    def _harness(self, seed: int | None) -> HarnessConfig:
        return HarnessConfig(profile=self.config.profile, budget=self.config.budget, seed=seed,
                             sandbox=self.config.sandbox, contention_limit=self.config.contention_limit)

    def _experiment_dir(self, iteration: int | None = None) -> Path:
        """The harness run directory of an experiment (by default the next one)."""
        return self.run_dir / "experiments" / f"{iteration or len(self.state.records) + 1:05d}"

    def _load_policy(self) -> None:
        checkpoint = self.run_dir / POLICY_FILE
        if not checkpoint.exists():
            return
        try:
            self.policy.restore(torch.load(checkpoint, weights_only=False))
        except (RuntimeError, KeyError, ValueError) as error:  # a policy of another shape or kind
            why = " ".join(str(error).split())[:120]  # torch's message spans lines; ours is one
            raise ResumeError(f"{checkpoint} holds a policy this kit cannot load ({why}); move it away to start the "
                              "policy afresh (the ledger and git history are kept)") from None

    def _save_policy(self) -> None:
        tmp = self.run_dir / f"{POLICY_FILE}.tmp"
        torch.save(self.policy.checkpoint(), tmp)
        tmp.replace(self.run_dir / POLICY_FILE)

    # records, stops and events ------------------------------------------------------------------------------------

    def _record(self, result: RunResult, decision: Decision, job: Job, *, description: str, reward: Reward,
                stats: dict, predictions: list | None = None) -> None:
        """Append the experiment to the ledger (durable on return) and take it into the state; say so."""
        record = Record(iteration=len(self.state.records) + 1, policy=job.kind, description=description, diff=job.diff,
                        parent_commit=decision.parent, commit=decision.commit, status=result.status.value,
                        reason=result.reason, val_bpb=result.val_bpb, reward=reward.total, reward_parts=reward.parts,
                        accepted=decision.verdict is Verdict.KEEP, curve=list(result.curve),
                        predictions=predictions or [], timings=result.timings, policy_stats=stats,
                        fingerprint=result.fingerprint, peak_mem_mb=result.peak_mem_mb,
                        training_seconds=result.training_seconds, total_seconds=result.total_seconds,
                        seed=result.seed, code_hash=code_hash(job.source), created=time.time())
        self.ledger.append(record)
        self.state.add(record, job.source)
        self._mirror(self.state.records)
        near = self.state.near_miss
        if near is not None:  # for a person to look at; a resume finds the near miss in the ledger
            (self.run_dir / CANDIDATE_FILE).write_text(near.source)
        else:
            (self.run_dir / CANDIDATE_FILE).unlink(missing_ok=True)
        shown = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
        mark = "KEEP" if record.accepted else "NEAR" if decision.verdict is Verdict.AGAIN else "    "
        why = f" ({result.reason[:120]})" if result.reason else ""
        self.say(f"[{record.iteration:4d}] {result.status.value:8s} val_bpb {shown} reward {reward.total:+.3f} "
                 f"{mark} {description}{why}")
        self._emit({"event": "record", "record": record})

    def _mirror(self, records: list[Record]) -> None:
        """Bring the Optuna mirror up to the records (made on the first call; skipped while another writer holds it:
        the next record catches up). A mirror that fails is said once and given up, never the run."""
        if not self.config.mirror:
            return
        try:
            if self.mirror is None:
                self.mirror = Mirror(self.run_dir, self.repo.show(self.ledger.get_meta("baseline_commit")),
                                     self.repo.source_of)
            self.mirror.sync(records, wait=False)
        except Exception as error:  # noqa: BLE001 - a view, not the record: the ledger has everything
            self.config = dataclasses.replace(self.config, mirror=False)
            if self.mirror is not None:
                self.mirror.close()
            self.say(f"the Optuna mirror ({self.run_dir / 'optuna.sqlite3'}) stopped following the ledger: "
                     f"{_one_line(error)[:200]}; `python -m kit dashboard {self.run_dir}` rebuilds it")

    def _write_report(self) -> None:
        """The report, however the run ended; one that cannot be written is said, never raised over the ending."""
        try:
            write_report(self.run_dir, self.ledger)
        except Exception as error:  # noqa: BLE001 - the ledger has everything; `python -m kit report` tries again
            self.say(f"the report of {self.run_dir} could not be written: {_one_line(error)[:200]}")

    def _stop_reason(self) -> str | None:
        reason = "stopped by Ctrl-C" if self.interrupted else stop_requested(self.run_dir)
        if reason is not None:
            self.stopped_by_person = True
            return reason
        return self.config.stop(self.state.records, time.monotonic() - self.started)

    def _stopping(self) -> bool:
        """Whether a stop is asked for (without taking the STOP file away, as _stop_reason does)."""
        return self.interrupted or (self.run_dir / STOP_FILE).exists()

    def _pause_reason(self) -> str | None:
        if self.contended is not None:
            reason = self.contended
        elif self.state.failures < self.config.max_failures:
            return None
        else:
            last = self.state.records[-1]
            reason = (f"paused: {self.state.failures} failures in a row (last: {last.status}: {last.reason[:200]}); "
                      f"look at {self.run_dir / 'experiments'}, then run the same command again to resume")
        (self.run_dir / PAUSED_FILE).write_text(reason + "\n")
        return reason

    def _on_ctrl_c(self) -> None:
        self.interrupted = True
        self.say("stopping after the running experiment is recorded (Ctrl-C again to abort it)")

    def _on_hold(self) -> None:
        self.say(f"on hold: no new experiment until {self.run_dir / 'HOLD'} is removed (the dashboard's Resume button "
                 "does that)")
        self._emit({"event": "hold"})

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
        self.ledger.close()


class _Watch:
    """What the harness calls after each progress point: the early stopper if any, and a progress event."""

    def __init__(self, stopper: EarlyStopper | None, emit: Callable[[dict], None]):
        self.stopper, self.emit = stopper, emit
        self.decisions: list = []

    def __call__(self, curve) -> str | None:
        reason, decision = None, None
        if self.stopper is not None:
            reason = self.stopper(curve)
            if len(self.stopper.decisions) > len(self.decisions):
                decision = self.stopper.decisions[-1]
                self.decisions.append(decision)
        self.emit({"event": "progress", "point": curve[-1], "decision": decision})
        return reason

    @property
    def last_prediction(self) -> float | None:
        return self.stopper.last_prediction if self.stopper is not None else None


def run_loop(config: LoopConfig, on_event: Callable[[dict], None] | None = None,
             environment: Environment = run_experiment, say: Callable[[str], None] = print_line) -> str:
    """Run the loop of config.run_dir to its end; experiments come from environment (the real harness unless
    a synthetic or replayed one is given); its lines go to say. Returns why it stopped."""
    loop = ResearchLoop(config, on_event, environment, say)
    try:
        return loop.run()
    finally:
        loop.close()
