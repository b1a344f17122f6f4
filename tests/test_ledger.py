"""kit.ledger: exact round trips, durability across a SIGKILL, one writer, finished records that never change, meta."""

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kit.ledger import Ledger, LedgerConfig, LedgerLocked, Record
from kit.results import Status

from .helpers import REPO, make_record

LOCKED = "another loop is running on this run directory"


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_records_round_trip_every_field_exactly(tmp_path):
    originals = [
        make_record(),
        make_record(iteration=4, status="crash", reason="RuntimeError: shape mismatch", val_bpb=None, reward=-1.0,
                    accepted=False, curve=[], predictions=[], peak_mem_mb=None, commit=None, seed=None, created=1e9),
        make_record(iteration=5, status=Status.PRUNED, reason="forecast 1.41 > incumbent 1.30", val_bpb=None,
                    reward=None, accepted=False, policy="random", parent_commit=None),
    ]
    with Ledger(tmp_path) as ledger:
        ids = [ledger.append(r) for r in originals]
        assert len(ledger) == 3
    assert ids == [1, 2, 3]
    with Ledger(tmp_path, readonly=True) as reader:
        got = reader.records()
    assert [r.id for r in got] == ids
    assert got[1].created == 1e9  # a creation time set by the caller is kept
    for original, back in zip(originals, got, strict=True):
        assert back.created is not None and back.created > 0
        expected = dataclasses.replace(original, id=back.id, created=back.created)
        assert back == expected
        for field in dataclasses.fields(Record):  # the same types too, not only equal values
            assert type(getattr(back, field.name)) is type(getattr(expected, field.name)), field.name
    assert got[0].val_bpb == 1.0 / 3.0 and got[0].reward == 0.1 + 0.2 and got[0].seed == 2**62 + 7
    assert got[0].description == "MATRIX_LR ×1.25 — ünïcode" and got[0].accepted is True
    assert got[2].status == "pruned" and type(got[2].status) is str
    assert [r.iteration for r in Ledger(tmp_path / "ledger.sqlite", readonly=True).records(after=1)] == [4, 5]


def test_records_hold_their_json_form_from_construction():
    record = make_record(curve=((0.5, np.float32(2.5)),), timings={"train": np.float64(3.25)}, policy_stats={1: "a"},
                         val_bpb=float("nan"), predictions=[np.arange(3)])
    assert record.curve == [[0.5, 2.5]] and type(record.timings["train"]) is float
    assert record.policy_stats == {"1": "a"} and record.predictions == [[0, 1, 2]]
    assert record.val_bpb is None  # SQLite has no NaN: "no value" is None before it is stored, not after


@pytest.mark.parametrize("changes, words", [
    ({"status": "exploded"}, "Record.status"),
    ({"status": "crash", "accepted": True}, "Record.accepted"),
    ({"iteration": -1}, "Record.iteration"),
    ({"seed": 2**64}, "Record.seed"),
    ({"commit": 7}, "Record.commit"),
    ({"training_seconds": float("nan")}, "Record seconds"),
    ({"curve": {"t": 1}}, "Record.curve"),
    ({"timings": {"train": object()}}, "Record.timings must be JSON"),
])
def test_a_malformed_record_is_refused_before_it_reaches_the_ledger(changes, words):
    with pytest.raises(ValueError, match=words):
        make_record(**changes)


def test_config_is_validated():
    with pytest.raises(ValueError, match="synchronous"):
        LedgerConfig(synchronous="OFF")
    with pytest.raises(ValueError, match="busy_timeout"):
        LedgerConfig(busy_timeout=-1)


def test_an_append_survives_a_sigkill_right_after_it_returns(tmp_path):
    """The child appends and kills itself at once: no close, no checkpoint, no atexit. The records must be there."""
    record = json.dumps(dataclasses.asdict(make_record()))
    done = _python(f"""
        import json, os, signal
        from kit.ledger import Ledger, Record
        ledger = Ledger({str(tmp_path)!r})
        for i in range(5):
            ledger.append(Record(**{{**json.loads({record!r}), "iteration": i}}))
        ledger.set_meta("loop", {{"next_iteration": 5}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (tmp_path / "ledger.sqlite-wal").stat().st_size > 0  # the records live only in the WAL: recovery is tested
    with Ledger(tmp_path) as ledger:  # the dead writer's lock went with it: a new loop may resume
        assert [r.iteration for r in ledger.records()] == [0, 1, 2, 3, 4]
        assert ledger.records()[4] == dataclasses.replace(make_record(), iteration=4, id=5,
                                                          created=ledger.records()[4].created)
        assert ledger.get_meta("loop") == {"next_iteration": 5}


def test_a_second_writer_is_refused_while_readers_work(tmp_path):
    with Ledger(tmp_path) as writer:
        writer.append(make_record(iteration=0))
        with pytest.raises(LedgerLocked) as refused:
            Ledger(tmp_path)
        message = str(refused.value)
        assert LOCKED in message and "\n" not in message and "readonly=True" in message
        other = _python(f"from kit.ledger import Ledger\nLedger({str(tmp_path)!r})")
        assert other.returncode == 1
        last = other.stderr.strip().splitlines()[-1]
        assert LOCKED in last and "pid" in last  # another process is told which one holds it
        with Ledger(tmp_path, readonly=True) as reader:
            assert len(reader) == 1
            writer.append(make_record(iteration=1))
            writer.set_meta("best", 1.25)
            assert [r.iteration for r in reader.records()] == [0, 1]  # a live reader sees new appends
            assert reader.get_meta("best") == 1.25
            with pytest.raises(PermissionError, match="readonly"):
                reader.append(make_record())
            with pytest.raises(PermissionError, match="readonly"):
                reader.set_meta("best", 1.0)
    with Ledger(tmp_path) as again:  # closed: the next loop may write
        assert len(again) == 2


def test_a_reader_needs_a_ledger(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ledger at"):
        Ledger(tmp_path / "nothing", readonly=True)


def test_finished_records_never_change(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.append(make_record())
        with pytest.raises(ValueError, match="appended once"):
            ledger.append(ledger.records()[0])
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="finished records never change"):
        db.execute("UPDATE records SET val_bpb = 0.1")
    with pytest.raises(sqlite3.DatabaseError, match="finished records never change"):
        db.execute("DELETE FROM records")
    db.close()


def test_meta_values_round_trip(tmp_path):
    state = {"incumbent": {"val_bpb": 0.1 + 0.2, "commit": "abc1234"}, "rewards": [1.5, -2.0, 1e-12],
             "pause": False, "strikes": 2, "note": "ünïcode\ttab", "nothing": None}
    with Ledger(tmp_path) as ledger:
        for key, value in state.items():
            ledger.set_meta(key, value)
        ledger.set_meta("strikes", 3)  # meta is loop state: it may be replaced
        ledger.set_meta("pair", (1, 2))
        ledger.append(make_record(), meta={"next_iteration": 4, "strikes": 0})  # one transaction with the record
        with pytest.raises(ValueError, match="must be JSON"):
            ledger.set_meta("bad", {1, 2})
        with pytest.raises(ValueError, match="must be JSON"):
            ledger.append(make_record(), meta={"bad": object()})
        assert len(ledger) == 1  # the refused append left nothing behind
    with Ledger(tmp_path, readonly=True) as reader:
        for key, value in state.items():
            if key != "strikes":
                assert reader.get_meta(key) == value and type(reader.get_meta(key)) is type(value), key
        assert reader.get_meta("strikes") == 0 and reader.get_meta("next_iteration") == 4
        assert reader.get_meta("pair") == [1, 2]  # JSON has no tuples
        assert reader.get_meta("missing") is None and reader.get_meta("missing", {"a": 1}) == {"a": 1}
