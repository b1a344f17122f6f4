"""kit.hyperparams: parsing train.py's constants, their declared ranges, membership and normalization."""

import dataclasses
import math

import pytest

from kit.hyperparams import Hyperparameter, parse_hyperparameters, scan_hyperparameters

SAMPLE = '''"""A train.py-like header."""
import torch

DEPTH = 4                  # transformer blocks [1, 16]
MATRIX_LR = 0.02           # Muon learning rate for 2-D weight matrices [0.001, 0.2]
WEIGHT_DECAY = 0.1         # AdamW/Muon decoupled weight decay [0.0, 0.5]
QK_NORM = False            # RMS-normalize queries and keys per head {False, True}
WINDOW_PATTERN = "L"       # attention window per layer, cycled: L=full, S=half context {"L", "SL", "SSL"}
GRAD_CLIP = 1.0            # max global grad norm, 0 disables [0.0, 10.0]
UNTIMED_STEPS = 2          # first steps left out of the budget (compilation, warm-up)
SHIFT = -3                 # a negative offset [-5, 5]
BETAS: tuple = (0.8, 0.95) # adam betas
SCALE = 2 ** 10            # computed, so not a hyperparameter
lowercase = 3              # not UPPER_CASE [1, 2]


def f():
    INNER = 5  # not module level [1, 2]
'''


def by_name(source: str = SAMPLE) -> dict[str, Hyperparameter]:
    return {p.name: p for p in parse_hyperparameters(source)}


def test_parses_module_level_literal_constants_in_order():
    params = parse_hyperparameters(SAMPLE)
    assert [p.name for p in params] == ["DEPTH", "MATRIX_LR", "WEIGHT_DECAY", "QK_NORM", "WINDOW_PATTERN",
                                        "GRAD_CLIP", "UNTIMED_STEPS", "SHIFT", "BETAS"]
    assert [p.line for p in params] == [4, 5, 6, 7, 8, 9, 10, 11, 12]


def test_values_kinds_ranges_and_comments():
    p = by_name()
    assert (p["DEPTH"].value, p["DEPTH"].kind, p["DEPTH"].low, p["DEPTH"].high) == (4, "int", 1, 16)
    assert p["DEPTH"].comment == "transformer blocks"
    assert (p["MATRIX_LR"].kind, p["MATRIX_LR"].low, p["MATRIX_LR"].high) == ("float", 0.001, 0.2)
    assert p["QK_NORM"].kind == "bool" and p["QK_NORM"].choices == (False, True)
    assert p["WINDOW_PATTERN"].kind == "choice" and p["WINDOW_PATTERN"].choices == ("L", "SL", "SSL")
    assert p["WINDOW_PATTERN"].comment == "attention window per layer, cycled: L=full, S=half context"
    assert p["GRAD_CLIP"].comment == "max global grad norm, 0 disables"
    assert (p["SHIFT"].value, p["SHIFT"].low, p["SHIFT"].high) == (-3, -5, 5)
    assert p["BETAS"].value == (0.8, 0.95) and not p["BETAS"].has_range
    unranged = p["UNTIMED_STEPS"]
    assert (unranged.kind, unranged.low, unranged.high, unranged.choices) == ("int", None, None, None)
    assert unranged.comment == "first steps left out of the budget (compilation, warm-up)"
    assert p["DEPTH"].range_text == "[1, 16]" and p["WINDOW_PATTERN"].range_text == "{'L', 'SL', 'SSL'}"


def test_mixed_int_and_float_bounds_make_a_float_range():
    p = by_name("X = 1  # mixed [0, 1.5]\n")["X"]
    assert p.kind == "float" and p.in_range(1.25)


def test_brackets_inside_the_description_do_not_confuse_the_range():
    p = by_name('X = "a#b"  # see [notes] and {braces} {"a#b", "c"}\n')["X"]
    assert p.choices == ("a#b", "c") and p.comment == "see [notes] and {braces}" and p.in_range("a#b")


def test_in_range_checks_bounds_and_types():
    p = by_name()
    depth, lr, qk, window = p["DEPTH"], p["MATRIX_LR"], p["QK_NORM"], p["WINDOW_PATTERN"]
    assert depth.in_range(1) and depth.in_range(16) and not depth.in_range(17) and not depth.in_range(0)
    assert not depth.in_range(4.5) and not depth.in_range(True) and not depth.in_range("4")
    assert lr.in_range(0.001) and lr.in_range(1 / 10) and not lr.in_range(0.3)
    assert qk.in_range(True) and not qk.in_range(1)
    assert window.in_range("SL") and not window.in_range("LLL")
    assert p["UNTIMED_STEPS"].in_range(10**9)  # no declared range: anything goes


def test_normalized_linear_log_choice_and_bool():
    p = by_name()
    assert p["DEPTH"].normalized(1) == 0.0 and p["DEPTH"].normalized(16) == 1.0
    # [1, 16] and [0.001, 0.2] span an order of magnitude or more: log scale, the geometric midpoint maps to 0.5
    assert p["DEPTH"].log_scale and p["DEPTH"].normalized(4) == pytest.approx(0.5)
    assert p["MATRIX_LR"].normalized(math.sqrt(0.001 * 0.2)) == pytest.approx(0.5)
    # [0.0, 0.5] starts at zero, [-5, 5] crosses it: linear; so is a positive range narrower than a factor of 10
    assert not p["WEIGHT_DECAY"].log_scale and p["WEIGHT_DECAY"].normalized(0.1) == pytest.approx(0.2)
    assert p["SHIFT"].normalized(-3) == pytest.approx(0.2)
    assert not dataclasses.replace(p["DEPTH"], low=2, high=16).log_scale
    assert [p["WINDOW_PATTERN"].normalized(v) for v in ("L", "SL", "SSL")] == [0.0, 0.5, 1.0]
    assert (p["QK_NORM"].normalized(False), p["QK_NORM"].normalized(True)) == (0.0, 1.0)
    assert p["DEPTH"].normalized(100) == 1.0 and p["MATRIX_LR"].normalized(-1.0) == 0.0  # clamped


def test_normalized_rejects_values_it_cannot_place():
    p = by_name()
    with pytest.raises(ValueError, match="not one of"):
        p["WINDOW_PATTERN"].normalized("XL")
    with pytest.raises(ValueError, match="no numeric range"):
        p["UNTIMED_STEPS"].normalized(3)


@pytest.mark.parametrize("comment, fragment", [
    ("[1, 2, 3]", "malformed range '[1, 2, 3]'"),
    ('["a", 2]', "malformed range"),
    ("[16, 1]", "write it as [1, 16]"),
    ("{}", "malformed range '{}'"),
    ("{1, 1}", "lists a choice twice"),
    ("[1, 1e999]", "malformed range"),
    ("[lo, hi]", "malformed range"),
    ("[1, 16", None),  # not closed: no range at all, the text is description
])
def test_malformed_range_raises_with_line_and_fix(comment, fragment):
    source = f"import torch\n\nDEPTH = 4  # transformer blocks {comment}\n"
    if fragment is None:
        assert by_name(source)["DEPTH"].comment == f"transformer blocks {comment}"
        return
    with pytest.raises(ValueError) as info:
        parse_hyperparameters(source)
    message = str(info.value)
    assert message.startswith("line 3: DEPTH")
    assert fragment in message
    if "malformed" in fragment:
        assert "write [lo, hi]" in message


def test_computed_value_with_a_declared_range_is_an_error():
    with pytest.raises(ValueError, match=r"^line 2: DEPTH declares a range but its value is not a literal"):
        parse_hyperparameters("X = 1\nDEPTH = 2 * 50  # blocks [1, 16]\n")


def test_scan_collects_every_error_and_keeps_the_good_constants():
    params, errors = scan_hyperparameters("A = 1  # [1, 2, 3]\nB = 2  # [0, 4]\nC = 3  # [9, 1]\n")
    assert [p.name for p in params] == ["B"]
    assert [line for line, _ in errors] == [1, 3]


def test_multiline_assignment_reads_the_comment_on_its_last_line():
    p = by_name("BETAS = (\n    0.8,\n    0.95,\n)  # adam betas\nX = 1 # [0, 2]\n")
    assert p["BETAS"].comment == "adam betas" and p["X"].line == 5 and p["X"].high == 2


def test_syntax_error_propagates():
    with pytest.raises(SyntaxError):
        parse_hyperparameters("DEPTH = = 4\n")
