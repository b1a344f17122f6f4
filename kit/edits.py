"""The action space: typed edits of train.py's ranged hyperparameters, unified diffs, and the config vector.

Owns: the `Edit` (scale, shift, set or toggle one constant), the catalog of edits derived from the ranges the
comments declare (so a user's train.py gets one too), applying an edit by replacing the one literal the AST
locates (comments and layout kept), the validity mask over a catalog, setting several knobs at once (TPE, CMA-ES),
the config vector policies observe, and making and strictly applying unified diffs.
Does not own: parsing the ranges (kit.hyperparams), deciding whether a file may run (kit.gate), running anything.
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from kit.hyperparams import Hyperparameter, parse_hyperparameters

KINDS = ("scale", "shift", "set", "toggle")
_NEWLINE = re.compile(r"\r\n|\r|\n")  # the line ends ast counts
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NO_NEWLINE = "\\ No newline at end of file\n"


def _round(x: float, significant: int) -> float:
    return float(f"{x:.{significant}g}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python, but a bool knob set to 1 is a type error, not a match
    return isinstance(a, (bool, np.bool_)) == isinstance(b, (bool, np.bool_)) and a == b


class EditError(ValueError):
    """An edit or diff that cannot be applied; the message says why in one line."""


@dataclass(frozen=True)
class EditConfig:
    """How the catalog is derived from the declared ranges and how edited values are written."""

    float_factors: tuple[float, ...] = (0.5, 0.8, 1.25, 2.0)
    """Scale edits every float knob gets."""
    shift_fraction: float = 0.1
    """Float ranges that contain 0 or are narrow also get shifts of ± this share of the range width."""
    narrow_ratio: float = 2.0
    """A positive float range with hi/lo below this is narrow: [0.8, 0.999] cannot move by ×0.8 or ×1.25."""
    wide_ratio: float = 16.0
    """Int ranges with lo > 0 and hi/lo above this (MODEL_DIM, BATCH_SIZE) are wide: scaled, not shifted."""
    wide_factors: tuple[float, ...] = (0.5, 2.0)
    """Scale edits of wide int knobs (results rounded to the nearest int)."""
    int_shifts: tuple[int, ...] = (-2, -1, 1, 2)
    """Shift edits of the other int knobs; an int range from 0 or below whose shift_fraction of the width exceeds
    the largest of these ([0, 1000]) is scaled and shifted by ± that step instead."""
    significant: int = 4
    """Significant digits of every float written, so repeated scalings do not grow digits."""

    def __post_init__(self) -> None:
        factors = self.float_factors + self.wide_factors
        if not factors or not all(_is_number(f) and math.isfinite(f) and f > 0 and f != 1 for f in factors):
            raise ValueError(f"scale factors must be positive, finite and not 1, got {factors=}")
        if not 0 < self.shift_fraction <= 1:
            raise ValueError(f"shift_fraction must be in (0, 1], got {self.shift_fraction=}")
        if self.narrow_ratio < 1 or self.wide_ratio < 1:
            raise ValueError(f"ratios must be >= 1, got {self.narrow_ratio=}, {self.wide_ratio=}")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s != 0 for s in self.int_shifts):
            raise ValueError(f"int_shifts must be nonzero ints, got {self.int_shifts=}")
        if not 1 <= self.significant <= 17:
            raise ValueError(f"significant must be in [1, 17], got {self.significant=}")


DEFAULT = EditConfig()


@dataclass(frozen=True)
class Edit:
    """One change of one hyperparameter: scale by arg, shift by arg, set to arg, or toggle (arg None)."""

    name: str
    kind: str
    arg: Any = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"name must be an identifier, got {self.name=}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind=}")
        numeric = _is_number(self.arg) and math.isfinite(self.arg)
        if self.kind == "scale" and not (numeric and self.arg > 0):
            raise ValueError(f"a scale needs a positive finite factor, got {self.arg=}")
        if self.kind == "shift" and not (numeric and self.arg != 0):
            raise ValueError(f"a shift needs a nonzero finite delta, got {self.arg=}")
        if self.kind == "toggle" and self.arg is not None:
            raise ValueError(f"a toggle takes no argument, got {self.arg=}")

    def describe(self) -> str:
        """'MATRIX_LR ×1.25', 'DEPTH +1', 'QK_NORM -> True', 'toggle QK_NORM'."""
        if self.kind == "scale":
            return f"{self.name} ×{self.arg:g}"
        if self.kind == "shift":
            return f"{self.name} {self.arg:+g}"
        if self.kind == "set":
            return f"{self.name} -> {self.arg!r}"
        return f"toggle {self.name}"


def knobs(source: str) -> list[Hyperparameter]:
    """The hyperparameters of source that declare a range, in file order (the first of a name that repeats)."""
    return list(_parsed(source)[0])


def build_catalog(source: str, config: EditConfig = DEFAULT) -> list[Edit]:
    """Every edit the ranges allow, knob by knob in file order; depends on the ranges only, never the values."""
    catalog: list[Edit] = []
    for k in _parsed(source)[0]:
        if k.choices is not None:
            catalog += [Edit(k.name, "toggle")] if k.kind == "bool" else [Edit(k.name, "set", c) for c in k.choices]
        elif k.low == k.high:
            continue  # nothing to move
        elif k.kind == "int":
            step = round(config.shift_fraction * (k.high - k.low))
            if k.low > 0 and k.high / k.low > config.wide_ratio:
                catalog += [Edit(k.name, "scale", f) for f in config.wide_factors]
            elif k.low <= 0 and step > max(abs(s) for s in config.int_shifts):  # [0, 1000]: ±1 would crawl
                catalog += [Edit(k.name, "scale", f) for f in config.wide_factors]
                catalog += [Edit(k.name, "shift", -step), Edit(k.name, "shift", step)]
            else:
                catalog += [Edit(k.name, "shift", s) for s in config.int_shifts]
        else:
            catalog += [Edit(k.name, "scale", f) for f in config.float_factors]
            if k.low <= 0 <= k.high or (k.low > 0 and k.high / k.low < config.narrow_ratio):
                delta = _round(config.shift_fraction * (k.high - k.low), config.significant)
                catalog += [Edit(k.name, "shift", -delta), Edit(k.name, "shift", delta)]
    return catalog


def apply_edit(source: str, edit: Edit, config: EditConfig = DEFAULT) -> str:
    """source with edit's literal replaced in place; EditError if the knob is unknown, the result is out of
    range, or nothing would change."""
    k = _knob(source, edit.name)
    return _replace(source, {k.name: _new_value(k, edit, config)})


def edit_mask(source: str, catalog: list[Edit], config: EditConfig = DEFAULT) -> np.ndarray:
    """Bool array over catalog: True exactly where apply_edit would succeed."""
    by_name = {k.name: k for k in _parsed(source)[0]}
    mask = np.zeros(len(catalog), dtype=bool)
    for i, edit in enumerate(catalog):
        if edit.name in by_name:
            try:
                _new_value(by_name[edit.name], edit, config)
                mask[i] = True
            except EditError:
                pass
    return mask


def set_values(source: str, values: dict[str, Any], config: EditConfig = DEFAULT) -> str:
    """source with several knobs set at once; a knob already at its value keeps its literal untouched. EditError
    naming the first unknown knob or value that does not fit its range (type included, numpy scalars accepted)."""
    by_name = {k.name: k for k in _parsed(source)[0]}
    new: dict[str, Any] = {}
    for name, value in values.items():
        if name not in by_name:
            raise EditError(f"{name} is not a ranged hyperparameter of this train.py; known: {', '.join(by_name)}")
        value = _coerce(by_name[name], value, config)
        if not _same(value, by_name[name].value):  # an unchanged knob keeps its literal as written (3e-4 stays)
            new[name] = value
    return _replace(source, new)


def config_vector(source: str, knob_names: list[str]) -> np.ndarray:
    """float32 vector of each named knob's value mapped to [0, 1] by Hyperparameter.normalized."""
    out = np.empty(len(knob_names), dtype=np.float32)
    for i, name in enumerate(knob_names):
        k = _knob(source, name)
        try:
            out[i] = k.normalized(k.value)
        except ValueError as e:
            raise EditError(str(e)) from None
    return out


def edit_features(source: str, catalog: list[Edit], knob_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What an edit is, for a policy that should generalize across edits: (features, knob index).

    features[i] = one-hot of the knob (in knob_names order), one-hot of the kind, the signed size of the move (log2
    of a scale factor; a shift as a share of the range width, ×10 so the catalog's shifts are about ±1), and the
    target's place in [0, 1] for a set. knob index[i] is the knob's position in knob_names (the observation's config
    vector), so a policy can read where the knob stands now. Both depend on the ranges only, not on the values."""
    ranges = {k.name: k for k in _parsed(source)[0]}
    features = np.zeros((len(catalog), len(knob_names) + len(KINDS) + 2), dtype=np.float32)
    index = np.array([knob_names.index(e.name) for e in catalog], dtype=np.int64)
    for i, e in enumerate(catalog):
        k = ranges[e.name]
        features[i, index[i]] = 1.0
        features[i, len(knob_names) + KINDS.index(e.kind)] = 1.0
        if e.kind == "scale":
            move = math.log2(e.arg)
        elif e.kind == "shift":
            move = 10.0 * e.arg / (k.high - k.low)
        else:
            move = 0.0
        features[i, -2] = move
        features[i, -1] = k.normalized(e.arg) if e.kind == "set" else 0.0
    return features, index


def unified_diff(old: str, new: str, name: str = "train.py") -> str:
    """The unified diff (3 lines of context) that turns old into new; '' when they are equal."""
    out = []
    for line in difflib.unified_diff(_lines(old), _lines(new), f"a/{name}", f"b/{name}"):
        out.append(line if line.endswith("\n") else line + "\n" + _NO_NEWLINE)
    return "".join(out)


def apply_unified_diff(source: str, diff: str) -> str:
    """source with every hunk of diff applied. Strict: context and removed lines must match the file exactly, the
    line counts must agree with each header, and one file only; a hunk whose line numbers are off applies only
    where its old lines occur exactly once after the previous hunk (no fuzz). EditError names the hunk that failed."""
    if not diff.strip():
        return source
    lines = _lines(source)
    hunks = _hunks(diff)
    out: list[str] = []
    pos = 0
    for i, (header, start, old, new) in enumerate(hunks, 1):
        if start < pos or start > len(lines) or lines[start:start + len(old)] != old:
            found = [j for j in range(pos, len(lines) - len(old) + 1) if lines[j:j + len(old)] == old] if old else []
            if len(found) != 1:
                why = _mismatch(lines, start, old, pos)
                raise EditError(f"hunk {i} of {len(hunks)} ({header}) does not apply: {why}; regenerate the diff "
                                "against the current train.py")
            start = found[0]
        out += lines[pos:start] + new
        pos = start + len(old)
    return "".join(out + lines[pos:])


# internals ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _parsed(source: str) -> tuple[tuple[Hyperparameter, ...], dict[str, ast.expr]]:
    """(ranged knobs, name -> value node) for source; cached, since the loop asks several times per file."""
    try:
        params = parse_hyperparameters(source)
        tree = ast.parse(source)
    except SyntaxError as e:
        raise EditError(f"train.py does not parse: line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # a malformed range comment, already one line with its fix
        raise EditError(str(e)) from None
    nodes = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            nodes.setdefault((target.id, node.lineno), node.value)
    ranged: dict[str, Hyperparameter] = {}
    for p in params:
        if p.has_range and p.name not in ranged:
            ranged[p.name] = p
    return tuple(ranged.values()), {name: nodes[(name, p.line)] for name, p in ranged.items()}


def _knob(source: str, name: str) -> Hyperparameter:
    for k in _parsed(source)[0]:
        if k.name == name:
            return k
    raise EditError(f"{name} is not a ranged hyperparameter of this train.py; declare one like "
                    f"'{name} = 1  # what it does [lo, hi]'")


def _new_value(k: Hyperparameter, edit: Edit, config: EditConfig) -> Any:
    """The value edit gives k; EditError when it does not fit k's type or range, or changes nothing."""
    if edit.kind == "set":
        return _changed(k, edit, _coerce(k, edit.arg, config))
    if edit.kind == "toggle":
        if k.kind != "bool" or not isinstance(k.value, bool):
            raise EditError(f"{edit.describe()}: {k.name} is a {k.kind}, only bools toggle")
        new = not k.value
    else:
        if k.kind not in ("int", "float") or not _is_number(k.value):
            raise EditError(f"{edit.describe()}: {k.name} is {k.value!r}, not a number")
        if k.kind == "int" and edit.kind == "shift" and not isinstance(edit.arg, int):
            raise EditError(f"{edit.describe()}: {k.name} is an int, shift it by a whole number")
        raw = k.value * edit.arg if edit.kind == "scale" else k.value + edit.arg
        new = math.floor(raw + 0.5) if k.kind == "int" else _round(raw, config.significant)
    if not k.in_range(new):
        raise EditError(f"{edit.describe()} gives {new!r}, outside {k.name}'s range {k.range_text}")
    return _changed(k, edit, new)


def _changed(k: Hyperparameter, edit: Edit, new: Any) -> Any:
    if _same(new, k.value):
        raise EditError(f"{edit.describe()} leaves {k.name} at {k.value!r}")
    return new


def _coerce(k: Hyperparameter, value: Any, config: EditConfig) -> Any:
    """value as the Python type k's literal takes (numpy scalars included), checked against k's range."""
    if k.choices is not None:
        for choice in k.choices:
            if _same(value, choice):
                return choice
    elif k.kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = int(value)
    elif k.kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        value = float(value)
        if k.in_range(value):  # rounding is monotone; the clamp only guards bounds written with more digits
            value = float(min(max(_round(value, config.significant), k.low), k.high))
    if not k.in_range(value):
        raise EditError(f"{k.name} = {value!r} does not fit its declared range {k.range_text}; pick a value inside it")
    return value


def _replace(source: str, values: dict[str, Any]) -> str:
    """source with each named knob's literal replaced by the literal of its new value, bottom-up, so earlier
    offsets stay valid; a comment aligned after the literal keeps its column where there is room."""
    nodes = _parsed(source)[1]
    starts = [0] + [m.end() for m in _NEWLINE.finditer(source)]

    def offset(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
        text = source[starts[line - 1]:starts[line] if line < len(starts) else None]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8"))

    spans = []
    for name, value in values.items():
        node = nodes[name]
        spans.append((offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset), value))
    for start, end, value in sorted(spans, key=lambda s: s[0], reverse=True):
        old = source[start:end]
        text = _literal(value, old)
        after = re.match(r" *(?=#)", source[end:])
        if after and "\n" not in old:
            gap = len(after.group())
            gap = max(min(gap, 2), gap - (len(text) - len(old)))
            source = source[:start] + text + " " * gap + source[end + after.end():]
        else:
            source = source[:start] + text + source[end:]
    return source


def _literal(value: Any, old: str) -> str:
    """Python source for value; a string keeps the quote style of the literal it replaces."""
    text = repr(value)
    if isinstance(value, str) and old.startswith('"') and text.startswith("'") and '"' not in value:
        text = '"' + text[1:-1] + '"'
    return text


def _hunks(diff: str) -> list[tuple[str, int, list[str], list[str]]]:
    """(header, 0-based start in the old file, old lines, new lines) of each hunk, checked against its header."""
    lines = [line if line.endswith("\n") else line + "\n" for line in _lines(diff)]  # only a marker drops a "\n"
    hunks = []
    files = 0
    i = 0
    while i < len(lines):
        match = _HUNK.match(lines[i])
        files += lines[i].startswith("+++ ")
        i += 1
        if files > 1:
            raise EditError("the diff changes more than one file; it may change train.py only")
        if not match:
            continue  # file headers and prose around the hunks
        header = match.group(0)
        a, b, _, d = (int(g) if g is not None else 1 for g in match.groups())
        old: list[str] = []
        new: list[str] = []
        sides: list[list[str]] = []
        while i < len(lines) and (len(old) < b or len(new) < d or lines[i].startswith("\\")):
            line = lines[i]
            if line.startswith("\\"):  # "\ No newline at end of file": the line before has no line end
                for side in sides:
                    side[-1] = side[-1].rstrip("\n")
            elif line == "\n" or line[0] in " -+":  # an empty line is empty context whose space got trimmed
                sides = [old, new] if line[0] in " \n" else [old] if line[0] == "-" else [new]
                for side in sides:
                    side.append(line[1:] if line != "\n" else line)
            else:
                break
            i += 1
        if (len(old), len(new)) != (b, d):
            raise EditError(f"hunk {len(hunks) + 1} ({header}) has {len(old)} old and {len(new)} new lines, its "
                            f"header says {b} and {d}; regenerate the diff")
        hunks.append((header, a - 1 if b else a, old, new))
    if not hunks:
        raise EditError("the diff has no hunks (no '@@ -a,b +c,d @@' line); write a unified diff of train.py")
    return hunks


def _mismatch(lines: list[str], start: int, old: list[str], pos: int) -> str:
    """Why old does not sit at start, in a few words."""
    if start < pos:
        return f"it starts at line {start + 1}, inside the previous hunk"
    for j, expected in enumerate(old):
        if start + j >= len(lines):
            return f"the file ends at line {len(lines)}, the hunk expects {expected.rstrip()!r} at line {start + j + 1}"
        if lines[start + j] != expected:
            return f"line {start + j + 1} is {lines[start + j].rstrip()!r}, the hunk expects {expected.rstrip()!r}"
    return f"it inserts after line {start}, the file has {len(lines)} lines"


def _lines(text: str) -> list[str]:
    """text split after each '\\n', line ends kept (str.splitlines would also split at form feeds and the like)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)
