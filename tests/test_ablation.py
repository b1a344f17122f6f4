import dataclasses
from pathlib import Path

from kit import REPO_ROOT, ablation
from kit.results import RunResult, Status


def test_a_contended_run_is_run_again_and_only_the_clean_one_counts(tmp_path, monkeypatch):
    calls = []

    def fake_run(source, run_dir, config):
        calls.append(config.seed)
        contended = len(calls) == 1
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return dataclasses.replace(RunResult.not_run(""), status=Status.CONTENDED if contended else Status.OK,
                                   val_bpb=None if contended else 2.5, reason="shared" if contended else "")

    monkeypatch.setattr(ablation, "run_experiment", fake_run)
    monkeypatch.setattr(ablation, "wait_until_quiet", lambda *a, **k: 0.0)
    baseline = (REPO_ROOT / "train.py").read_text()
    rows = ablation.run_ablation(baseline, tmp_path, "smoke", seeds=1, names=["QK-norm"], log=lambda _: None)
    assert [r["status"] for r in rows] == ["ok", "ok"] and len(calls) == 3  # the baseline twice, QK-norm once
    again = ablation.run_ablation(baseline, tmp_path, "smoke", seeds=1, names=["QK-norm"], log=lambda _: None)
    assert again == rows and len(calls) == 3  # recorded clean runs are reused
