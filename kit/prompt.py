"""The prompt a language-model policy reads and the completion it writes.

Owns: rendering program.md, the current train.py and the memory (recent and best experiments) into one prompt that
fits a token budget — dropping the oldest recent experiments first, then eliding the bodies of train.py's largest
functions and classes (never the hyperparameters or the training loop) — and turning a completion into a new
train.py: a unified diff in a ```diff block, or a whole file in a ```python block.
Does not own: generating text (kit/policies/lm.py, kit/policies/llm.py) or judging the result (kit/gate.py).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kit import REPO_ROOT
from kit.edits import EditError, apply_unified_diff
from kit.memory import Memory

PROGRAM = REPO_ROOT / "program.md"
_FENCE = re.compile(r"```(\w*)[ \t]*\n(.*?)(?:\n```|\Z)", re.S)


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    tokens: int
    recent_shown: int | None  # None: the whole recent window
    elided: tuple[str, ...] = field(default_factory=tuple)  # train.py definitions whose bodies were left out


def render_prompt(source: str, memory: Memory | None, count_tokens: Callable[[str], int], max_tokens: int,
                  program: str | None = None) -> RenderedPrompt:
    """The prompt, shrunk until count_tokens(prompt) <= max_tokens; ValueError if even the smallest form does not
    fit (the message says how many tokens it needs)."""
    program = program if program is not None else PROGRAM.read_text()
    memory = memory or Memory()
    limits = [None, *range(len(memory.recent()) - 1, -1, -1)]  # the whole window, then one fewer at a time
    for limit in limits:
        text = _compose(program, source, memory.render(limit))
        if (n := count_tokens(text)) <= max_tokens:
            return RenderedPrompt(text, n, limit)
    elided: list[str] = []
    shown = source
    for name in _elision_order(source):
        elided.append(name)
        shown = _elide(source, elided)
        text = _compose(program, shown, memory.render(0))
        if (n := count_tokens(text)) <= max_tokens:
            return RenderedPrompt(text, n, 0, tuple(elided))
    raise ValueError(f"the prompt needs {count_tokens(_compose(program, shown, memory.render(0)))} tokens even with "
                     f"no recent experiments and {len(elided)} definitions elided, over the budget of {max_tokens}: "
                     "use a model with a longer context or fewer new tokens")


def _compose(program: str, source: str, log: str) -> str:
    return (f"{program.strip()}\n\n## Current train.py\n\n```python\n{source.rstrip()}\n```\n\n"
            f"## Experiments\n\n{log}\n\n## Your edit\n\nIDEA:")


def _elision_order(source: str) -> list[str]:
    """Top-level functions and classes, longest first: the model's internals go before anything short, and
    module-level code (hyperparameters, the training loop) is never elided."""
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and len(n.body) > 1]
    return [n.name for n in sorted(defs, key=lambda n: n.body[0].lineno - n.end_lineno)]


def _elide(source: str, names: list[str]) -> str:
    lines = source.splitlines()
    tree = ast.parse(source)
    for node in sorted((n for n in tree.body if getattr(n, "name", None) in names), key=lambda n: -n.lineno):
        first, last = node.body[0].lineno - 1, node.end_lineno
        indent = re.match(r"\s*", lines[first]).group(0)
        lines[first:last] = [f"{indent}...  # {last - first} lines elided to fit the context window"]
    return "\n".join(lines) + "\n"


def parse_completion(completion: str, source: str) -> tuple[str, str]:
    """(new train.py, one-line description) from a completion; EditError saying what was wrong otherwise."""
    description = _description(completion)
    blocks = _FENCE.findall(completion)
    diffs = [body for lang, body in blocks if lang in ("diff", "patch") or body.lstrip().startswith("--- ")]
    if not diffs and re.search(r"^--- a/\S+\n\+\+\+ b/", completion, re.M):
        diffs = [completion[completion.index("--- a/"):]]
    if diffs:
        return apply_unified_diff(source, diffs[0].rstrip("\n") + "\n"), description
    files = [body for lang, body in blocks if lang in ("python", "py", "") and "hand_off(" in body]
    if files:
        return files[0].rstrip("\n") + "\n", description
    shown = " ".join(completion.split())[:80]
    raise EditError(f"the completion holds no ```diff block and no whole train.py in a ```python block: {shown!r}")


def _description(completion: str) -> str:
    for line in completion.splitlines():
        line = line.strip().removeprefix("IDEA:").strip()
        if line and not line.startswith("```"):
            return line[:200]
    return "(no description)"
