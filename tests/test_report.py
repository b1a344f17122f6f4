"""kit.report: results.tsv in autoresearch's columns, progress.png and summary.md, from the ledger's records."""

from kit.ledger import Ledger
from kit.report import TSV_HEADER, tsv_status, write_report

from .helpers import make_record

RUNS = [  # (status, accepted, val_bpb, expected results.tsv status)
    ("ok", True, 1.500000, "keep"),
    ("ok", False, 1.520000, "discard"),
    ("pruned", False, None, "discard"),
    ("crash", False, None, "crash"),
    ("ok", True, 1.250000, "keep"),
    ("timeout", False, None, "crash"),
    ("rejected", False, None, "crash"),
    ("tampered", False, 0.100000, "crash"),  # a tampered run's number is never reported
    ("pruned", False, 1.400000, "discard"),
    ("ok", False, 4.0, "discard"),
    ("contended", False, None, "contended"),  # the machine was busy: neither kept nor discarded
]


def _report(tmp_path):
    with Ledger(tmp_path) as ledger:
        for i, (status, accepted, val_bpb, _) in enumerate(RUNS):
            ledger.append(make_record(iteration=i, status=status, accepted=accepted, val_bpb=val_bpb,
                                      reason="" if status == "ok" else f"{status} because\nof things",
                                      description=f"try\t{i}\nthings", peak_mem_mb=2048.0 if val_bpb else None))
        return ledger.records(), write_report(tmp_path / "report", ledger)


def test_results_tsv_has_autoresearchs_columns_and_one_row_per_record(tmp_path):
    records, paths = _report(tmp_path)
    assert set(paths) == {"results.tsv", "progress.png", "summary.md", "report.html"}
    lines = paths["results.tsv"].read_text().splitlines()
    assert lines[0] == TSV_HEADER == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == len(RUNS) and all(len(row) == 5 for row in rows)
    assert [row[3] for row in rows] == [expected for *_, expected in RUNS] == [tsv_status(r) for r in records]
    assert rows[0] == ["fedcba9", "1.500000", "2.0", "keep", "try 0 things"]
    assert rows[4][:4] == ["fedcba9", "1.250000", "2.0", "keep"]
    assert rows[8][1:4] == ["1.400000", "2.0", "discard"]
    for row, (status, *_rest, word) in zip(rows, RUNS, strict=True):
        if word == "crash":  # autoresearch zeroes the numbers of a crash and says what happened
            assert row[1:3] == ["0.000000", "0.0"] and f"({status}: {status} because of things)" in row[4]


def test_progress_png_is_a_real_image(tmp_path):
    from matplotlib.image import imread

    _, paths = _report(tmp_path)
    data = paths["progress.png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(paths["progress.png"])
    assert image.shape[:2] == (600, 1200) and image[..., :3].std() > 0.05  # drawn on, not a blank canvas
    assert not list(paths["progress.png"].parent.glob(".*.tmp"))  # written through a rename, nothing left over


def test_summary_states_counts_and_the_best_val_bpb(tmp_path):
    _, paths = _report(tmp_path)
    text = paths["summary.md"].read_text()
    assert ("11 experiments: 0 noise floor, 2 kept, 2 discarded, 2 pruned, 3 failed, 1 rejected, 1 contended (not "
            "judged).") in text
    for status, count in {"ok": 4, "pruned": 2, "crash": 1, "timeout": 1, "rejected": 1, "tampered": 1,
                          "contended": 1}.items():
        assert f"| {status} | {count} |" in text
    assert ("Best single run: 1.250000 (one run under one seed, not a mean: iteration 4, keep, policy ppo): "
            "try 4 things.") in text
    assert "improves" not in text
    assert "Time: 0h 11m 00s training" in text and "Policies: ppo 11." in text


def test_a_report_of_an_empty_ledger(tmp_path):
    with Ledger(tmp_path) as ledger:
        paths = write_report(tmp_path, ledger)
    assert paths["results.tsv"].read_text() == TSV_HEADER + "\n"
    assert paths["progress.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["summary.md"].read_text()
    assert ("0 experiments: 0 noise floor, 0 kept, 0 discarded, 0 pruned, 0 failed, 0 rejected, 0 contended (not "
            "judged).") in text
    assert "no loop has" not in paths["report.html"].read_text() and "not started" in paths["report.html"].read_text()
    assert "train.py now: not measured yet" in text and "Best single run: none yet" in text


def _summary(tmp_path, rows):
    """summary.md of a ledger of ok runs: (val_bpb, code hash, accepted, policy)."""
    with Ledger(tmp_path) as ledger:
        for i, (value, digest, accepted, policy) in enumerate(rows, start=1):
            ledger.append(make_record(iteration=i, val_bpb=value, code_hash=digest, accepted=accepted, policy=policy,
                                      description=f"experiment {i}"))
        return write_report(tmp_path, ledger)["summary.md"].read_text()


BASELINE, EDIT = "aa" * 32, "bb" * 32
NOISE_FLOOR = [(2.50, BASELINE, True, "noise-floor"), (2.52, BASELINE, False, "noise-floor"),
               (2.48, BASELINE, False, "noise-floor")]  # mean 2.50, standard deviation 0.02


def test_summary_judges_the_kept_train_py_by_the_mean_of_its_runs(tmp_path):
    text = _summary(tmp_path, [*NOISE_FLOOR,
                               (2.30, "cc" * 32, False, "ppo"),  # a lucky run never kept: not what train.py is now
                               (2.46, EDIT, False, "ppo"), (2.44, EDIT, True, "confirm")])  # a near miss, then kept
    headline = text.split("\n")[2]
    assert headline == ("train.py now: mean val_bpb **2.450000** over 2 run(s), against the baseline's 2.500000 over 3: "
                        "0.050000 lower (better), 2.00 %, 2.5 of that spread; 1 edit(s) kept; the noise floor (3 runs "
                        "of the baseline under different seeds) spreads 0.020000 (standard deviation).")
    assert ("Best single run: 2.300000 (one run under one seed, not a mean: iteration 4, discard, policy ppo): "
            "experiment 4.\n") in text


def test_the_best_single_run_of_the_kept_train_py_points_at_its_mean(tmp_path):
    text = _summary(tmp_path, [*NOISE_FLOOR, (2.40, EDIT, False, "ppo"), (2.46, EDIT, True, "confirm")])
    assert ("Best single run: 2.400000 (one run under one seed, not a mean: iteration 4, discard, policy ppo): "
            "experiment 4. It is one of the kept train.py's runs: their mean above is what that train.py is worth.") \
        in text


def test_a_lucky_noise_floor_seed_is_never_reported_as_an_improvement(tmp_path):
    lucky = [(2.50, BASELINE, True, "noise-floor"), (2.40, BASELINE, False, "noise-floor"),
             (2.60, BASELINE, False, "noise-floor")]
    text = _summary(tmp_path, [*lucky, (2.55, EDIT, False, "ppo"), (2.58, "cc" * 32, False, "ppo")])
    assert ("train.py now: **the baseline**, no edit kept: mean val_bpb **2.500000** over 3 run(s); the noise floor "
            "(3 runs of the baseline under different seeds) spreads 0.100000") in text
    assert "Best single run: 2.400000 (one run under one seed, not a mean: iteration 2, discard, policy noise-floor)" \
        in text
    assert "luck, not an improvement" in text
    assert "improves" not in text and "better" not in text


def test_progress_png_follows_the_kept_mean_not_the_best_single_run(tmp_path):
    from kit.report import incumbent_means

    rows = [*NOISE_FLOOR, (2.30, "cc" * 32, False, "ppo"), (2.46, EDIT, False, "ppo"), (2.44, EDIT, True, "confirm")]
    with Ledger(tmp_path) as ledger:
        for i, (value, digest, accepted, policy) in enumerate(rows, start=1):
            ledger.append(make_record(iteration=i, val_bpb=value, code_hash=digest, accepted=accepted, policy=policy))
        means = incumbent_means(ledger.records())
    expected = [(1, 2.50), (2, 2.51), (3, 2.50), (4, 2.50), (5, 2.50), (6, 2.45)]
    assert [i for i, _ in means] == [i for i, _ in expected]
    assert all(abs(m - e) < 1e-9 for (_, m), (_, e) in zip(means, expected, strict=True))


def test_report_html_is_one_self_contained_page_of_the_run(tmp_path):
    import json
    import re

    rows = [*NOISE_FLOOR, (2.30, "cc" * 32, False, "ppo"), (2.46, EDIT, False, "ppo"), (2.44, EDIT, True, "confirm")]
    with Ledger(tmp_path) as ledger:
        for i, (value, digest, accepted, policy) in enumerate(rows, start=1):
            ledger.append(make_record(iteration=i, val_bpb=value, code_hash=digest, accepted=accepted, policy=policy,
                                      description=f"experiment {i}", diff=f"-A = {i}\n+A = <{i + 1}>\n"))
        ledger.append(make_record(iteration=7, status="pruned", val_bpb=None, accepted=False, description="cut short",
                                  predictions=[{"progress": 0.3, "stop": True, "predicted": 2.9,
                                                "predicted_loss": 3.1, "reason": "worse"}]))
        (tmp_path / "ablation.json").write_text(json.dumps(
            [{"config": c, "seed": s, "status": "ok", "val_bpb": v, "num_steps": 10, "diff": ""}
             for c, vs in (("baseline", (2.50, 2.52)), ("QK-norm", (2.45, 2.49))) for s, v in enumerate(vs)]))
        page = write_report(tmp_path, ledger)["report.html"].read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # nothing to fetch: it opens offline
    assert page.count("src='data:image/png;base64,") == 2  # progress and curves (the ablation left no chart)
    sections = re.findall(r"<h2>(.*?)</h2>", page)
    assert sections == ["Where it stands", "Learning curves", "Kept edits", "Ablation", "Every experiment",
                        "Environment"]
    assert "train.py now: mean val_bpb <b>2.450000</b> over 2 run(s)" in page
    assert "7 experiments: 3 noise floor, 1 kept, 2 discarded, 1 pruned" in page
    kept = page.split("<h2>Kept edits</h2>")[1].split("<h2>")[0]
    assert "experiment 6" in kept and "+A = &lt;7&gt;" in kept and "2.460000, 2.440000" in kept
    ablation = page.split("<h2>Ablation</h2>")[1].split("<h2>")[0]
    assert "QK-norm" in ablation and "-0.0400" in ablation
    assert page.split("<h2>Every experiment</h2>")[1].split("<h2>")[0].count("<tr>") == 1 + 7
