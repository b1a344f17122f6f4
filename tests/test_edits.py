"""kit.edits: the catalog follows the ranges, each edit changes exactly one literal and stays in range, the mask
agrees with apply_edit, set_values validates, the config vector lives in [0, 1], diffs round-trip strictly."""

import ast
import math
import random
import re

import numpy as np
import pytest

from kit.edits import (
    Edit,
    EditConfig,
    EditError,
    apply_edit,
    apply_unified_diff,
    build_catalog,
    config_vector,
    edit_features,
    edit_mask,
    knobs,
    set_values,
    unified_diff,
)
from kit.gate import check_source

from .helpers import TRAIN_PY

REAL = TRAIN_PY.read_text()

# A user's own train.py: other names, other ranges, single quotes, an annotation, a value over three lines.
CUSTOM = '''"""A user's own training script."""
import math

LAYERS = 3            # blocks [1, 6]
WIDTH: int = 96       # hidden width [8, 512]
OFFSET = -2           # a signed offset [-4, 4]
WARMUP = 0            # warm-up steps [0, 1000]
LR = 3e-4             # learning rate [1e-05, 0.01]
MIX = -0.25           # signed mixing weight [-1.0, 1.0]
ACT = 'gelu'          # activation {'relu', 'gelu', 'silu'}
HEADS = 4             # attention heads {1, 2, 4, 8}
USE_BIAS = True       # bias in the linear layers {False, True}
TEMPERATURE = (
    0.5
)                     # softmax temperature [0.1, 2.0]
STEPS = 7             # no range, so never edited


def train():
    return math.sqrt(LAYERS * WIDTH)
'''


def values(source: str) -> dict:
    return {k.name: k.value for k in knobs(source)}


def expected_value(k, edit: Edit):
    """What edit should give, computed here from the catalog rules rather than by kit.edits."""
    if edit.kind == "toggle":
        return not k.value
    if edit.kind == "set":
        return edit.arg
    raw = k.value * edit.arg if edit.kind == "scale" else k.value + edit.arg
    return math.floor(raw + 0.5) if k.kind == "int" else float(f"{raw:.4g}")


def random_values(source: str, rng: random.Random) -> dict:
    """A random in-range configuration of every knob (floats with 3 significant digits)."""
    out = {}
    for k in knobs(source):
        if k.choices is not None:
            out[k.name] = rng.choice(k.choices)
        elif k.kind == "int":
            out[k.name] = rng.randint(k.low, k.high)
        else:
            out[k.name] = min(max(float(f"{rng.uniform(k.low, k.high):.3g}"), k.low), k.high)
    return out


def hyperparameter_block(source: str) -> str:
    """The `NAME = value  # comment` lines of source alone: same knobs and catalog, parsed far faster."""
    return "".join(line for line in source.splitlines(keepends=True) if re.match(r"[A-Z][A-Z0-9_]* += ", line))


# the catalog ----------------------------------------------------------------------------------------------------


def rule_edits(k) -> list[tuple[str, object]]:
    """The contract's catalog rules for one knob, restated here independently of kit.edits."""
    if k.kind == "bool":
        return [("toggle", None)]
    if k.choices is not None:
        return [("set", c) for c in k.choices]
    width = k.high - k.low
    if k.kind == "int":
        if k.low > 0 and k.high / k.low > 16:
            return [("scale", 0.5), ("scale", 2.0)]
        if k.low <= 0 and round(width / 10) > 2:
            return [("scale", 0.5), ("scale", 2.0), ("shift", -round(width / 10)), ("shift", round(width / 10))]
        return [("shift", s) for s in (-2, -1, 1, 2)]
    edits = [("scale", f) for f in (0.5, 0.8, 1.25, 2.0)]
    if k.low <= 0 <= k.high or k.high / k.low < 2:
        edits += [("shift", -float(f"{width / 10:.4g}")), ("shift", float(f"{width / 10:.4g}"))]
    return edits


@pytest.mark.parametrize("source", [REAL, CUSTOM], ids=["real", "custom"])
def test_catalog_follows_the_rules_knob_by_knob_in_file_order(source):
    expected = [(k.name, kind, arg) for k in knobs(source) for kind, arg in rule_edits(k)]
    assert [(e.name, e.kind, e.arg) for e in build_catalog(source)] == expected
    assert [k.name for k in knobs(source)] == [k.name for k in knobs(source) if k.has_range]


def test_real_catalog_spot_checks():
    by_name: dict[str, list] = {}
    for e in build_catalog(REAL):
        by_name.setdefault(e.name, []).append(e.describe())
    assert by_name["DEPTH"] == ["DEPTH -2", "DEPTH -1", "DEPTH +1", "DEPTH +2"]  # [1, 16]
    assert by_name["MODEL_DIM"] == ["MODEL_DIM ×0.5", "MODEL_DIM ×2"]  # [32, 1024]: hi/lo 32
    assert by_name["MATRIX_LR"] == ["MATRIX_LR ×0.5", "MATRIX_LR ×0.8", "MATRIX_LR ×1.25", "MATRIX_LR ×2"]
    assert by_name["WEIGHT_DECAY"][-2:] == ["WEIGHT_DECAY -0.05", "WEIGHT_DECAY +0.05"]  # [0.0, 0.5] starts at 0
    assert by_name["ADAM_BETA2"][-2:] == ["ADAM_BETA2 -0.0199", "ADAM_BETA2 +0.0199"]  # [0.8, 0.999] is narrow
    assert by_name["QK_NORM"] == ["toggle QK_NORM"]
    assert by_name["WINDOW_PATTERN"][:2] == ["WINDOW_PATTERN -> 'L'", "WINDOW_PATTERN -> 'SL'"]
    assert "EXTRA_STEPS" not in {e.name for e in build_catalog(REAL + "EXTRA_STEPS = 3  # declares no range\n")}


def test_custom_catalog_comes_from_its_own_ranges():
    catalog = build_catalog(CUSTOM)
    assert [e.describe() for e in catalog] == [
        "LAYERS -2", "LAYERS -1", "LAYERS +1", "LAYERS +2",
        "WIDTH ×0.5", "WIDTH ×2",
        "OFFSET -2", "OFFSET -1", "OFFSET +1", "OFFSET +2",
        "WARMUP ×0.5", "WARMUP ×2", "WARMUP -100", "WARMUP +100",  # an int range from 0 too wide for ±1 steps
        "LR ×0.5", "LR ×0.8", "LR ×1.25", "LR ×2",
        "MIX ×0.5", "MIX ×0.8", "MIX ×1.25", "MIX ×2", "MIX -0.2", "MIX +0.2",
        "ACT -> 'relu'", "ACT -> 'gelu'", "ACT -> 'silu'",
        "HEADS -> 1", "HEADS -> 2", "HEADS -> 4", "HEADS -> 8",
        "toggle USE_BIAS",
        "TEMPERATURE ×0.5", "TEMPERATURE ×0.8", "TEMPERATURE ×1.25", "TEMPERATURE ×2",
    ]


def test_catalog_depends_on_the_ranges_only():
    moved = set_values(REAL, random_values(REAL, random.Random(0)))
    assert values(moved) != values(REAL)
    assert build_catalog(moved) == build_catalog(REAL) == build_catalog(REAL)
    assert build_catalog("X = 1\nY = 'a'  # no range\n") == []


def test_catalog_config_changes_the_rules_and_validates():
    narrow = EditConfig(float_factors=(0.9, 1.1), int_shifts=(-1, 1), wide_ratio=1000)
    names = [(e.name, e.kind, e.arg) for e in build_catalog(CUSTOM, narrow) if e.name in ("LAYERS", "WIDTH", "LR")]
    assert names == [("LAYERS", "shift", -1), ("LAYERS", "shift", 1), ("WIDTH", "shift", -1), ("WIDTH", "shift", 1),
                     ("LR", "scale", 0.9), ("LR", "scale", 1.1)]
    for bad in (dict(float_factors=(1.0,)), dict(wide_factors=(-2.0,)), dict(shift_fraction=0.0),
                dict(int_shifts=(0,)), dict(significant=0), dict(wide_ratio=0.5)):
        with pytest.raises(ValueError, match="got"):
            EditConfig(**bad)


def test_every_knob_of_the_real_train_py_can_move_from_its_default():
    catalog = build_catalog(REAL)
    mask = edit_mask(REAL, catalog)
    assert {e.name for e, ok in zip(catalog, mask, strict=True) if ok} == {k.name for k in knobs(REAL)}


# Edit ---------------------------------------------------------------------------------------------------------


def test_describe():
    assert Edit("MATRIX_LR", "scale", 1.25).describe() == "MATRIX_LR ×1.25"
    assert Edit("MODEL_DIM", "scale", 2.0).describe() == "MODEL_DIM ×2"
    assert Edit("DEPTH", "shift", 1).describe() == "DEPTH +1"
    assert Edit("WEIGHT_DECAY", "shift", -0.05).describe() == "WEIGHT_DECAY -0.05"
    assert Edit("QK_NORM", "set", True).describe() == "QK_NORM -> True"
    assert Edit("WINDOW_PATTERN", "set", "SL").describe() == "WINDOW_PATTERN -> 'SL'"
    assert Edit("QK_NORM", "toggle").describe() == "toggle QK_NORM"


@pytest.mark.parametrize("args", [("X", "grow", 2), ("X", "scale", 0), ("X", "scale", -1.0), ("X", "scale", True),
                                  ("X", "scale", float("inf")), ("X", "shift", 0), ("X", "shift", "1"),
                                  ("X", "toggle", 1), ("2X", "set", 1), ("", "toggle", None)])
def test_edit_constructor_validates(args):
    with pytest.raises(ValueError, match="got"):
        Edit(*args)


# apply_edit ------------------------------------------------------------------------------------------------------


def assert_only_literal_changed(old: str, new: str, edit: Edit) -> None:
    """new parses; every knob but edit's keeps its value; the lines outside the edited literal are identical and the
    edited line keeps its code prefix and its comment, at the same column where the literal left room."""
    ast.parse(new)
    k = next(k for k in knobs(old) if k.name == edit.name)
    before, after = values(old), values(new)
    want = expected_value(k, edit)
    assert after.pop(edit.name) == pytest.approx(want) and type(want) is type(values(new)[edit.name])
    before.pop(edit.name)
    assert after == before
    old_lines, new_lines = old.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert len(changed) == 1
    a, b = old_lines[changed[0]], new_lines[changed[0]]
    if "#" in a:  # the comment is intact and stays aligned
        assert b[b.index("#"):] == a[a.index("#"):]
        assert b.index("#") == a.index("#") or b[:b.index("#")].endswith("  ")
    prefix = a[:len(a) - len(a.lstrip())] + (f"{edit.name} = " if f"{edit.name} =" in a else "")
    assert b.startswith(prefix)


@pytest.mark.parametrize("source", [REAL, CUSTOM], ids=["real", "custom"])
def test_every_valid_edit_changes_exactly_its_literal(source):
    catalog = build_catalog(source)
    mask = edit_mask(source, catalog)
    assert mask.sum() >= len({e.name for e in catalog})
    for edit, ok in zip(catalog, mask, strict=True):
        if ok:
            assert_only_literal_changed(source, apply_edit(source, edit), edit)


def test_every_valid_edit_of_the_real_train_py_passes_the_gate():
    catalog = build_catalog(REAL)
    for edit, ok in zip(catalog, edit_mask(REAL, catalog), strict=True):
        if ok:
            result = check_source(apply_edit(REAL, edit))
            assert result.ok, f"{edit.describe()}: {result.summary()}"


@pytest.mark.parametrize("edit, line", [
    (Edit("LAYERS", "shift", 2), "LAYERS = 5            # blocks [1, 6]"),
    (Edit("WIDTH", "scale", 0.5), "WIDTH: int = 48       # hidden width [8, 512]"),
    (Edit("WIDTH", "scale", 2.0), "WIDTH: int = 192      # hidden width [8, 512]"),
    (Edit("OFFSET", "shift", 1), "OFFSET = -1           # a signed offset [-4, 4]"),
    (Edit("OFFSET", "shift", 2), "OFFSET = 0            # a signed offset [-4, 4]"),
    (Edit("WARMUP", "shift", 100), "WARMUP = 100          # warm-up steps [0, 1000]"),
    (Edit("LR", "scale", 2.0), "LR = 0.0006           # learning rate [1e-05, 0.01]"),
    (Edit("LR", "scale", 0.5), "LR = 0.00015          # learning rate [1e-05, 0.01]"),
    (Edit("MIX", "shift", 0.2), "MIX = -0.05           # signed mixing weight [-1.0, 1.0]"),
    (Edit("MIX", "scale", 2.0), "MIX = -0.5            # signed mixing weight [-1.0, 1.0]"),
    (Edit("ACT", "set", "silu"), "ACT = 'silu'          # activation {'relu', 'gelu', 'silu'}"),
    (Edit("HEADS", "set", 8), "HEADS = 8             # attention heads {1, 2, 4, 8}"),
    (Edit("USE_BIAS", "toggle"), "USE_BIAS = False      # bias in the linear layers {False, True}"),
    (Edit("USE_BIAS", "set", False), "USE_BIAS = False      # bias in the linear layers {False, True}"),
    (Edit("TEMPERATURE", "scale", 1.25), "    0.625"),
])
def test_each_edit_kind_writes_the_intended_literal(edit, line):
    new = apply_edit(CUSTOM, edit)
    assert line in new.splitlines()
    assert_only_literal_changed(CUSTOM, new, edit)


def test_quote_style_and_unicode_columns_are_kept():
    assert 'WINDOW_PATTERN = "SSL"     # attention' in apply_edit(REAL, Edit("WINDOW_PATTERN", "set", "SSL"))
    source = 'SIZE: "größe" = 2  # sizes [1, 3]\nNAME = "ä"  # {"ä", "b"}\n'
    assert apply_edit(source, Edit("SIZE", "shift", 1)) == 'SIZE: "größe" = 3  # sizes [1, 3]\nNAME = "ä"  # {"ä", "b"}\n'
    assert apply_edit(source, Edit("NAME", "set", "b")).endswith('NAME = "b"  # {"ä", "b"}\n')


def test_a_longer_literal_pushes_a_tight_comment_but_keeps_two_spaces():
    assert apply_edit("X = 1  # [1, 1000]\n", Edit("X", "scale", 200.0)) == "X = 200  # [1, 1000]\n"
    assert apply_edit("X = 100   # [1, 1000]\n", Edit("X", "scale", 0.01)) == "X = 1     # [1, 1000]\n"


@pytest.mark.parametrize("edit, message", [
    (Edit("LAYERS", "shift", 4), "gives 7, outside LAYERS's range [1, 6]"),
    (Edit("HEADS", "set", 4), "leaves HEADS at 4"),
    (Edit("HEADS", "set", 3), "HEADS = 3 does not fit its declared range"),
    (Edit("ACT", "set", "tanh"), "does not fit"),
    (Edit("LAYERS", "set", 2.0), "does not fit"),
    (Edit("LAYERS", "set", True), "does not fit"),
    (Edit("USE_BIAS", "set", 1), "does not fit"),
    (Edit("LAYERS", "shift", 0.5), "shift it by a whole number"),
    (Edit("LR", "toggle"), "only bools toggle"),
    (Edit("ACT", "scale", 2.0), "not a number"),
    (Edit("STEPS", "shift", 1), "STEPS is not a ranged hyperparameter"),
    (Edit("NOPE", "set", 1), "NOPE is not a ranged hyperparameter"),
])
def test_invalid_edits_raise_edit_error_and_are_masked(edit, message):
    with pytest.raises(EditError, match=re.escape(message)):
        apply_edit(CUSTOM, edit)
    assert not edit_mask(CUSTOM, [edit])[0]


def test_unparsable_or_malformed_sources_raise_edit_error():
    with pytest.raises(EditError, match="does not parse: line 1"):
        knobs("DEPTH = = 4\n")
    with pytest.raises(EditError, match=r"^line 2: DEPTH has range \[16, 1\]"):
        build_catalog("X = 1\nDEPTH = 4  # blocks [16, 1]\n")


# edit_mask --------------------------------------------------------------------------------------------------------


def test_edit_mask_is_true_exactly_where_apply_edit_succeeds():
    rng = random.Random(1)
    odd = [Edit("LR", "toggle"), Edit("LAYERS", "shift", 0.5), Edit("NOPE", "shift", 1), Edit("ACT", "set", "x"),
           Edit("MIX", "set", 0.0), Edit("WIDTH", "scale", 1.01), Edit("HEADS", "set", 2)]
    for base in (REAL, CUSTOM):
        catalog = build_catalog(base) + odd
        for source in [base] + [set_values(base, random_values(base, rng)) for _ in range(8)]:
            mask = edit_mask(source, catalog)
            assert mask.dtype == bool and mask.shape == (len(catalog),)
            for edit, ok in zip(catalog, mask, strict=True):
                try:
                    apply_edit(source, edit)
                    succeeded = True
                except EditError:
                    succeeded = False
                assert ok == succeeded, edit.describe()


# the catalog never leaves its ranges --------------------------------------------------------------------------


def random_walks(source: str, walks: int, steps: int, seed: int):
    """Yield (walk, source) after every applied edit of `walks` walks from random in-range starts."""
    rng = random.Random(seed)
    catalog = build_catalog(source)
    for walk in range(walks):
        current = set_values(source, random_values(source, rng))
        for _ in range(steps):
            valid = np.flatnonzero(edit_mask(current, catalog))
            assert valid.size, "a state with no valid edit"
            current = apply_edit(current, catalog[rng.choice(valid.tolist())])
            yield walk, current


def assert_in_range(source: str) -> None:
    ks = knobs(source)
    assert all(k.in_range(k.value) for k in ks), [(k.name, k.value) for k in ks if not k.in_range(k.value)]
    vector = config_vector(source, [k.name for k in ks])
    assert ((vector >= 0) & (vector <= 1)).all()


# 100 walks of 30 steps each: every step costs a parse (1-2 ms), so 3000 states per file keep the test in seconds.
WALKS, STEPS = 100, 30


def test_random_walks_on_a_custom_train_py_stay_in_range():
    for _, source in random_walks(CUSTOM, WALKS, STEPS, seed=0):
        assert_in_range(source)
    assert "STEPS = 7             # no range" in source and "def train():" in source


def test_random_walks_on_the_real_train_py_stay_in_range_and_pass_the_gate():
    """The walks run on train.py's hyperparameter block (same knobs and catalog, ten times faster to parse) and
    every state is checked to be in range; every 4th walk's end, set into the full train.py, passes the whole gate
    (the gate takes 50 ms a file; that each edit changes only its literal is tested above)."""
    block = hyperparameter_block(REAL)
    assert [(k.name, k.range_text) for k in knobs(block)] == [(k.name, k.range_text) for k in knobs(REAL)]
    assert build_catalog(block) == build_catalog(REAL)
    ends = {}
    for walk, source in random_walks(block, WALKS, STEPS, seed=0):
        assert_in_range(source)
        ends[walk] = source
    assert len(ends) == WALKS
    for walk in range(0, WALKS, 4):
        full = set_values(REAL, values(ends[walk]))
        assert values(full) == values(ends[walk])
        result = check_source(full)
        assert result.ok, result.summary()


# set_values -------------------------------------------------------------------------------------------------------


def test_set_values_sets_several_knobs_at_once_and_nothing_else():
    new = set_values(REAL, {"DEPTH": 6, "MATRIX_LR": 0.0123456789, "QK_NORM": True, "WINDOW_PATTERN": "SSL"})
    assert values(new) == {**values(REAL), "DEPTH": 6, "MATRIX_LR": 0.01235, "QK_NORM": True, "WINDOW_PATTERN": "SSL"}
    changed = [a for a, b in zip(REAL.splitlines(), new.splitlines(), strict=True) if a != b]
    assert [line.split()[0] for line in changed] == ["DEPTH", "WINDOW_PATTERN", "QK_NORM", "MATRIX_LR"]
    assert set_values(REAL, {"DEPTH": values(REAL)["DEPTH"]}) == REAL  # the current value is no error
    assert set_values(REAL, {}) == REAL
    assert set_values(CUSTOM, {"LR": 0.0003, "LAYERS": 3}) == CUSTOM  # unchanged values keep their literals (3e-4)
    assert set_values(REAL, values(REAL)) == REAL


def test_set_values_takes_numpy_scalars_and_writes_plain_literals():
    new = set_values(CUSTOM, {"LAYERS": np.int64(5), "LR": np.float64(0.002), "USE_BIAS": np.bool_(False),
                              "ACT": np.str_("relu"), "HEADS": np.int32(2), "MIX": np.float32(0.5), "TEMPERATURE": 1})
    assert "np." not in new and "numpy" not in new
    assert {k: v for k, v in values(new).items() if k in ("LAYERS", "LR", "USE_BIAS", "ACT", "HEADS", "MIX")} == {
        "LAYERS": 5, "LR": 0.002, "USE_BIAS": False, "ACT": "relu", "HEADS": 2, "MIX": 0.5}
    assert "    1.0\n" in new  # an int for a float knob is written as a float


@pytest.mark.parametrize("update, message", [
    ({"LAYERS": 7}, "LAYERS = 7 does not fit its declared range [1, 6]"),
    ({"LR": 0.5}, "LR = 0.5 does not fit"),
    ({"LR": float("nan")}, "LR = nan does not fit"),
    ({"LAYERS": 2.5}, "LAYERS = 2.5 does not fit"),
    ({"LAYERS": True}, "LAYERS = True does not fit"),
    ({"USE_BIAS": 0}, "USE_BIAS = 0 does not fit"),
    ({"ACT": "tanh"}, "ACT = 'tanh' does not fit"),
    ({"LAYERS": 2, "STEPS": 3}, "STEPS is not a ranged hyperparameter"),
])
def test_set_values_validates(update, message):
    with pytest.raises(EditError, match=re.escape(message)):
        set_values(CUSTOM, update)


# config_vector ----------------------------------------------------------------------------------------------------


def test_config_vector_is_float32_in_the_unit_interval_and_follows_the_knobs():
    names = [k.name for k in knobs(REAL)]
    vector = config_vector(REAL, names)
    assert vector.dtype == np.float32 and vector.shape == (len(names),)
    assert ((vector >= 0) & (vector <= 1)).all()
    current = values(REAL)
    assert all(vector[names.index(n)] == float(current[n]) for n in names if isinstance(current[n], bool))
    for edit, grows in [(Edit("DEPTH", "shift", 1), True), (Edit("MATRIX_LR", "scale", 0.5), False),
                        (Edit("QK_NORM", "toggle"), True), (Edit("WINDOW_PATTERN", "set", "SSSL"), True)]:
        moved = config_vector(apply_edit(REAL, edit), names)
        i = names.index(edit.name)
        assert (moved[i] > vector[i]) == grows and moved[i] != vector[i]
        assert np.array_equal(np.delete(moved, i), np.delete(vector, i))
    assert config_vector(REAL, ["MATRIX_LR", "DEPTH"]).tolist() == vector[[names.index("MATRIX_LR"), 0]].tolist()
    with pytest.raises(EditError, match="EXTRA_STEPS is not a ranged hyperparameter"):
        config_vector(REAL + "EXTRA_STEPS = 3  # declares no range\n", ["EXTRA_STEPS"])


# unified diffs ----------------------------------------------------------------------------------------------------


def test_unified_diff_round_trips_edits_of_train_py():
    new = set_values(REAL, {"DEPTH": 8, "COMPILE": False, "GRAD_CLIP": 2.0})
    diff = unified_diff(REAL, new)
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n@@ ")
    assert "-DEPTH = 4 " in diff and "+DEPTH = 8 " in diff
    assert apply_unified_diff(REAL, diff) == new
    assert apply_unified_diff(new, unified_diff(new, REAL)) == REAL
    assert unified_diff(REAL, REAL) == "" and apply_unified_diff(REAL, "") == REAL
    assert unified_diff("a\n", "b\n", name="other.py").startswith("--- a/other.py\n+++ b/other.py\n")


@pytest.mark.parametrize("old, new", [
    ("", "a\nb\n"),
    ("a\nb\n", ""),
    ("a\nb", "a\nc"),  # no newline at the end, on both sides
    ("a\nb", "a\nb\n"),
    ("x\n" * 20 + "y\n", "new first line\n" + "x\n" * 20 + "y\nz"),
    ("one\n\ntwo\n\fthree\n", "one\n\ntwo\n\fthree!\n"),  # blank lines and a form feed
])
def test_unified_diff_round_trips_text(old, new):
    assert apply_unified_diff(old, unified_diff(old, new)) == new


def test_a_diff_whose_context_does_not_match_names_the_hunk():
    new = set_values(REAL, {"DEPTH": 8, "COMPILE": False})  # two hunks, far apart
    diff = unified_diff(REAL, new)
    assert diff.count("\n@@ ") == 2
    elsewhere = set_values(REAL, {"MODEL_DIM": 256})  # in DEPTH's context
    with pytest.raises(EditError, match=r"^hunk 1 of 2 \(@@ -\d+,7 \+\d+,7 @@\) does not apply: line \d+ is "
                                        r"'MODEL_DIM = 256 .*', the hunk expects 'MODEL_DIM = 128 "):
        apply_unified_diff(elsewhere, diff)
    late = set_values(REAL, {"GRAD_CLIP_START": 1.0})  # in COMPILE's context
    with pytest.raises(EditError, match=r"^hunk 2 of 2 .* does not apply: line \d+ is 'GRAD_CLIP_START = 1.0"):
        apply_unified_diff(late, diff)
    with pytest.raises(EditError, match=r"hunk 1 of 1 .* the file ends at line 3"):
        apply_unified_diff("a\nb\nc\n", unified_diff("a\nb\nc\nd\n", "a\nb\nc\nD\n").replace("-4,", "-3,"))


def test_a_hunk_with_wrong_line_numbers_applies_only_where_its_lines_are_unique():
    new = set_values(REAL, {"DEPTH": 8})
    shifted = "# a line added on top\n" + REAL
    assert apply_unified_diff(shifted, unified_diff(REAL, new)) == "# a line added on top\n" + new
    page = "a\nb\nc\nd\ne\nf\ng\n"
    diff = unified_diff(page, page.replace("d", "D"))
    assert apply_unified_diff("z\n" + page + "y\n", diff) == "z\n" + page.replace("d", "D") + "y\n"
    with pytest.raises(EditError, match=r"hunk 1 of 1 \(@@ -1,7 \+1,7 @@\) does not apply: line 1 is 'z'"):
        apply_unified_diff("z\n" + page + page, diff)  # its lines occur twice: ambiguous, so no guess


@pytest.mark.parametrize("diff, message", [
    ("I would raise the learning rate.", "no hunks"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n a\n-b\n", "has 2 old and 1 new lines, its header says 2 and 2"),
    ("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+A\n--- a/prepare.py\n+++ b/prepare.py\n@@ -1 +1 @@\n-x\n+y\n",
     "more than one file"),
])
def test_malformed_diffs_raise_edit_error(diff, message):
    with pytest.raises(EditError, match=message):
        apply_unified_diff("a\nb\n", diff)


def test_a_trimmed_context_line_or_a_missing_final_newline_in_the_diff_text_still_applies():
    diff = "--- a/f\n+++ b/f\n@@ -1,3 +1,3 @@\n a\n\n-c\n+C\n"
    assert apply_unified_diff("a\n\nc\n", diff) == "a\n\nC\n"
    assert apply_unified_diff("a\n\nc\n", diff.rstrip("\n")) == "a\n\nC\n"  # only the marker drops a line end


def test_edit_features_name_the_knob_the_kind_and_the_signed_move():
    catalog = build_catalog(REAL)
    names = [k.name for k in knobs(REAL)]
    features, index = edit_features(REAL, catalog, names)
    assert features.shape == (len(catalog), len(names) + 6) and index.shape == (len(catalog),)
    for row, i, edit in zip(features, index, catalog, strict=True):
        assert names[i] == edit.name and row[: len(names)].sum() == 1 and row[i] == 1
        assert row[len(names): len(names) + 4].sum() == 1
        if edit.kind == "scale":
            assert row[-2] == pytest.approx(math.log2(edit.arg))
    shifts = [row[-2] for row, e in zip(features, catalog, strict=True) if e.kind == "shift"]
    assert shifts and min(shifts) < 0 < max(shifts)  # both directions, opposite signs
