"""train.py's hyperparameters: the UPPER_CASE module constants and the ranges their comments declare.

Owns: reading `NAME = literal  # description [lo, hi]` (or `{a, b, ...}` for choices), range membership and
the mapping of a value to [0, 1] that policies see.
Does not own: editing train.py (kit.edits) or deciding whether a run may start (kit.gate).
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from dataclasses import dataclass
from typing import Any

_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")
_HOW = "write [lo, hi] for numbers or {a, b, ...} for choices, e.g. '# transformer blocks [1, 16]'"
_LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


@dataclass(frozen=True)
class Hyperparameter:
    """One module-level constant of train.py and the range its comment declares (if any)."""

    name: str
    value: Any
    line: int  # 1-based line of the assignment
    comment: str  # the description, without the range
    kind: str  # "int" | "float" | "bool" | "choice"
    low: int | float | None = None
    high: int | float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def has_range(self) -> bool:
        return self.low is not None or self.choices is not None

    @property
    def range_text(self) -> str | None:
        """The declared range as it would be written in the comment."""
        if self.choices is not None:
            return "{" + ", ".join(repr(c) for c in self.choices) + "}"
        return None if self.low is None else f"[{self.low!r}, {self.high!r}]"

    @property
    def log_scale(self) -> bool:
        """Whether the range is searched and normalized on a log scale: positive and spanning an order of magnitude
        or more (learning rates, widths, batch sizes), where equal ratios, not equal differences, are equal steps."""
        return self.low is not None and self.low > 0 and self.high / self.low >= 10

    def in_range(self, value: Any) -> bool:
        """True when value fits the declared range, type included; always True without a range."""
        if self.choices is not None:
            return any(_same(value, choice) for choice in self.choices)
        if self.low is None:
            return True
        if not _is_number(value) or (self.kind == "int" and not isinstance(value, int)):
            return False
        return self.low <= value <= self.high

    def normalized(self, value: Any) -> float:
        """Map value to [0, 1]: bools to 0/1, choices by index, wide positive ranges on a log scale."""
        if self.kind == "bool" and isinstance(value, bool):
            return float(value)
        if self.choices is not None:
            for index, choice in enumerate(self.choices):
                if _same(value, choice):
                    return index / (len(self.choices) - 1) if len(self.choices) > 1 else 0.0
            raise ValueError(f"{self.name}: {value!r} is not one of {self.range_text}")
        if self.low is None or not _is_number(value):
            raise ValueError(f"{self.name} has no numeric range to normalize {value!r} in; add one like [lo, hi]")
        low, high = self.low, self.high
        v = min(max(value, low), high)  # out-of-range values clamp to the ends
        if high == low:
            return 0.0
        if self.log_scale:
            return math.log(v / low) / math.log(high / low)
        return (v - low) / (high - low)


def parse_hyperparameters(source: str) -> list[Hyperparameter]:
    """Module-level `NAME = literal` constants of source, in order.

    Raises ValueError ("line N: ...", saying what to write) on the first malformed range comment, and
    SyntaxError when source does not parse.
    """
    params, errors = scan_hyperparameters(source)
    if errors:
        line, reason = errors[0]
        raise ValueError(f"line {line}: {reason}")
    return params


def scan_hyperparameters(source: str) -> tuple[list[Hyperparameter], list[tuple[int, str]]]:
    """Like parse_hyperparameters, but returns every malformed range as (line, reason) instead of raising."""
    tree = ast.parse(source)
    comments = _trailing_comments(source)
    params: list[Hyperparameter] = []
    errors: list[tuple[int, str]] = []
    for node in tree.body:
        assignment = _constant_assignment(node)
        if assignment is None:
            continue
        name, value_node = assignment
        comment = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno, "")
        description, range_text = _split_range(comment)
        try:
            value = ast.literal_eval(value_node)
        except _LITERAL_ERRORS:
            if range_text is not None:  # a computed value would slip past its own range check
                errors.append((node.lineno,
                               f"{name} declares a range but its value is not a literal; write a plain value"))
            continue
        try:
            params.append(_build(name, value, node.lineno, description, range_text))
        except ValueError as e:
            errors.append((node.lineno, str(e)))
    return params, errors


def _constant_assignment(node: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return None
    if isinstance(target, ast.Name) and _CONSTANT.fullmatch(target.id):
        return target.id, value
    return None


def _trailing_comments(source: str) -> dict[int, str]:
    """Line number -> text of a comment that follows code on that line."""
    comments: dict[int, str] = {}
    code_rows: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT and tok.start[0] in code_rows:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type not in skip:
                code_rows.update(range(tok.start[0], tok.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse already accepted the source; keep whatever was read
    return comments


def _split_range(comment: str) -> tuple[str, str | None]:
    """Split a comment into (description, range text); the range is the shortest bracketed literal at the end."""
    text = comment.rstrip()
    if not text.endswith(("]", "}")):
        return text, None
    opener = "[" if text.endswith("]") else "{"
    starts = [i for i, ch in enumerate(text) if ch == opener]
    for start in reversed(starts):  # shortest suffix first, so brackets in the description do not matter
        try:
            ast.parse(text[start:], mode="eval")
        except SyntaxError:
            continue
        return text[:start].strip(), text[start:]
    start = starts[-1] if starts else 0
    return text[:start].strip(), text[start:]


def _build(name: str, value: Any, line: int, description: str, range_text: str | None) -> Hyperparameter:
    if range_text is None:
        return Hyperparameter(name, value, line, description, _kind_of(value))
    malformed = ValueError(f"{name} has a malformed range {range_text!r}; {_HOW}")
    try:
        node = ast.parse(range_text, mode="eval").body
        items = [ast.literal_eval(e) for e in node.elts] if isinstance(node, (ast.List, ast.Set)) else []
    except _LITERAL_ERRORS:
        raise malformed from None
    if isinstance(node, ast.List) and len(items) == 2 and all(_is_number(x) and math.isfinite(x) for x in items):
        low, high = items
        if low > high:
            raise ValueError(f"{name} has range {range_text} with lo > hi; write it as [{high!r}, {low!r}]")
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        return Hyperparameter(name, value, line, description, kind, low=low, high=high)
    if isinstance(node, ast.Set) and items:
        if any(_same(a, b) for i, a in enumerate(items) for b in items[i + 1 :]):
            raise ValueError(f"{name} lists a choice twice in {range_text}; list each choice once")
        kind = "bool" if all(isinstance(c, bool) for c in items) else "choice"
        return Hyperparameter(name, value, line, description, kind, choices=tuple(items))
    raise malformed


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return "float" if isinstance(value, float) else "choice"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python, but a bool hyperparameter set to 1 is a type error, not a match
    return (type(a) is bool) == (type(b) is bool) and a == b
