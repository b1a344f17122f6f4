"""kit.memory: normalized-code hashes, the recent window and the best, the observation, rendering and resume."""

import json
import math
import random

import numpy as np
import pytest

from kit.memory import OBSERVATION_NAMES, Experiment, Memory, MemoryConfig, code_hash

SOURCE = '''"""A train.py-like module."""
import math

DEPTH = 4                  # transformer blocks [1, 16]
MATRIX_LR = 0.02           # Muon learning rate [0.001, 0.2]


def schedule(step):
    """Linear warm-up."""
    return min(1.0, step / 10)
'''

SAME_CODE = '''"""A different module docstring, and the comments and layout changed too."""
import math
DEPTH = 4    # now a different comment
MATRIX_LR = 0.02

def schedule(step):
    # no docstring here, a comment instead
    return min( 1.0,  step / 10 )
'''


def experiment(index: int, val_bpb: float | None = 1.0, status: str = "ok", reward: float = 0.0,
               accepted: bool = False, description: str = "") -> Experiment:
    return Experiment(index=index, code_hash=f"h{index}", description=description or f"edit {index}", status=status,
                      val_bpb=val_bpb, reward=reward, accepted=accepted, config=(0.25, 0.5))


def filled_memory(n: int = 100, seed: int = 0) -> tuple[Memory, list[Experiment]]:
    rng = random.Random(seed)
    statuses = ["ok", "ok", "ok", "pruned", "crash", "timeout", "rejected"]
    experiments = []
    for i in range(n):
        status = rng.choice(statuses)
        val = round(rng.uniform(0.9, 1.3), 6) if status in ("ok", "pruned") else None
        experiments.append(experiment(i, val, status, reward=rng.uniform(-2, 1), accepted=rng.random() < 0.3))
    memory = Memory()
    for e in rng.sample(experiments, len(experiments)):  # arrival order is shuffled
        memory.add(e)
    return memory, experiments


def test_code_hash_ignores_comments_whitespace_and_docstrings():
    assert code_hash(SOURCE) == code_hash(SAME_CODE)
    assert len(code_hash(SOURCE)) == 64


def test_code_hash_sees_changed_constants_and_code():
    assert code_hash(SOURCE) != code_hash(SOURCE.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.025"))
    assert code_hash(SOURCE) != code_hash(SOURCE.replace("DEPTH = 4", "DEPTH = 5"))
    assert code_hash(SOURCE) != code_hash(SOURCE.replace("step / 10", "step / 20"))
    # a string that is not a docstring is code
    assert code_hash("x = 1\n") != code_hash("x = 1\n'not a docstring'\n")


def test_code_hash_of_unparsable_source_is_stable():
    broken = "def f(:\n    pass\n"
    assert code_hash(broken) == code_hash(broken + "\n\n")
    assert code_hash(broken) != code_hash("def f(:\n    return\n")


def test_keeps_exactly_the_most_recent_and_the_best_whatever_the_arrival_order():
    memory, experiments = filled_memory(100)
    assert len(memory) == 100
    assert [e.index for e in memory.recent()] == list(range(68, 100))
    ok = sorted((e for e in experiments if e.status == "ok"), key=lambda e: (e.val_bpb, e.index))
    assert [e.index for e in memory.best()] == [e.index for e in ok[:5]]
    assert all(e.status == "ok" for e in memory.best())


def test_best_ignores_better_values_of_failed_runs_and_breaks_ties_by_index():
    memory = Memory(MemoryConfig(recent=4, best=2))
    memory.add(experiment(3, 1.0))
    memory.add(experiment(1, 1.0))
    memory.add(experiment(2, 0.5, status="pruned"))
    memory.add(experiment(4, 1.1))
    assert [e.index for e in memory.best()] == [1, 3]


def test_duplicates_are_remembered_beyond_the_window():
    memory = Memory(MemoryConfig(recent=2, best=1))
    hashes = [code_hash(SOURCE.replace("DEPTH = 4", f"DEPTH = {d}")) for d in range(1, 6)]
    for i, h in enumerate(hashes):
        memory.add(Experiment(i, h, f"DEPTH -> {i + 1}", "ok", 1.0 + i, 0.0, False))
    assert len(memory.recent()) == 2
    assert memory.is_duplicate(code_hash(SOURCE.replace("DEPTH = 4", "DEPTH = 1  # a comment")))
    assert memory.is_duplicate(code_hash(SAME_CODE))  # DEPTH = 4 was tried as experiment 3
    assert not memory.is_duplicate(code_hash(SOURCE.replace("DEPTH = 4", "DEPTH = 7")))


def test_adding_an_index_twice_is_an_error():
    memory = Memory()
    memory.add(experiment(0))
    with pytest.raises(ValueError, match="e.index=0"):
        memory.add(experiment(0, 0.5))


def test_observation_is_fixed_length_and_finite_before_any_ok_run():
    memory = Memory()
    empty = memory.observation()
    assert empty.shape == (Memory.observation_size,) == (len(OBSERVATION_NAMES),)
    assert empty.dtype == np.float32 and np.all(empty == 0)
    for i, status in enumerate(["crash", "timeout", "rejected", "pruned"]):
        memory.add(experiment(i, None, status, reward=-2.0 if status == "timeout" else -1.0))
    obs = dict(zip(OBSERVATION_NAMES, memory.observation(), strict=True))
    assert all(math.isfinite(v) for v in obs.values())
    assert obs["has_ok"] == 0 and obs["best_rel"] == 0 and obs["last_rel"] == 0
    assert obs["frac_crash"] == pytest.approx(0.25) and obs["frac_ok"] == 0
    assert [obs[f"reward_{i}"] for i in range(-8, 0)] == [0, 0, 0, 0, -1, -2, -1, -1]
    assert obs["since_improvement"] == pytest.approx(4 / 32)


def test_observation_summarizes_progress():
    memory = Memory()
    memory.add(experiment(0, 1.00, reward=0.2, accepted=True))
    memory.add(experiment(1, 0.95, reward=0.5, accepted=True))
    memory.add(experiment(2, None, "crash", reward=-1.0))
    memory.add(experiment(3, 0.98, reward=-0.1))
    obs = dict(zip(OBSERVATION_NAMES, memory.observation(), strict=True))
    assert obs["has_ok"] == 1
    assert obs["best_rel"] == pytest.approx(math.tanh(10 * math.log(0.95)), rel=1e-5)
    assert obs["last_rel"] == pytest.approx(math.tanh(10 * math.log(0.98)), rel=1e-5)
    assert obs["best_rel"] < obs["last_rel"] < 0
    assert [obs[f"reward_{i}"] for i in range(-4, 0)] == pytest.approx([0.2, 0.5, -1.0, -0.1])
    assert obs["frac_ok"] == pytest.approx(0.75) and obs["frac_crash"] == pytest.approx(0.25)
    assert obs["frac_accepted"] == pytest.approx(0.5)
    assert obs["since_improvement"] == pytest.approx(2 / 32)  # experiments 2 and 3 came after the best
    assert obs["count"] == pytest.approx(4 / 36)


def test_observation_stays_bounded_on_a_long_random_history():
    memory, _ = filled_memory(500, seed=3)
    obs = memory.observation()
    assert obs.shape == (Memory.observation_size,) and np.all(np.isfinite(obs))
    assert np.all(np.abs(obs) <= 5)
    fractions = obs[[OBSERVATION_NAMES.index(n) for n in OBSERVATION_NAMES if n.startswith("frac_")
                     and n != "frac_accepted"]]
    assert fractions.sum() == pytest.approx(1.0, abs=1e-5)


def test_round_trip_through_json():
    memory, _ = filled_memory(100, seed=1)
    memory.add(Experiment(100, code_hash(SOURCE), "the source", "ok", 0.5, 1.0, True, (0.1, 0.9)))
    restored = Memory.from_dict(json.loads(json.dumps(memory.to_dict())))
    assert restored.config == memory.config
    assert restored.recent() == memory.recent() and restored.best() == memory.best()
    assert np.array_equal(restored.observation(), memory.observation())
    assert restored.render() == memory.render()
    assert restored.is_duplicate(code_hash(SAME_CODE)) and restored.is_duplicate("h3")
    assert len(restored) == len(memory)
    restored.add(experiment(101, 0.4))  # it keeps working after the resume
    assert restored.best()[0].index == 101
    with pytest.raises(ValueError):
        restored.add(experiment(7))  # every index seen is still known


def test_render_lists_the_best_and_the_recent():
    assert Memory().render() == "No experiments yet."
    memory, _ = filled_memory(100, seed=2)
    text = memory.render()
    best_part, recent_part = text.split("Recent 32")
    for e in memory.best():
        assert f"{e.val_bpb:.4f}" in best_part and e.description in best_part
    rows = [line for line in recent_part.splitlines()[2:] if line.strip()]
    assert [int(row.split()[0]) for row in rows] == [e.index for e in memory.recent()]
    assert "Best 5" in best_part and "first ok val_bpb" in text


def test_render_keeps_descriptions_to_one_short_line():
    memory = Memory()
    memory.add(experiment(0, 1.2, description="first line\nsecond line"))
    memory.add(experiment(1, None, "crash", description="x" * 500))
    text = memory.render()
    assert "second line" not in text and "x" * 69 + "..." in text and "x" * 70 not in text
    assert "+0.00%" in text  # the first ok run relative to itself


def test_experiment_and_config_validate():
    with pytest.raises(ValueError, match="status"):
        experiment(0, 1.0, status="great")
    with pytest.raises(ValueError, match="val_bpb"):
        experiment(0, None, status="ok")
    with pytest.raises(ValueError, match="val_bpb"):
        experiment(0, float("nan"), status="ok")
    with pytest.raises(ValueError, match="reward"):
        experiment(0, 1.0, reward=float("inf"))
    assert experiment(0, float("nan"), status="crash").val_bpb is None
    assert Experiment(0, "h", "d", "ok", 1, 0, 1, [1, 2]).config == (1.0, 2.0)
    with pytest.raises(ValueError, match="recent"):
        MemoryConfig(recent=0)
    with pytest.raises(ValueError, match="scale"):
        MemoryConfig(scale=float("nan"))
