"""How an Optuna sampler should be told about a run the stop rule ended early, chosen by measurement: as a finished
trial at the val_bpb the stop rule forecast for its end (the kit's choice), or as Optuna's PRUNED state with the
forecast as its last intermediate value (what a user's pruner leaves behind). Writes bench/pruned_trials.md.

    python bench/pruned_trials.py --environment family,tabular --seeds 20 --experiments 300 --jobs 2

Each sampler runs twice through the unchanged loop on the same worlds and seeds, once told each way; the pairs are
compared on what a user gets (the final train.py under fresh seeds) with a two-sided Wilcoxon test, Holm-corrected
over every (world, sampler) pair. The variants exist only here: they are registered for this process (and its
forked workers) under `<sampler>-pruned`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from kit import REPO_ROOT
from kit.bench import agents
from kit.bench.cli import CURVES, DESIGN, WORLDS, build_world
from kit.bench.comparison import REEVALUATION_SEEDS, World, holm, measures
from kit.policies import REGISTRY, Entry
from kit.policies.samplers import CMAESPolicy, GPPolicy, SamplerConfig, TPEPolicy


def told_as_pruned(base: type) -> type:
    """base, built to tell a pruned run as Optuna's PRUNED state."""

    class Pruned(base):
        name = f"{base.name}-pruned"

        @classmethod
        def build(cls, setup):
            return cls(setup.knobs, seed=setup.seed, config=SamplerConfig(pruned_as="pruned"))

    Pruned.__name__ = Pruned.__qualname__ = f"{base.__name__}Pruned"
    return Pruned


SAMPLERS = {policy.name: policy for policy in (TPEPolicy, CMAESPolicy, GPPolicy)}
for _sampler in SAMPLERS.values():
    _variant = told_as_pruned(_sampler)
    globals()[_variant.__name__] = _variant  # the registry finds a policy as module:attribute
    REGISTRY[_variant.name] = Entry(f"{__name__}:{_variant.__name__}", f"{_sampler.name}, pruned runs as PRUNED")


def compare(world: World, samplers: list[str]) -> list[dict]:
    from scipy.stats import wilcoxon

    name, measure = next(iter(measures(world).items()))
    rows = []
    for sampler in samplers:
        forecast = {t.seed: t for t in world.of(sampler)}
        pruned = {t.seed: t for t in world.of(f"{sampler}-pruned")}
        seeds = [s for s in forecast if s in pruned and not math.isnan(measure(forecast[s]) + measure(pruned[s]))]
        d = np.array([measure(pruned[s]) - measure(forecast[s]) for s in seeds])
        p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
        share = {label: 100 * sum(t.losses["pruned"] for t in ts.values()) / sum(len(t.best) for t in ts.values())
                 for label, ts in (("forecast", forecast), ("pruned", pruned))}
        rows.append({"world": world.name, "sampler": sampler, "seeds": len(seeds), "p": p, "difference": np.median(d),
                     "forecast": np.median([measure(forecast[s]) for s in seeds]),
                     "pruned": np.median([measure(pruned[s]) for s in seeds]), "share": share,
                     "hours": {label: np.median([t.hours[-1] for t in ts.values()])
                               for label, ts in (("forecast", forecast), ("pruned", pruned))}})
    for row, q in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = q
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environment", default="family,tabular")
    parser.add_argument("--samplers", default="tpe,cmaes", help=f"comma-separated, of {', '.join(SAMPLERS)}")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--experiments", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "pruned_trials.md")
    args = parser.parse_args()
    samplers = [s for s in args.samplers.split(",") if s]
    if not samplers or any(s not in SAMPLERS for s in samplers):
        raise SystemExit(f"error: --samplers takes some of {', '.join(SAMPLERS)}; got {args.samplers!r}")
    names = [name for name in args.environment.split(",") if name]
    if not names or any(name not in WORLDS for name in names):
        raise SystemExit(f"error: --environment takes some of {', '.join(WORLDS)}; got {args.environment!r}")
    baseline = (REPO_ROOT / "train.py").read_text()
    world_args = argparse.Namespace(seeds=args.seeds, design=DESIGN, curves=CURVES, synthetic_seed=1)
    built = [build_world(name, baseline, world_args) for name in names]
    policies = [name for s in samplers for name in (s, f"{s}-pruned")]
    started = time.perf_counter()
    worlds = [World(name, description, agents.run_all(policies, args.seeds, factory, args.experiments, budget,
                                                      jobs=args.jobs))
              for name, description, factory, budget in built]
    minutes = (time.perf_counter() - started) / 60
    rows = [row for world in worlds for row in compare(world, samplers)]
    command = (f"python bench/pruned_trials.py --environment {args.environment} --samplers {args.samplers} "
               f"--seeds {args.seeds} --experiments {args.experiments} --jobs {args.jobs}")
    lines = ["# Telling a sampler about a pruned run: the forecast, or Optuna's PRUNED state", "",
             f"Measured by `{command}` in one run on {platform.machine()} with {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d')}, in {minutes:.0f} minutes. Each sampler ran the unchanged loop twice per "
             "seed on the same world: told a pruned run as a finished trial at the stop rule's forecast "
             "(`forecast`), or as a PRUNED trial with the forecast as its last intermediate value (`pruned`). "
             f"The measure is the final train.py's mean val_bpb under {len(REEVALUATION_SEEDS)} fresh seeds "
             "(lower is better); the test is Wilcoxon's signed-rank over seeds, two-sided, Holm-corrected over "
             "the rows.", "",
             "| world | sampler | seeds | forecast (median) | pruned (median) | median difference, pruned − forecast "
             "| p | p (Holm) | pruned experiments %, forecast / pruned | hours per run, forecast / pruned |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['sampler']} | {r['seeds']} | {r['forecast']:.4f} | {r['pruned']:.4f} | "
                     f"{r['difference']:+.4f} | {r['p']:.3g} | {r['p_holm']:.3g} | {r['share']['forecast']:.1f} / "
                     f"{r['share']['pruned']:.1f} | {r['hours']['forecast']:.2f} / {r['hours']['pruned']:.2f} |")
    lines += ["", "Worlds:", *(f"- {w.name}: {w.description}" for w in worlds)]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
