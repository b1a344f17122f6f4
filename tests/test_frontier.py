"""kit.frontier: a catalog policy never repeats an experiment; once the incumbent's edits are used up it edits the
best run not kept, so edits combine."""

from kit import edits
from kit.memory import code_hash

from .helpers import REPO, StandIn, ledger_records, loop_config


class _Flat(StandIn):
    """Every edit lands well above the baseline (nothing is kept), each at its own value."""

    def __init__(self, baseline: str):
        super().__init__(baseline, first=0.0, later=0.0)

    def __call__(self, source, run_dir, config, monitor=None):
        self.first = self.later = 2.6 + int(code_hash(source)[:6], 16) / 16 ** 6 / 10
        return super().__call__(source, run_dir, config, monitor)


def test_edits_of_the_best_run_follow_once_the_incumbents_are_used_up(tmp_path):
    baseline = (REPO / "train.py").read_text()
    catalog = edits.build_catalog(baseline)
    applies = edits.edit_mask(baseline, catalog)
    # distinct train.py one edit away (two edits may land on the same code)
    neighbours = len({code_hash(edits.apply_edit(baseline, e)) for e, ok in zip(catalog, applies, strict=True) if ok}
                     - {code_hash(baseline)})
    iterations = 3 + neighbours + 12
    run_loop_records = _run(tmp_path, baseline, iterations)
    agent = run_loop_records[3:]
    assert not any(r.status == "rejected" for r in agent), "no duplicates, no rejections"
    assert len({r.code_hash for r in agent}) == len(agent)
    first_round, combined = agent[:neighbours], agent[neighbours:]
    assert not any("on top of" in r.description for r in first_round)
    assert all("on top of" in r.description for r in combined)
    best = min(first_round, key=lambda r: r.val_bpb)
    # the first combination builds on the best single edit: its diff against the baseline holds two changes
    assert combined[0].description.endswith(f"on top of {best.description}")
    assert sum(line.startswith("+") and not line.startswith("+++") for line in combined[0].diff.splitlines()) == 2


def _run(tmp_path, baseline, iterations):
    from kit.loop import run_loop

    run_loop(loop_config(tmp_path, iterations=iterations, confirm_runs=0), environment=_Flat(baseline))
    return ledger_records(tmp_path / "run")
