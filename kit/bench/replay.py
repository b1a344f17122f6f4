"""Experiments served from recorded real runs, and from a surrogate fitted to them for configs never run.

Owns: `Surrogate` (for the final val_bpb, two model families over train.py's normalized hyperparameters, a
Gaussian process with the noise between seeds as its white-noise term and a random forest, averaged on log val_bpb
and pulled back to the baseline's recorded value as a config gets far from every recorded run; the k nearest recorded
runs for the chance of a crash or timeout, the curve's shape and the run time) with its held-out error for one-edit,
multi-edit and far configs, and `ReplayEnvironment`, which answers through the
harness's signature (kit.results.Environment): a config recorded under the seed asked for gets its recorded run back
exactly (curve, status, val_bpb, times); any other config or seed gets the surrogate's mean plus the fitted seed
noise, drawn once per config and seed, so a replayed world is deterministic and every policy meets the same one.
Does not own: recording runs (kit/bench/recorder.py) or the benchmark that compares agents on a replayed world
(kit/bench/agents.py).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kit import edits
from kit.bench.environments import DEFAULT_HARNESS, gate_rejection, moved_curve, serve_curve, simulated_result
from kit.bench.recorder import ran_alone
from kit.hyperparams import Hyperparameter
from kit.results import HarnessConfig, Monitor, RunResult, Status


@dataclass(frozen=True)
class ReplayConfig:
    seed: int = 0
    """The replayed world: which draws the surrogate makes for configs never recorded."""
    neighbours: int = 5
    """Recorded runs that decide a new config's chance of failing, its curve's shape and its run time."""
    restarts: int = 3
    """Restarts of the Gaussian process's hyperparameter fit."""
    model: str = "both"
    """Which family judges: "gp", "forest", or "both" (their mean on log val_bpb), so that no agent's own kind of
    model (Optuna's GP sampler, TPE's density trees) is the world's only judge."""
    reach: float = 2.0
    """How far a model's word carries, as a distance in the normalized space: at distance d from the nearest recorded
    run a prediction keeps exp(-d² / 2 reach²) of its difference from the baseline's value (at reach 2: 97 % at 0.5,
    88 % at 1.0, 61 % at 2.0, 32 % at 3.0). Fitted models extrapolate far from data (the GP predicts 2.44-3.30 for
    the design's Sobol points, 0.54-1.42 from every recorded run); this falls back instead. It costs accuracy where
    runs were recorded: on data/curves-cpu.jsonl.gz the held-out MAE of multi-edit configs is 0.069 at 1.0, 0.061 at
    2.0 and 0.058 with no fallback (4 folds). Fitted instead to data/design-cpu.jsonl.gz (41 cells recorded on one
    machine, 36 ok runs that move 7 or more knobs), the far runs' held-out MAE is 0.095 at 0.5, 0.072 at 1.0, 0.063
    at 2.0 and 0.062 with no fallback (5 folds; a constant: 0.379): where far runs exist the models carry further
    than 1.0, hence 2.0."""

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.restarts < 0 or self.model not in MODELS or self.reach <= 0:
            raise ValueError(f"need neighbours >= 1, restarts >= 0, model in {MODELS}, reach > 0, got {self}")


MODELS = ("gp", "forest", "both")
UNSURE = 0.5
"""A config is where the world is unsure when its prediction keeps less than this share of the model's word."""
FAR_KNOBS = 7
"""Configs that move this many knobs or more from the baseline count as far in the held-out error."""


def config_key(knobs: list[Hyperparameter], values: dict[str, Any]) -> tuple:
    """A hashable config: every knob's value, floats rounded so a recorded config and the same one parsed back from
    source compare equal."""
    return tuple(round(float(values[k.name]), 9) if isinstance(values[k.name], float) else values[k.name]
                 for k in knobs)


class Surrogate:
    """What a config never run would give: the final val_bpb (a GP's mean and sd), whether it fails (k nearest)."""

    def __init__(self, records: list[dict], knobs: list[Hyperparameter], config: ReplayConfig = ReplayConfig(),
                 baseline: dict[str, Any] | None = None):
        self.knobs, self.config, self.baseline = knobs, config, baseline
        self.records = [r for r in records if r["status"] in ("ok", "crash", "timeout")]
        if not any(r["status"] == "ok" for r in self.records):
            raise ValueError("a surrogate needs recorded runs that ended ok: record some with "
                             "`python -m kit bench record --profile cpu --runs 150`")
        self.X = np.array([self.vector(r["config"]) for r in self.records])
        ok = np.array([r["status"] == "ok" for r in self.records])
        self.ok_index = np.flatnonzero(ok)
        y = np.array([r["val_bpb"] for r in self.records if r["status"] == "ok"])
        # fitted on log val_bpb: a few bad configs land far above the rest, and on a log scale they stop
        # dominating the fit of the region that matters
        self.gp = self._fit(self.X[ok], np.log(y))
        from sklearn.ensemble import RandomForestRegressor

        self.forest = RandomForestRegressor(300, random_state=config.seed).fit(self.X[ok], np.log(y))
        self._typical = float(np.median(y))
        self._prior = self._fallback(np.log(y))

    def _fallback(self, log_y: np.ndarray) -> float:
        """What the world answers far from every recorded run, on log val_bpb: the baseline's recorded runs, so that a
        config nobody ran is worth neither more nor less than the baseline and a search that goes there gains
        nothing and loses nothing. (The typical recorded run, the GP's own prior, sits above the baseline when
        recordings explore and so punished whole-config moves; without recorded baseline runs it is all there is.)"""
        if self.baseline is not None:
            own = [i for i, r in enumerate(self.records[j] for j in self.ok_index)
                   if all(edits._same(r["config"][k.name], self.baseline[k.name]) for k in self.knobs)]
            if own:
                return float(np.mean(log_y[own]))
        return float(np.mean(log_y))

    def vector(self, values: dict[str, Any]) -> np.ndarray:
        return np.array([k.normalized(values[k.name]) for k in self.knobs])

    def _fit(self, X: np.ndarray, y: np.ndarray):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        kernel = (ConstantKernel(0.05, (1e-4, 10.0)) * Matern(np.ones(X.shape[1]), (0.05, 100.0), nu=2.5)
                  + WhiteKernel(1e-3, (1e-6, 1.0)))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=self.config.restarts,
                                      random_state=self.config.seed)
        with warnings.catch_warnings():  # a knob that does not matter runs its length scale to the bound, as it should
            warnings.simplefilter("ignore", ConvergenceWarning)
            return gp.fit(X, y)

    @property
    def _log_noise_sd(self) -> float:
        return float(np.sqrt(self.gp.kernel_.k2.noise_level) * self.gp._y_train_std)

    @property
    def noise_sd(self) -> float:
        """The fitted noise between runs of one config (the white-noise term), in val_bpb at a typical value."""
        return self._typical * self._log_noise_sd

    def predict(self, values: dict[str, Any]) -> tuple[float, float]:
        """Mean and sd of the expected final val_bpb (the sd is the GP's uncertainty, without the seed noise)."""
        x = self.vector(values)[None]
        gp, sd = self.gp.predict(x, return_std=True)
        forest = self.forest.predict(x)[0] if self.config.model != "gp" else 0.0
        log = {"gp": gp[0], "forest": forest, "both": (gp[0] + forest) / 2}[self.config.model]
        value = float(np.exp(self._prior + self.trust(values) * (log - self._prior)))
        return value, value * float(np.sqrt(max(sd[0] ** 2 - self._log_noise_sd ** 2, 0.0)))

    def trust(self, values: dict[str, Any]) -> float:
        """The share of the model's word a prediction keeps: 1 on a recorded ok run, falling with the distance to
        the nearest one (ReplayConfig.reach)."""
        distance = float(np.min(np.linalg.norm(self.X[self.ok_index] - self.vector(values), axis=1)))
        return float(np.exp(-distance ** 2 / (2 * self.config.reach ** 2)))

    def nearest(self, values: dict[str, Any], ok_only: bool = False) -> list[dict]:
        """The k nearest recorded runs in the normalized space (ok ones only, if asked)."""
        pool = self.ok_index if ok_only else np.arange(len(self.records))
        distance = np.linalg.norm(self.X[pool] - self.vector(values), axis=1)
        return [self.records[int(pool[i])] for i in np.argsort(distance, kind="stable")[: self.config.neighbours]]

    def cross_validate(self, baseline: dict[str, Any], folds: int = 5, seed: int = 0) -> dict[str, Any]:
        """Held-out error of the final val_bpb on ok runs, k-fold: the surrogate refitted without each fold. Also
        the mean absolute error of each family and of a constant (the training runs' median), by how many knobs a
        config moves from baseline (one-edit: 1; multi-edit: 2 to FAR_KNOBS - 1; far: more)."""
        from scipy.stats import spearmanr

        ok = [self.records[i] for i in self.ok_index]
        order = np.random.default_rng(seed).permutation(len(ok))
        predicted = {name: np.zeros(len(ok)) for name in ("world", *MODELS[:2], "constant")}
        for fold in range(folds):
            held = order[fold::folds]
            train = [r for i, r in enumerate(ok) if i not in set(held.tolist())]
            model = Surrogate(train, self.knobs, self.config, baseline)
            median = float(np.median([r["val_bpb"] for r in train if r["status"] == "ok"]))
            for i in held:
                predicted["world"][i] = model.predict(ok[i]["config"])[0]
                for name in MODELS[:2]:
                    predicted[name][i] = Surrogate.with_model(model, name).predict(ok[i]["config"])[0]
                predicted["constant"][i] = median
        actual = np.array([r["val_bpb"] for r in ok])
        moved = np.array([sum(not edits._same(r["config"][k.name], baseline[k.name]) for k in self.knobs) for r in ok])
        groups = {"one-edit": moved == 1, "multi-edit": (moved >= 2) & (moved < FAR_KNOBS), "far": moved >= FAR_KNOBS}
        errors = predicted["world"] - actual
        constant = predicted["constant"] - actual
        return {"runs": len(ok), "rmse": float(np.sqrt(np.mean(errors ** 2))), "mae": float(np.mean(np.abs(errors))),
                "spearman": float(spearmanr(predicted["world"], actual).statistic), "noise_sd": self.noise_sd,
                # what predicting the training runs' median would score: the bar a surrogate has to clear
                "constant_rmse": float(np.sqrt(np.mean(constant ** 2))),
                "constant_mae": float(np.mean(np.abs(constant))),
                "by_kind": {kind: {"runs": int(mask.sum()), **{name: float(np.mean(np.abs(p[mask] - actual[mask])))
                                                              if mask.any() else float("nan")
                                                              for name, p in predicted.items()}}
                            for kind, mask in groups.items()}}

    @staticmethod
    def with_model(surrogate: Surrogate, model: str) -> Surrogate:
        """The same fitted surrogate judging with one family (no refit)."""
        from copy import copy
        from dataclasses import replace

        other = copy(surrogate)
        other.config = replace(surrogate.config, model=model)
        return other


class ReplayEnvironment:
    """Recorded runs served again; the surrogate for the rest. Deterministic for a (config, seed) pair."""

    def __init__(self, baseline: str, records: list[dict], config: ReplayConfig = ReplayConfig()):
        self.config, self.baseline = config, baseline
        self.knobs = [k for k in edits.knobs(baseline) if k.low is not None or k.choices is not None
                      or k.kind == "bool"]
        usable = [r for r in records if r["status"] in ("ok", "crash", "timeout") and r.get("config") and ran_alone(r)]
        self.recorded: dict[tuple, list[dict]] = {}
        for r in usable:
            self.recorded.setdefault(config_key(self.knobs, r["config"]), []).append(r)
        self.surrogate = Surrogate(usable, self.knobs, config, {k.name: k.value for k in edits.knobs(baseline)})
        self.budget = float(usable[0]["budget"])
        # the seed a run gets when the harness is given none: the profile's, which most recorded runs used
        self.default_seed = Counter(r["seed"] for r in usable).most_common(1)[0][0]

    def __call__(self, source: str, run_dir: Path, config: HarnessConfig = DEFAULT_HARNESS,
                 monitor: Monitor | None = None) -> RunResult:
        seed = int(config.seed if config.seed is not None else self.default_seed)
        if rejection := gate_rejection(source, config):
            return simulated_result("replay", self.budget, seed, run_dir, Status.REJECTED, rejection)
        values = {k.name: k.value for k in edits.knobs(source)}
        same = [r for r in self.recorded.get(config_key(self.knobs, values), []) if r["seed"] == seed]
        if same:
            record = same[0]
            return self._serve(record["status"], record.get("reason") or "", record["curve"], record["val_bpb"],
                               record["training_seconds"], record["total_seconds"], seed, run_dir, monitor)
        # a recorded config under a seed never recorded is a new draw, not the recorded run again: the loop re-runs
        # near misses under new seeds to find lucky ones out, and a replay that repeated the luck would hide it
        return self._predict(values, seed, run_dir, monitor)

    def expected_bpb(self, source: str) -> float:
        """The surrogate's mean val_bpb for source, seed noise left out: what a config is worth in this world."""
        return self.surrogate.predict({k.name: k.value for k in edits.knobs(source)})[0]

    def cross_validate(self, folds: int = 5) -> dict[str, Any]:
        """The surrogate's held-out error (Surrogate.cross_validate), configs grouped by knobs moved from baseline."""
        return self.surrogate.cross_validate({k.name: k.value for k in edits.knobs(self.baseline)}, folds)

    def unsure(self, source: str) -> bool:
        """Whether source lies so far from every recorded run that its answer is mostly the baseline's value."""
        return self.surrogate.trust({k.name: k.value for k in edits.knobs(source)}) < UNSURE

    def _draw(self, values: dict[str, Any], *stream: int) -> np.random.Generator:
        digest = hashlib.sha256(repr(config_key(self.knobs, values)).encode()).hexdigest()[:12]
        return np.random.default_rng([self.config.seed, int(digest, 16), *stream])

    def _predict(self, values: dict[str, Any], seed: int, run_dir: Path, monitor: Monitor | None) -> RunResult:
        s = self.surrogate
        neighbours = s.nearest(values)
        failed = [r for r in neighbours if r["status"] != "ok"]
        # the config's own draw (its true value in this world) is the same for every seed; the seed adds noise
        world = self._draw(values, 0)
        rng = self._draw(values, 1, seed)
        if world.random() < len(failed) / len(neighbours):
            r = failed[0]
            return self._serve(r["status"], f"{r.get('reason') or r['status']} (replayed from a recorded neighbour)",
                               r["curve"], None, r["training_seconds"], r["total_seconds"], seed, run_dir, monitor)
        # the surrogate's mean, not a draw from its posterior: far from the recorded runs the posterior is wide, and
        # a policy that samples far away (TPE, CMA-ES) would harvest lucky draws no real run would give
        val_bpb = s.predict(values)[0] + s.noise_sd * float(rng.standard_normal())
        shape = s.nearest(values, ok_only=True)[0]
        return self._serve("ok", "", moved_curve(shape, val_bpb, self.budget), round(val_bpb, 6),
                           shape["training_seconds"], shape["total_seconds"], seed, run_dir, monitor)

    def _serve(self, status: str, reason: str, curve, val_bpb, trained: float, total: float, seed: int,
               run_dir: Path, monitor: Monitor | None) -> RunResult:
        return serve_curve("replay", self.budget, status, reason, curve, val_bpb, trained, total, seed, run_dir,
                           monitor)
