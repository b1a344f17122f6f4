"""The research loop: propose an edit of train.py, gate it, run it, score it, keep or roll back, learn.

Owns: the run directory (ledger, git repository of train.py on its own branch, experiment folders,
policy checkpoint), the noise floor, re-running near misses under new seeds (the rule is kit/acceptance.py),
the PPO rollout buffer and updates,
the 3-strike pause, the stop file and Ctrl-C, the termination oracle, and resuming all of it.
Does not own: running one experiment (kit/harness.py), the action space (kit/edits.py), the policies
(kit/policy.py), the update rule (kit/ppo.py), widgets (the optional on_event callback feeds them).

    RUN_DIR/ledger.sqlite      every proposal and run (the source of truth on resume)
    RUN_DIR/repo/train.py      train.py on branch autoresearch; an accepted edit is a commit
    RUN_DIR/experiments/NNNNN  one harness run directory per experiment
    RUN_DIR/policy.pt          policy weights, optimizer and rollout buffer
    RUN_DIR/candidate.py       the near miss being re-run under new seeds, while there is one
    RUN_DIR/STOP, RUN_DIR/HOLD     create STOP to stop after the running experiment; while HOLD exists no new
                                   experiment starts (the dashboard's pause button)
    RUN_DIR/PAUSED             why the loop stopped itself after failures in a row
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kit import bound, edits
from kit.acceptance import Acceptance, Verdict
from kit.environments import Environment
from kit.harness import REPO_ROOT, HarnessConfig, RunResult, Status, run_experiment
from kit.ledger import Ledger, Record, runs_of, write_report
from kit.memory import Experiment, Memory, code_hash
from kit.policy import POLICIES, OperatorPolicy, Proposal, State, make_policy
from kit.ppo import PPOConfig, compute_gae, ppo_step
from kit.predictor import RULES, EarlyStopper, Reference, make_rule
from kit.reward import Reward, RewardConfig, compute_reward

FAILURES = {Status.CRASH, Status.TIMEOUT, Status.REJECTED, Status.TAMPERED}
NOISE_POLICY = "noise-floor"
CONFIRM_POLICY = "confirm"  # a near miss run again under another seed: not a proposal, not a PPO transition
CANDIDATE_FILE = "candidate.py"
BRANCH = "autoresearch"
STOP_FILE, HOLD_FILE = "STOP", "HOLD"
CATALOG_POLICIES = ("ppo", "random", "greedy")  # policies that pick one catalog edit of the train.py they are shown


class ResumeError(ValueError):
    """A run directory the loop cannot go on with as it is; the message says what to do."""


@dataclass(frozen=True)
class LoopConfig:
    run_dir: Path
    """Where everything of this run lives; the same directory resumes the run."""
    profile: str = "cpu"
    """Profile of prepare.py: smoke, cpu or gpu."""
    policy: str = "ppo"
    """ppo, random, greedy, tpe or cmaes."""
    iterations: int | None = None
    """Stop once the ledger holds this many records (noise-floor runs included)."""
    hours: float | None = None
    """Stop after this many wall-clock hours of this invocation."""
    gpu_hours: float | None = None
    """Stop once experiments on a GPU have taken this many hours in total, over the whole run."""
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
    ppo_every: int = 8
    """Transitions per PPO update."""
    epsilon: float = 0.005
    """The convergence oracle's ε: an improvement of the best val_bpb by more than this counts."""
    convergence_threshold: float = 0.02
    """Stop when the upper confidence bound of P(ε-improvement per experiment) falls below this."""
    convergence_window: int = 60
    """Recent experiments the convergence estimate looks at (and needs before it may fire)."""
    sandbox: str = "auto"
    """Sandbox backend of the harness."""
    lm_model: str | None = None
    """The lm policy's causal LM: a local path or a hub name."""
    llm_url: str | None = None
    """The llm proposer's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."""
    llm_model: str | None = None
    """The model name the llm endpoint serves."""
    early_stopping: str = "same-progress"
    """Stop rule of kit.predictor asked while a run trains (same-progress, power-law, linear, calibrated), or none.
    same-progress is the one bench/early_stopping.md found safe on real curves; power-law is the source's."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy=}")
        for name in ("iterations", "hours", "gpu_hours", "budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value=}")
        if self.policy == "lm" and not self.lm_model:
            raise ValueError("the lm policy needs a model: give lm_model (--lm-model), a local path or a hub name")
        if self.policy == "llm" and not (self.llm_url and self.llm_model):
            raise ValueError("the llm proposer needs llm_url and llm_model (--llm-url, --llm-model)")
        if self.llm_url is not None and not self.llm_url.startswith(("http://", "https://")):
            raise ValueError(f"llm_url must start with http:// or https://, got {self.llm_url!r}")
        if self.early_stopping != "none" and self.early_stopping not in RULES:
            raise ValueError(f"early_stopping must be none or one of {', '.join(RULES)}, got {self.early_stopping=}")
        if self.noise_repeats < 1 or self.max_failures < 1 or self.ppo_every < 2 or self.confirm_runs < 0:
            raise ValueError(f"need noise_repeats, max_failures >= 1, ppo_every >= 2 and confirm_runs >= 0, got "
                             f"{self.noise_repeats=}, {self.max_failures=}, {self.ppo_every=}, {self.confirm_runs=}")


class _Git:
    """train.py's history in RUN_DIR/repo on one branch; the identity is set per call (CI has none)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["git", "-c", "user.name=autoresearch-rl", "-c", "user.email=autoresearch@localhost",
                               "-C", str(self.path), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def init(self, baseline: str) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        self("init", "-q", "-b", BRANCH)
        (self.path / "train.py").write_text(baseline)
        self("add", "train.py")
        self("commit", "-q", "-m", "baseline")
        return self("rev-parse", "HEAD")

    def commit(self, source: str, message: str) -> str:
        (self.path / "train.py").write_text(source)
        self("commit", "-q", "-am", message)
        return self("rev-parse", "HEAD")

    def reset(self, commit: str) -> None:
        self("reset", "-q", "--hard", commit)


class ResearchLoop:
    """One run directory's loop. `run()` returns why it stopped, in one line."""

    def __init__(self, config: LoopConfig, on_event: Callable[[dict], None] | None = None,
                 environment: Environment = run_experiment):
        self.config = config
        self.on_event = on_event
        self.environment = environment  # the real harness, or a synthetic or replayed one (kit/environments.py)
        self.run_dir = Path(config.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.run_dir)
        self.git = _Git(self.run_dir / "repo")
        self.interrupted = False
        self._resume()

    # state --------------------------------------------------------------------------------------------------

    def _resume(self) -> None:
        # the ledger is read once; after that the loop keeps its records in memory (re-reading them every step
        # decodes every curve again: quadratic in the length of the run)
        self.records = records = self.ledger.records()
        if not (self.run_dir / "repo" / ".git").exists():
            baseline = Path(self.config.train_py).read_text()
            self.ledger.set_meta("baseline_commit", self.git.init(baseline))
        accepted = [r for r in records if r.accepted and r.commit]
        head = accepted[-1].commit if accepted else self.ledger.get_meta("baseline_commit")
        self.git.reset(head)  # the ledger is the truth: drop a commit whose record a kill prevented
        self.source = (self.run_dir / "repo" / "train.py").read_text()
        self.catalog = edits.build_catalog(self.source)
        self.knob_names = [k.name for k in edits.knobs(self.source)]
        self.memory = Memory()
        for r in records:
            self.memory.add(self._experiment(r))
        self.noise_values = [r.val_bpb for r in records if r.policy == NOISE_POLICY and r.val_bpb is not None]
        # the incumbent is the code of the last kept run, measured by every ok run of that code (the noise floor's
        # for the baseline, the first run and its confirmations for an edit)
        self.incumbent_values: list[float] = []
        self.incumbent_curve: tuple = ()
        if accepted:
            self.incumbent_values = runs_of(records, accepted[-1].code_hash)
            first = next(r for r in records if r.code_hash == accepted[-1].code_hash and r.status == Status.OK.value)
            self.incumbent_curve = tuple(map(tuple, first.curve))
        self.pending = self._pending_confirmation(records)
        # train.py of the ok runs, for exploring from the best of them once the incumbent's edits are used up; a
        # resumed loop finds them in the harness's experiment folders (a replayed world writes none)
        self.sources: dict[str, tuple[str, str]] = {}
        self._neighbours: dict[str, list[str | None]] = {}
        for r in records:
            saved = self.run_dir / "experiments" / f"{r.iteration:05d}" / "train.py"
            if r.status == Status.OK.value and r.policy not in (NOISE_POLICY, CONFIRM_POLICY) and saved.exists():
                self.sources[r.code_hash] = (saved.read_text(), r.description)
        self.stop_rule = None if self.config.early_stopping == "none" else make_rule(self.config.early_stopping,
                                                                                     self._budget())
        for r in records:
            self._learn_curve(r.status, r.curve, r.val_bpb)
        self.policy = make_policy(self.config.policy, len(self.catalog), self._observation(self.source).size,
                                  edits.knobs(self.source), seed=self.config.seed, **self._model_configs(),
                                  edit_features=edits.edit_features(self.source, self.catalog, self.knob_names))
        self.optimizer = None
        self.buffer: list[dict] = []
        if isinstance(self.policy, OperatorPolicy):
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.config.ppo.learning_rate, eps=1e-5)
        checkpoint = self.run_dir / "policy.pt"
        if checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=False)
            try:
                self.policy.load_state_dict(saved["policy"])
            except (RuntimeError, KeyError, ValueError) as error:  # a policy of another shape or kind
                why = " ".join(str(error).split())[:120]  # torch's message spans lines; ours is one
                raise ResumeError(f"{checkpoint} holds a policy this kit cannot load ({why}); move it away to start "
                                  "the policy afresh (the ledger and git history are kept)") from None
            if self.optimizer is not None and saved.get("optimizer"):
                self.optimizer.load_state_dict(saved["optimizer"])
            self.buffer = saved.get("buffer", [])
        self.failures = 0
        paused = self.run_dir / "PAUSED"
        if paused.exists():
            print(f"resuming after a pause ({paused.read_text().strip()})")
            paused.unlink()

    def _model_configs(self) -> dict:
        c = self.config
        if c.policy == "lm":
            from kit.lm_policy import LMPolicyConfig

            return {"lm": LMPolicyConfig(model=c.lm_model, seed=c.seed, ppo_every=c.ppo_every)}
        if c.policy == "llm":
            from kit.llm_proposer import LLMConfig

            return {"llm": LLMConfig(url=c.llm_url, model=c.llm_model)}
        return {}

    def _observation(self, source: str) -> np.ndarray:
        return np.concatenate([edits.config_vector(source, self.knob_names), self.memory.observation()]).astype(
            np.float32)

    def _experiment(self, r: Record) -> Experiment:
        return Experiment(index=r.iteration, code_hash=r.code_hash, description=r.description, status=r.status,
                          val_bpb=r.val_bpb if r.status == "ok" else None, reward=r.reward or 0.0,
                          accepted=r.accepted)

    def _save_policy(self) -> None:
        state = {"policy": self.policy.state_dict(), "buffer": self.buffer,
                 "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}
        tmp = self.run_dir / "policy.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.run_dir / "policy.pt")

    def _pending_confirmation(self, records: list[Record]) -> _Pending | None:
        """The near miss a kill interrupted, from the ledger's last records and RUN_DIR/candidate.py."""
        saved = self.run_dir / CANDIDATE_FILE
        if not saved.exists():
            return None
        source = saved.read_text()
        runs = []
        for r in reversed(records):
            if r.code_hash != code_hash(source) or r.accepted:
                break
            runs.insert(0, r)
            if r.policy != CONFIRM_POLICY:
                break
        if not runs or runs[0].policy == CONFIRM_POLICY or any(r.status != Status.OK.value for r in runs):
            saved.unlink()
            return None
        pending = _Pending(source, runs[0].description, runs[0].diff, [r.val_bpb for r in runs],
                           tuple(map(tuple, runs[0].curve)))
        if self.acceptance.verdict(pending.values, self.incumbent_values) is not Verdict.AGAIN:
            saved.unlink()
            return None
        return pending

    @property
    def incumbent(self) -> float | None:
        """The mean val_bpb of the incumbent's runs."""
        return statistics.fmean(self.incumbent_values) if self.incumbent_values else None

    @property
    def acceptance(self) -> Acceptance:
        spread = statistics.stdev(self.noise_values) if len(self.noise_values) >= 2 else 0.0
        return Acceptance(spread, self.config.noise_sigmas, 1 + self.config.confirm_runs)

    # the loop -----------------------------------------------------------------------------------------------

    def run(self) -> str:
        """Run until the oracle, a stop, or a pause; write the report; return why it stopped."""
        started = time.monotonic()
        in_main_thread = threading.current_thread() is threading.main_thread()  # a notebook may run us in a thread
        previous = signal.signal(signal.SIGINT, self._on_sigint) if in_main_thread else None
        try:
            while True:
                self._hold()
                reason = self._stop_reason(started)
                if reason:
                    break
                if self._noise_runs() < self.config.noise_repeats:
                    self._measure_noise()
                elif self.pending is not None:
                    self._confirm()
                else:
                    self._step()
                if self.failures >= self.config.max_failures:
                    last = self.records[-1]
                    reason = (f"paused: {self.failures} failures in a row (last: {last.status}: {last.reason[:200]}); "
                              f"look at {self.run_dir / 'experiments'}, then run the same command again to resume")
                    (self.run_dir / "PAUSED").write_text(reason + "\n")
                    break
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
            write_report(self.run_dir, self.ledger)
        self._emit({"event": "stopped", "reason": reason})
        return reason

    def close(self) -> None:
        self.ledger.close()

    def _on_sigint(self, signum, frame) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("stopping after the running experiment is recorded (Ctrl-C again to abort it)")

    def _hold(self) -> None:
        """Wait while RUN_DIR/HOLD exists (a stop file or Ctrl-C ends the wait)."""
        hold = self.run_dir / HOLD_FILE
        if not hold.exists():
            return
        print(f"on hold: no new experiment until {hold} is removed (the dashboard's Resume button does that)",
              flush=True)
        self._emit({"event": "hold"})
        while hold.exists() and not self.interrupted and not (self.run_dir / STOP_FILE).exists():
            time.sleep(0.5)

    def _stop_reason(self, started: float) -> str | None:
        c = self.config
        records = self.records
        if self.interrupted:
            return "stopped by Ctrl-C"
        stop_file = self.run_dir / STOP_FILE
        if stop_file.exists():
            stop_file.unlink()
            return f"stopped by the stop file {stop_file}"
        if c.iterations is not None and len(records) >= c.iterations:
            return f"iterations: {len(records)} experiments recorded (limit {c.iterations})"
        if c.hours is not None and time.monotonic() - started >= c.hours * 3600:
            return f"hours: {c.hours:g} h of wall-clock time spent"
        if c.gpu_hours is not None:
            spent = sum(r.total_seconds for r in records if r.fingerprint.get("device") == "cuda") / 3600
            if spent >= c.gpu_hours:
                return f"gpu-hours: {spent:.2f} GPU-hours spent (limit {c.gpu_hours:g})"
        agent = [r for r in records if r.policy not in (NOISE_POLICY, CONFIRM_POLICY)]
        if len(agent) >= c.convergence_window:
            # re-runs of a near miss are left out: they are not proposals, and a lucky seed is not an improvement
            values = [r.val_bpb if r.status == "ok" else None for r in records if r.policy != CONFIRM_POLICY]
            estimate = bound.improvement_probability(values, c.epsilon, window=c.convergence_window)
            if estimate.upper < c.convergence_threshold:
                return (f"converged: {estimate.successes}/{estimate.trials} recent experiments improved by more than "
                        f"ε={c.epsilon:g}; P(improvement) ≤ {estimate.upper:.3f} (95 % bound) < "
                        f"{c.convergence_threshold:g}")
        return None

    def _noise_runs(self) -> int:
        return sum(r.policy == NOISE_POLICY for r in self.records)

    def _harness(self, seed: int | None) -> HarnessConfig:
        return HarnessConfig(profile=self.config.profile, budget=self.config.budget, seed=seed,
                             sandbox=self.config.sandbox)

    def _measure_noise(self) -> None:
        """The baseline again, with another seed each time: how much val_bpb moves when nothing changes."""
        import prepare

        n = self._noise_runs()
        seed = prepare.get_profile(self.config.profile).seed + n
        result = self.environment(self.source, self._experiment_dir(), self._harness(seed),
                                monitor=_Watch(None, self._emit))
        # The first ok baseline is the kept record whose curve the stop rule compares with (seed n = 0 is the frozen
        # seed every agent run uses); the incumbent's value is the mean of all of them.
        keep = result.status is Status.OK and self.incumbent is None
        if result.status is Status.OK:
            self.noise_values.append(result.val_bpb)
            self.incumbent_values.append(result.val_bpb)
        if keep:
            self.incumbent_curve = result.curve
        self._record(result, description=f"baseline (noise floor, seed {seed})", diff="", policy=NOISE_POLICY,
                     reward=Reward(0.0, {}), accepted=keep,
                     commit=self.ledger.get_meta("baseline_commit") if keep else None,
                     parent=None if keep else self.git("rev-parse", "HEAD"), source=self.source, stats={})

    def _step(self) -> None:
        timer = time.perf_counter()
        base, base_description, mask = self._base()
        observation = self._observation(base)
        knobs = edits.knobs(base)
        state = State(source=base, catalog=self.catalog, mask=mask, observation=observation, knobs=knobs,
                      memory=self.memory)
        proposal = self.policy.propose(state)
        candidate, edit_error = self._candidate(proposal, base)
        digest = code_hash(candidate)
        diff = edits.unified_diff(self.source, candidate)
        description = proposal.description + (f", on top of {base_description}" if base_description else "")
        agent_seconds = time.perf_counter() - timer
        if edit_error or self.memory.is_duplicate(digest):
            why = edit_error or "duplicate of an experiment already run"
            penalty = self.config.reward.duplicate if not edit_error else self.config.reward.rejected
            result = self._not_run(why)
            reward = Reward(penalty, {"duplicate" if not edit_error else "rejected": penalty})
            duplicate, predictions, predicted = not edit_error, [], None
        else:
            monitor = self._monitor()
            result = self.environment(candidate, self._experiment_dir(), self._harness(None), monitor=monitor)
            predicted = monitor.last_prediction
            predictions = [d.to_json() for d in monitor.decisions]
            reward = compute_reward(result.status.value, result.val_bpb, self.incumbent, result.total_seconds,
                                    self._budget(), list(result.curve), predicted=predicted,
                                    config=self.config.reward)
            duplicate = False
        timer = time.perf_counter()
        verdict = Verdict.DROP
        if result.status is Status.OK and self.incumbent_values:
            verdict = self.acceptance.verdict([result.val_bpb], self.incumbent_values)
        accepted = verdict is Verdict.KEEP
        commit, parent = None, self.git("rev-parse", "HEAD")
        if accepted:
            commit = self._keep(candidate, description, [result.val_bpb], result.curve)
        elif verdict is Verdict.AGAIN:
            self.pending = _Pending(candidate, description, diff, [result.val_bpb], tuple(result.curve))
            (self.run_dir / CANDIDATE_FILE).write_text(candidate)
        # a pruned run's forecast stands in for the end it never reached: without it TPE and CMA-ES see only
        # failures wherever early stopping works, and stop learning
        observed = predicted if result.status is Status.PRUNED else result.val_bpb
        self.policy.observe(proposal, observed, accepted)
        stats = self._learn(proposal, observation, state.mask, reward.total)
        self._save_policy()  # before the record: a kill in between costs the policy one outcome, not the ledger
        stats["agent_seconds"] = agent_seconds + time.perf_counter() - timer
        self._record(result, description=description, diff=diff, policy=self.config.policy, reward=reward,
                     accepted=accepted, commit=commit, parent=parent, source=candidate, stats=stats,
                     duplicate=duplicate, predictions=predictions, near_miss=verdict is Verdict.AGAIN)

    def _confirm(self) -> None:
        """Run the pending near miss once more under the next seed; keep it when the mean of its runs clears the
        bar, drop it when it cannot, else leave it pending. No stop rule: the run is needed whole to count."""
        import prepare

        p = self.pending
        seed = prepare.get_profile(self.config.profile).seed + len(p.values)
        result = self.environment(p.source, self._experiment_dir(), self._harness(seed),
                                  monitor=_Watch(None, self._emit))
        verdict = Verdict.DROP
        if result.status is Status.OK:
            p.values.append(result.val_bpb)
            verdict = self.acceptance.verdict(p.values, self.incumbent_values)
        commit, parent = None, self.git("rev-parse", "HEAD")
        if verdict is Verdict.KEEP:
            commit = self._keep(p.source, p.description, p.values, p.curve)
        if verdict is not Verdict.AGAIN:
            self.pending = None
            (self.run_dir / CANDIDATE_FILE).unlink(missing_ok=True)
        mean = sum(p.values) / len(p.values) if p.values else float("nan")
        self._record(result, description=f"{p.description} (run {len(p.values)} of at most "
                     f"{1 + self.config.confirm_runs}, seed {seed}; mean {mean:.6f})", diff=p.diff,
                     policy=CONFIRM_POLICY, reward=Reward(0.0, {}), accepted=verdict is Verdict.KEEP, commit=commit,
                     parent=parent, source=p.source, stats={}, near_miss=verdict is Verdict.AGAIN)

    def _keep(self, source: str, description: str, values: list[float], curve) -> str:
        """Make source the incumbent (a commit on the branch); returns the commit."""
        commit = self.git.commit(source, description)
        self.source, self.incumbent_values, self.incumbent_curve = source, list(values), tuple(curve)
        return commit

    def _base(self) -> tuple[str, str, np.ndarray]:
        """What a catalog policy edits this step, what it is, and the mask of its edits that would not repeat an
        experiment: the incumbent, until every one of its edits has been run; then the best train.py not kept that
        still has untried edits (a near miss, say), so that edits combine instead of being proposed again."""
        if self.config.policy not in CATALOG_POLICIES:
            return self.source, "", edits.edit_mask(self.source, self.catalog)
        mask = self._untried(self.source)
        if mask.any():
            return self.source, "", mask
        incumbent = code_hash(self.source)
        ranked = sorted((statistics.fmean(runs_of(self.records, digest)), digest) for digest in self.sources
                        if digest != incumbent)
        for _, digest in ranked:
            source, description = self.sources[digest]
            if (untried := self._untried(source)).any():
                return source, description, untried
        return self.source, "", edits.edit_mask(self.source, self.catalog)  # all tried: duplicates it is

    def _untried(self, source: str) -> np.ndarray:
        """Catalog edits of source that apply and would run code never run before."""
        key = code_hash(source)
        if key not in self._neighbours:  # one parse per edit, once per train.py a policy is shown
            applies = edits.edit_mask(source, self.catalog)
            self._neighbours[key] = [code_hash(edits.apply_edit(source, e)) if ok else None
                                     for e, ok in zip(self.catalog, applies, strict=True)]
        return np.array([h is not None and not self.memory.is_duplicate(h) for h in self._neighbours[key]])

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

    def _learn(self, proposal: Proposal, observation: np.ndarray, mask: np.ndarray, reward: float) -> dict:
        """PPO bookkeeping: store the transition; every ppo_every transitions, one update."""
        stats = {"logprob": proposal.logprob, "value": proposal.value}
        if hasattr(self.policy, "learn"):  # a language-model policy keeps its own rollouts
            return {**stats, **self.policy.learn(proposal, reward)}
        if not isinstance(self.policy, OperatorPolicy) or proposal.action is None:
            return stats
        self.buffer.append({"obs": observation.tolist(), "action": proposal.action, "logprob": proposal.logprob,
                            "value": proposal.value, "reward": reward, "mask": mask.tolist()})
        if len(self.buffer) >= self.config.ppo_every:
            b = self.buffer
            obs = torch.tensor([t["obs"] for t in b], dtype=torch.float32)
            rewards = torch.tensor([t["reward"] for t in b], dtype=torch.float32)
            values = torch.tensor([t["value"] for t in b], dtype=torch.float32)
            dones = torch.zeros(len(b))
            with torch.no_grad():  # the task goes on: bootstrap from the state after the last transition
                next_value = self.policy.get_value(torch.from_numpy(self._observation(self.source))[None]).item()
            advantages, returns = compute_gae(rewards, values, dones, torch.tensor(next_value), torch.tensor(0.0),
                                              self.config.ppo.gamma, self.config.ppo.gae_lambda)
            batch = {"b_obs": obs, "b_actions": torch.tensor([t["action"] for t in b]),
                     "b_logprobs": torch.tensor([t["logprob"] for t in b], dtype=torch.float32),
                     "b_advantages": advantages, "b_returns": returns, "b_values": values,
                     "b_masks": torch.tensor([t["mask"] for t in b], dtype=torch.bool)}
            stats.update(ppo_step(self.policy, batch, self.optimizer, self.config.ppo))
            self.buffer = []
        return stats

    # records ------------------------------------------------------------------------------------------------

    def _monitor(self) -> _Watch:
        """The harness monitor of the next run: the stop rule against the incumbent's curve (none before there is
        an incumbent, or with early_stopping none), and a progress event per point for the dashboard."""
        stopper = None
        if self.stop_rule is not None and self.incumbent_values and self.incumbent_curve:
            # the curve is one run's, so the bar is put relative to that run's val_bpb: a run not headed below the
            # bar a near miss needs is not worth finishing
            owner = self.incumbent_values[0]
            bar = self.acceptance.retry_bar(self.incumbent_values)
            incumbent = Reference(tuple(self.incumbent_curve), owner, self._budget(), owner - bar)
            stopper = EarlyStopper(self.stop_rule, incumbent)
        return _Watch(stopper, self._emit)

    def _learn_curve(self, status: str, curve, val_bpb: float | None) -> None:
        """Tell the stop rule of a run that finished (the calibrated rule learns from them)."""
        if self.stop_rule is not None and status == Status.OK and val_bpb is not None and curve:
            self.stop_rule.learn(Reference(tuple(map(tuple, curve)), val_bpb, self._budget()))

    def _budget(self) -> float:
        import prepare

        return float(self.config.budget or prepare.get_profile(self.config.profile).time_budget)

    def _experiment_dir(self) -> Path:
        return self.run_dir / "experiments" / f"{len(self.ledger) + 1:05d}"

    def _not_run(self, reason: str) -> RunResult:
        return RunResult(status=Status.REJECTED, val_bpb=None, reason=reason, training_seconds=0.0, total_seconds=0.0,
                         peak_mem_mb=None, num_steps=0, curve=(), fingerprint={}, seed=0, run_dir="")

    def _record(self, result: RunResult, *, description: str, diff: str, policy: str, reward: Reward,
                accepted: bool, commit: str | None, parent: str | None, source: str, stats: dict,
                duplicate: bool = False, predictions: list | None = None, near_miss: bool = False) -> None:
        iteration = len(self.ledger) + 1
        record = Record(iteration=iteration, policy=policy, description=description, diff=diff, parent_commit=parent,
                        commit=commit, status=result.status.value, reason=result.reason, val_bpb=result.val_bpb,
                        reward=reward.total, reward_parts=reward.parts, accepted=accepted, curve=list(result.curve),
                        predictions=predictions or [], timings=result.timings, policy_stats=stats,
                        fingerprint=result.fingerprint,
                        peak_mem_mb=result.peak_mem_mb, training_seconds=result.training_seconds,
                        total_seconds=result.total_seconds, seed=result.seed, code_hash=code_hash(source))
        self.ledger.append(record)
        self.records.append(record)
        if result.status is Status.OK and policy not in (NOISE_POLICY, CONFIRM_POLICY):
            self.sources[record.code_hash] = (source, description)
        self.memory.add(self._experiment(record))
        self._learn_curve(result.status, result.curve, result.val_bpb)
        # a duplicate was never run, so it says nothing about whether train.py still works
        if not duplicate:
            self.failures = self.failures + 1 if result.status in FAILURES else 0
        shown = f"{result.val_bpb:.6f}" if result.val_bpb is not None else "-"
        print(f"[{iteration:4d}] {result.status.value:8s} val_bpb {shown} reward {reward.total:+.3f} "
              f"{'KEEP' if accepted else 'NEAR' if near_miss else '    '} {description}" + _why(result),
              flush=True)
        self._emit({"event": "record", "record": record})

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)


@dataclass
class _Pending:
    """A near miss waiting for its next run: its train.py, the val_bpb of its runs so far, its first run's curve."""

    source: str
    description: str
    diff: str
    values: list[float]
    curve: tuple


class _Watch:
    """What the harness calls after each progress line: the early stopper if any, and a progress event."""

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


def _why(result: RunResult) -> str:
    return f" ({result.reason[:120]})" if result.reason else ""


def run_loop(config: LoopConfig, on_event: Callable[[dict], None] | None = None,
             environment: Environment = run_experiment) -> str:
    """Run the loop of config.run_dir to its end; experiments come from environment (the real harness unless
    a synthetic or replayed one is given). Returns why it stopped."""
    loop = ResearchLoop(config, on_event, environment)
    try:
        return loop.run()
    finally:
        loop.close()


