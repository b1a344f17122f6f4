"""Cheap worlds and the benchmarks over them: built on the kit, never imported by it.

    environments.py    a synthetic world with a known optimum (and what every stand-in world shares)
    replay.py          a world replayed from recorded real runs, with a surrogate for configs never run
    recorder.py        recording real learning curves into a dataset (data/curves-*.jsonl.gz)
    early_stopping.py  the stop rules and Optuna's pruners replayed on recorded curves
    agents.py          every policy through the unchanged loop, many seeds, on a stand-in world
    cli.py             `python -m kit bench …`

The scripts that drive real runs (bench/*.py at the repository's top) and the recorded results live beside them.
"""
