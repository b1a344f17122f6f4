"""Cheap worlds and the benchmarks over them: built on the kit, never imported by it.

    environments.py    a synthetic world with a known optimum (and what every stand-in world shares)
    family.py          a family of synthetic worlds drawn from a prior; held-out members for the benchmark
    replay.py          a world replayed from recorded real runs, with a surrogate for configs never run
    tabular.py         a world answered by the nearest cell of a recorded design
    recorder.py        recording real learning curves into a dataset (data/curves-*.jsonl.gz, data/design-*)
    early_stopping.py  the stop rules and Optuna's pruners replayed on recorded curves
    agents.py          every policy through the unchanged loop, many seeds, on stand-in worlds
    comparison.py      the agents benchmark's measures, paired tests and report
    pretrain.py        pre-training the PPO policy over research runs on development members of the family
    cli.py             `python -m kit bench …`

The scripts that drive real runs (bench/*.py at the repository's top) and the recorded results live beside them.
"""
