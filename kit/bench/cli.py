"""The benchmarks' command line: `python -m kit bench …`.

    python -m kit bench record --profile cpu --runs N [--design] [--out data/curves-cpu.jsonl.gz]
    python -m kit bench early-stopping [--curves data/curves-cpu.jsonl.gz] [--orders 50]
    python -m kit bench agents [--environment family,replay,tabular,synthetic] [--seeds 20] [--experiments 300]
    python -m kit bench pretrain [--episodes 60] [--seed 0]

Owns: their arguments, one-line errors for bad input, and the reports' headers (what was measured, how, where).
Does not own: the benchmarks (the modules beside this one).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time
from pathlib import Path

from kit import REPO_ROOT
from kit.arguments import SANDBOXES, OneLineParser, UsageError, ensure_data, positive, positive_int, profiles
from kit.policies import REGISTRY

CURVES = REPO_ROOT / "data" / "curves-cpu.jsonl.gz"
DESIGN = REPO_ROOT / "data" / "design-cpu.jsonl.gz"
CACHE = REPO_ROOT / "bench" / ".cache"
WORLDS = ("family", "replay", "tabular", "synthetic")
NO_CURVES = "record some with `python -m kit bench record --profile cpu --runs 150`"
NO_DESIGN = "record a design with `python -m kit bench record --profile cpu --design --runs 200`"
# what the agents benchmark can run: every policy that needs nothing beyond the loop (no model, no endpoint), and
# PPO from scratch beside the pre-trained one
BENCHABLE = tuple(n for name, entry in REGISTRY.items() if not entry.needs
                  for n in ((name, "ppo-scratch") if name == "ppo" else (name,)))


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m kit bench", description="Record learning curves; benchmark early "
                           "stopping and agents on them.")
    benches = parser.add_subparsers(dest="bench", required=True, parser_class=OneLineParser)
    rec = benches.add_parser("record", help="run full experiments of train.py and random edits of it; append each "
                             "run's curve to a dataset (resumes)")
    rec.add_argument("--profile", choices=profiles(), default="cpu")
    rec.add_argument("--runs", type=positive_int, required=True, help="stop once the dataset holds this many runs")
    rec.add_argument("--out", type=Path, help="default: data/curves-<profile>.jsonl.gz (data/design-<profile>."
                     "jsonl.gz with --design)")
    rec.add_argument("--design", action="store_true", help="record the tabular world's design instead: catalog "
                     "walks and Sobol points around the baseline, each under the same seeds")
    rec.add_argument("--seed", type=int, default=0, help="seed of the choice of runs")
    rec.add_argument("--budget", type=positive, default=None, help="training seconds (default: the profile's)")
    rec.add_argument("--sandbox", choices=SANDBOXES, default="auto")
    rec.set_defaults(run=_record)

    stop = benches.add_parser("early-stopping", help="replay recorded curves under every stop rule and Optuna's "
                              "pruners; write bench/early_stopping.md and a plot")
    stop.add_argument("--curves", type=Path, default=CURVES)
    stop.add_argument("--orders", type=positive_int, default=50, help="random orders of the runs to replay")
    stop.add_argument("--seed", type=int, default=0)
    stop.add_argument("--noise-sigmas", type=float, default=2.0,
                      help="a run is kept if it beats the incumbent by this many baseline standard deviations "
                           "(the loop's default)")
    stop.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "early_stopping.md")
    stop.set_defaults(run=_early_stopping)

    agents = benches.add_parser("agents", help="every policy through the loop, many seeds, on stand-in worlds; write "
                                "bench/agents.md and a plot")
    agents.add_argument("--environment", default="family,replay,tabular", help="comma-separated worlds: family "
                        "(held-out members of the synthetic family, one per seed), replay (a surrogate of recorded "
                        "runs), tabular (the nearest cell of a recorded design), synthetic (the easy "
                        "catalog-shaped one)")
    agents.add_argument("--curves", type=Path, default=CURVES)
    agents.add_argument("--design", type=Path, default=DESIGN, help="the tabular world's recording")
    agents.add_argument("--policies", default=",".join(BENCHABLE), help="comma-separated")
    agents.add_argument("--seeds", type=positive_int, default=20)
    agents.add_argument("--experiments", type=positive_int, default=300, help="agent experiments per run")
    agents.add_argument("--synthetic-seed", type=int, default=1, help="which synthetic objective")
    agents.add_argument("--jobs", type=positive_int, default=1, help="worker processes (one core each)")
    agents.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "agents.md")
    agents.add_argument("--cache", type=Path, default=CACHE, help="where each finished run is kept, by world and "
                        "code, so that an interrupted benchmark resumes (default: bench/.cache)")
    agents.set_defaults(run=_agents)

    pre = benches.add_parser("pretrain", help="pre-train the PPO policy over research runs on development members of "
                             "the synthetic family; write the weights `--policy ppo` starts from, and a report")
    pre.add_argument("--episodes", type=positive_int, default=60, help="research runs to learn from (default: 60)")
    pre.add_argument("--seed", type=int, default=0, help="the same seed makes the same weights")
    pre.add_argument("--out", type=Path, default=None, help="default: the shipped kit/policies/ppo_pretrained.pt")
    pre.add_argument("--report", type=Path, default=REPO_ROOT / "bench" / "pretrain.md")
    pre.add_argument("--validate", type=int, default=16, help="then run the shipped weights, PPO from scratch and "
                     "the peers on this many validation members (0: none; only with the shipped --out)")
    pre.add_argument("--validate-experiments", type=positive_int, default=100)
    pre.add_argument("--jobs", type=positive_int, default=1, help="worker processes of the validation")
    pre.set_defaults(run=_pretrain)
    return parser


def _read_curves(path: Path, hint: str = NO_CURVES) -> list[dict]:
    from kit.bench.recorder import read_dataset

    if not path.exists():
        raise UsageError(f"no recorded runs at {path}: {hint}")
    return read_dataset(path)


def _record(args: argparse.Namespace) -> int:
    from kit.bench.recorder import record

    ensure_data(args.profile)
    name = "design" if args.design else "curves"
    out = getattr(args, "out", None) or REPO_ROOT / "data" / f"{name}-{args.profile}.jsonl.gz"
    records = record(out, args.runs, profile=args.profile, seed=args.seed, budget=args.budget, sandbox=args.sandbox,
                     design=args.design)
    print(f"{len(records)} runs in {out}")
    return 0


def _early_stopping(args: argparse.Namespace) -> int:
    from kit.bench import early_stopping

    records = _read_curves(args.curves)
    try:
        stream = early_stopping.Stream.of(early_stopping.load_runs(records), noise_sigmas=args.noise_sigmas)
    except ValueError as error:
        raise UsageError(str(error)) from None
    summaries = early_stopping.run_benchmark(stream, args.orders, seed=args.seed)
    devices = sorted({str(r.get("device")) for r in records})
    machine = f"curves recorded on {', '.join(devices)}; replayed on {platform.machine()} with {os.cpu_count()} cores"
    command = f"python -m kit bench early-stopping --curves {args.curves.name} --orders {args.orders}"
    out = early_stopping.write_report(summaries, stream, records, args.orders, args.out, machine, command)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _agents(args: argparse.Namespace) -> int:
    from kit.bench import agents, comparison

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if any(p not in BENCHABLE for p in policies) or len(policies) < 2:
        raise UsageError(f"--policies takes two or more of {', '.join(BENCHABLE)}; got {args.policies!r}")
    names = [w.strip() for w in args.environment.split(",") if w.strip()]
    if not names or any(w not in WORLDS for w in names):
        raise UsageError(f"--environment takes one or more of {', '.join(WORLDS)}; got {args.environment!r}")
    if args.cache.exists() and not args.cache.is_dir():
        raise UsageError(f"--cache {args.cache} is a file: give a folder (it is made if missing)")
    baseline = (REPO_ROOT / "train.py").read_text()
    built = [build_world(name, baseline, args) for name in names]  # every world first: a bad one fails before hours run
    caches = [_cache(args, name) for name in names]  # named by the code as it is now, before anything runs
    started = time.perf_counter()
    worlds = [comparison.World(name, description,
                               agents.run_all(policies, args.seeds, factory, args.experiments, budget, jobs=args.jobs,
                                              cache=cache))
              for (name, description, factory, budget), cache in zip(built, caches, strict=True)]
    minutes = (time.perf_counter() - started) / 60
    core_minutes = sum(t.agent_seconds for w in worlds for t in w.trajectories) / 60
    command = (f"python -m kit bench agents --environment {','.join(names)} --seeds {args.seeds} "
               f"--experiments {args.experiments} --policies {','.join(policies)} --jobs {args.jobs}")
    header = ["# Agents head to head",
              f"Measured by `{command}` on {platform.machine()} with {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}, in {minutes:.0f} minutes; the runs' own times sum to {core_minutes:.0f} "
              "core-minutes (runs an earlier, interrupted sitting of the same code finished are read from its cache "
              "in bench/.cache, so the first figure can be the smaller). Every policy runs the unchanged loop (a "
              "noise floor of 3 baseline runs, the gate, same-progress early stopping, keeping an edit when the mean "
              "of its runs beats the incumbent's by 2σ scaled to the runs on each side, near misses re-run under up "
              f"to 2 new seeds, git, ledger) for {args.experiments} experiments per seed; an experiment is a "
              "proposal or a re-run of a near miss, so a duplicate or rejected proposal counts as one, and so does "
              "each re-run. Seed i of every policy meets the same world, so results pair by seed."]
    out = comparison.write_report(worlds, args.out, header)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from kit.bench.pretrain import VALIDATION, PretrainConfig, pretrain, validate, write_report
    from kit.policies import pretrained

    out = args.out or pretrained.WEIGHTS
    if out.is_dir() or not out.parent.is_dir():
        raise UsageError(f"--out {out}: give a file in an existing folder")
    if not 0 <= args.validate <= len(VALIDATION) or (args.validate and out.resolve() != pretrained.WEIGHTS.resolve()):
        raise UsageError(f"--validate takes 0 to {len(VALIDATION)} members, and only with the shipped --out (the "
                         f"loop's ppo loads those weights); got --validate {args.validate} --out {out}")
    config = PretrainConfig(episodes=args.episodes, seed=args.seed)
    torch.set_num_threads(1)  # the network is small: one thread is faster here, and the same on every machine
    started, cpu = time.perf_counter(), time.process_time()
    summaries = pretrain(config, out)
    minutes, cpu_minutes = (time.perf_counter() - started) / 60, (time.process_time() - cpu) / 60
    command = f"python -m kit bench pretrain --episodes {args.episodes} --seed {args.seed}" + (
        f" --validate {args.validate} --validate-experiments {args.validate_experiments} --jobs {args.jobs}"
        if args.validate else "")
    size = out.stat().st_size / 1024
    header = (f"Made by `{command}` on {platform.machine()} with {os.cpu_count()} cores, "
              f"{time.strftime('%Y-%m-%d')}: pre-training took {minutes:.1f} minutes, of which this process computed "
              f"{cpu_minutes:.1f} (on one core: the two differ when other work shared the machine); the weights, "
              f"{out.name}, take {size:.0f} KiB.")
    validation = None
    if args.validate:
        started = time.perf_counter()
        validation = validate(args.validate, args.validate_experiments, jobs=args.jobs)
        header += f" The validation below took {(time.perf_counter() - started) / 60:.1f} minutes more."
    report = write_report(summaries, args.report, header, validation=validation)
    print(f"wrote {out} and {report}")
    return 0


def _cache(args: argparse.Namespace, name: str) -> Path:
    """The world's own folder of finished runs: named by everything its results follow from (see fingerprint)."""
    from kit.bench.agents import fingerprint

    data = {"replay": args.curves, "tabular": args.design}.get(name)
    parts = [name, str(args.experiments), str(args.synthetic_seed) if name == "synthetic" else "",
             hashlib.sha256(data.read_bytes()).hexdigest() if data else ""]
    return args.cache / f"agents-{name}-{fingerprint(*parts)}"


def build_world(name: str, baseline: str, args: argparse.Namespace):
    """(name, description, seed -> environment, training budget) of one world the agents benchmark runs on."""
    if name == "synthetic":
        from kit.bench.environments import SyntheticConfig, SyntheticEnvironment

        environment = SyntheticEnvironment(baseline, SyntheticConfig(seed=args.synthetic_seed))
        return name, environment.describe(), lambda seed: environment, environment.config.budget
    if name == "family":
        from kit.bench.family import FamilyConfig, SyntheticFamily, held_out_member

        def member(seed: int) -> SyntheticFamily:
            return SyntheticFamily(baseline, FamilyConfig(member=held_out_member(seed)))

        first, last = held_out_member(0), held_out_member(args.seeds - 1)
        return (name, f"the synthetic family (kit/bench/family.py), seed i on held-out member {first} + i "
                f"({first}–{last}), members no policy or test was tuned on; e.g. {member(0).describe()}", member,
                FamilyConfig().budget)
    if name == "tabular":
        from kit.bench.replay import ReplayEnvironment
        from kit.bench.tabular import MAX_DRIFT, TabularEnvironment

        records = _read_curves(args.design, NO_DESIGN)
        try:
            environment = TabularEnvironment(baseline, records)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if environment.drift() > MAX_DRIFT:
            raise UsageError(f"{args.design}: the baseline anchors' steps are {100 * environment.drift():.0f} % apart "
                             "(the machine's speed changed during the recording); record the design again on one "
                             "machine")
        # the replay world's models fitted to this design instead: their error on far configs recorded on one machine
        check = ReplayEnvironment(baseline, records).cross_validate()
        return (name, f"{environment.describe()}, from {args.design.name}. The replay world's surrogate, fitted to "
                f"this design, has 5-fold held-out MAE by how far a config moves from the baseline: {_by_kind(check)}",
                lambda seed: environment, environment.budget)
    from kit.bench.replay import ReplayEnvironment

    try:
        environment = ReplayEnvironment(baseline, _read_curves(args.curves))
    except ValueError as error:
        raise UsageError(str(error)) from None
    cv = environment.cross_validate()
    description = (f"replayed from {sum(len(v) for v in environment.recorded.values())} recorded runs in "
                   f"{args.curves.name}, judged by the mean of a Gaussian process and a random forest on log val_bpb, "
                   f"pulled back to the baseline's recorded value far from every recorded run (reach "
                   f"{environment.config.reach:g}). The surrogate's 5-fold held-out error on {cv['runs']} ok runs: "
                   f"RMSE {cv['rmse']:.4f}, MAE {cv['mae']:.4f}, Spearman {cv['spearman']:.2f}; a constant "
                   f"predictor: RMSE {cv['constant_rmse']:.4f}, MAE {cv['constant_mae']:.4f}; fitted seed noise "
                   f"{cv['noise_sd']:.4f}. MAE by how far a config moves from the baseline: {_by_kind(cv)}")
    return name, description, lambda seed: environment, environment.budget


def _by_kind(cv: dict) -> str:
    """A surrogate's held-out MAE per kind of config (Surrogate.cross_validate), the world's and each family's."""
    return "; ".join(f"{kind} ({e['runs']} runs): " + (", ".join(f"{name} {e[name]:.4f}" for name in
                                                                ("world", "gp", "forest", "constant"))
                                                      if e["runs"] else "none recorded")
                     for kind, e in cv["by_kind"].items())


def main(argv: list[str]) -> int:
    """Run one benchmark command (kit.cli.main prints a UsageError as one line, exit status 2)."""
    args = _parser().parse_args(argv)
    return args.run(args)
