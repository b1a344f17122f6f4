"""autoresearch-rl: a reinforcement-learning agent that improves train.py on its own, and its harness.

The core (this package) never imports kit.bench; train.py never imports kit.

    cli.py          the command line (`python -m kit`, `autoresearch-rl`)
    arguments.py    what the command lines share: the one-line parser, argument types, defaults from dataclasses
    results.py      Status, RunResult, the Monitor and Environment protocols: the run vocabulary
    harness.py      one experiment: gate, sandbox, hard wall clock, progress stream, out-of-process evaluation
    gate.py         the static check of a train.py before it runs
    sandbox.py      process isolation (bubblewrap, unshare) and resource limits
    machine.py      how much of the machine a run and everything else used, read from /proc
    evaluate.py     the evaluator process: the val_bpb that counts
    seed_check.py   whether a train.py's result ignores the seed it is given
    hyperparams.py  train.py's ranged UPPER_CASE constants
    edits.py        the action space: typed edits, the catalog, unified diffs
    prompt.py       what a language-model policy reads and how its answer becomes a train.py
    policies/       what to try next: one protocol, one module per family, one registry
    ppo.py          the PPO update and its rollout
    memory.py       what the agent remembers: recent and best experiments, duplicates
    reward.py       what an experiment is worth to the policy
    acceptance.py   when an edit is kept: means of runs against the noise between seeds
    predictor.py    stop rules that forecast a running curve
    bound.py        the convergence bound's estimates
    loop.py         the research loop, step by step
    parallel.py     the same loop with several experiments at once, the driver the one writer of the ledger
    workers.py      where those experiments run: Ray workers, one GPU or a set of pinned cores each
    run_state.py    the loop's state, rebuilt from the ledger and updated by each record
    frontier.py     what a catalog policy edits next, so nothing runs twice
    stopping.py     when the loop stops or holds, and loop.json: whether it runs, how and why it ended
    repo.py         train.py's git history in a run directory
    ledger.py       durable storage of every record
    report.py       results.tsv, summary.md, progress.png, and the counts every view shares
    report_html.py  report.html: a self-contained page of a run directory
    mirror.py       the run directory as an Optuna study, for optuna-dashboard
    checkup.py      the setup notebook's machine check and noise floor
    dashboard.py    the live view in JupyterLab
    convergence.py  the convergence notebook's analysis
    ablation.py     the ablation notebook's runs and table
    bench/          synthetic and replayed worlds, the curve recorder, the early-stopping and agents benchmarks
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout the kit runs from: prepare.py, train.py, program.md and data/ live here."""
