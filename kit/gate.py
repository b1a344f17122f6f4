"""The validation gate: decide, without running it, whether a train.py may run at all.

Owns: parsing, the forbidden constructs (imports outside a whitelist, process spawning, file writes, changes to
os.environ, patching imported modules or objects, reseeding, interpreter escapes), hyperparameter range checks,
and the file hashes the harness compares to prove frozen files were not touched.
Does not own: running or sandboxing anything (kit.harness, kit.sandbox). The gate is the first of several
defenses, so it prefers plain, cheap rules over completeness: it follows simple aliases (`P = prepare`), not
data flow through function calls or containers; the sandbox and out-of-process evaluation cover the rest.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import os
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kit.hyperparams import scan_hyperparameters

_SPAWN = "spawns or signals a process"
_FS = "changes the file system (train.py only reads files)"
_WRITE = "writes a file (train.py never writes; the model hand-off goes through prepare)"
_ENV = "changes the process environment"
_NATIVE = "loads native code"
_EVAL = "evaluates strings as code"

DENIED: dict[str, str] = {
    **dict.fromkeys(["os.system", "os.popen", "os.exec*", "os.spawn*", "os.posix_spawn*", "os.fork*", "os.kill*",
                     "os.register_at_fork"], _SPAWN),
    **dict.fromkeys(["os.remove", "os.unlink", "os.rename*", "os.replace", "os.rmdir", "os.removedirs", "os.mkdir",
                     "os.makedirs", "os.mkfifo", "os.mknod", "os.chmod", "os.lchmod", "os.chown", "os.lchown",
                     "os.chdir", "os.symlink", "os.link", "os.truncate", "os.ftruncate", "os.utime", "os.open",
                     "os.fdopen", "os.write*", "os.pwrite*", "os.sendfile", "os.dup*"], _FS),
    **dict.fromkeys(["os.putenv", "os.unsetenv", "os.set*", "os.nice", "os.sched_set*"], _ENV),
    "torch.multiprocessing": _SPAWN,
    "torch.distributed": "starts distributed workers; the harness owns processes",
    "torch.hub": "downloads code and weights from the network",
    "torch.utils.cpp_extension": _NATIVE,
    "torch.ops.load_library": _NATIVE,
    "torch.classes.load_library": _NATIVE,
    "torch.library": "registers operator overrides, which patches torch",
    "torch._C": "reaches torch's C internals",
    **dict.fromkeys(["torch.save", "torch.serialization", "torch.jit.save", "torch.export.save", "torch.onnx",
                     "torch.cuda.memory._dump_snapshot", "numpy.save*", "numpy.memmap",
                     "numpy.lib.format.open_memmap"], _WRITE),
    **dict.fromkeys(["numpy.ctypeslib", "numpy.f2py", "numpy.distutils"], _NATIVE),
    **dict.fromkeys(["gc.get_objects", "gc.get_referrers", "gc.get_referents"],
                    "reaches every live object, the frozen side's included"),
    **dict.fromkeys(["typing.get_type_hints", "typing.ForwardRef"], _EVAL),
}

DENIED_BUILTINS: dict[str, str] = {
    "eval": _EVAL,
    "exec": _EVAL,
    "compile": "builds code objects from strings",
    "__import__": "imports modules behind the gate's back",
    "globals": "exposes a namespace that can be rewritten",
    "locals": "exposes a namespace that can be rewritten",
    "vars": "exposes a namespace that can be rewritten",
    "breakpoint": "stops for a debugger that nobody attends",
    "__builtins__": "reaches the interpreter's builtins",
    "builtins": "reaches the interpreter's builtins",
    "sys": "reaches the interpreter's internals",
}


@dataclass(frozen=True)
class GateConfig:
    """What the gate lets through; the defaults fit the kit's train.py."""

    allowed_imports: frozenset[str] = frozenset({"math", "time", "gc", "dataclasses", "functools", "typing",
                                                 "itertools", "collections", "contextlib", "warnings", "os",
                                                 "torch", "numpy", "prepare"})
    """Top-level modules train.py may import (`import torch.nn` counts as torch); anything else is rejected."""
    reachable_modules: frozenset[str] = frozenset({"posixpath", "genericpath", "builtins", "_operator", "abc",
                                                   "enum", "copy", "re", "json", "numbers", "random"})
    """Modules train.py may reach through an allowed one (os.path is posixpath) without importing them."""
    denied: Mapping[str, str] = field(default_factory=lambda: dict(DENIED))
    """Qualified names that may be neither imported nor used, each with why; a trailing '*' matches a prefix."""
    denied_builtins: Mapping[str, str] = field(default_factory=lambda: dict(DENIED_BUILTINS))
    """Names that may not appear at all (not even passed around), each with why."""
    assignable: frozenset[str] = frozenset({"torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.*",
                                            "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction",
                                            "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction",
                                            "torch._dynamo.config.*", "torch._inductor.config.*"})
    """Attributes of imported modules train.py may set (backend switches); a trailing '*' matches a prefix."""
    allowed_dunders: frozenset[str] = frozenset({"__init__", "__name__", "__doc__", "__file__", "__post_init__"})
    """Dunder names and attributes train.py may use; every other one is an escape into interpreter internals."""
    seed_calls: frozenset[str] = frozenset({"manual_seed", "manual_seed_all", "seed", "set_seed", "seed_everything",
                                            "set_rng_state", "set_rng_state_all", "set_state", "setstate",
                                            "graphsafe_set_state", "fork_rng", "default_rng", "RandomState",
                                            "Random", "SeedSequence", "PCG64", "PCG64DXSM", "MT19937", "Philox",
                                            "SFC64", "BitGenerator"})
    """Names that reseed a random generator, restore its state or make one with a state of its own: the seed belongs
    to the frozen side (prepare.py), and a train.py whose result ignores it would confirm its own lucky draw."""
    file_methods: frozenset[str] = frozenset({"write_text", "write_bytes", "tofile", "touch", "unlink", "mkdir",
                                              "rmdir", "symlink_to", "hardlink_to", "chmod", "lchmod"})
    """Method names that write to the file system whatever object they are called on."""
    mutating_methods: frozenset[str] = frozenset({"update", "setdefault", "pop", "popitem", "clear", "append",
                                                  "extend", "insert", "remove", "add", "discard"})
    """Methods that change a container in place; denied on anything reached from an imported module."""
    check_ranges: bool = True
    """Reject hyperparameters outside their declared range, and rebinding them after their declaration."""


@dataclass(frozen=True, order=True)
class Problem:
    """One reason to reject; line 0 means the whole file."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class GateResult:
    """The verdict: ok, or the problems in line order."""

    ok: bool
    problems: tuple[Problem, ...] = ()

    def summary(self) -> str:
        """One line: 'ok', or every problem as 'line N: reason' joined by '; '."""
        return "ok" if self.ok else "; ".join(str(p) for p in self.problems)


def check_source(source: str, config: GateConfig = GateConfig()) -> GateResult:
    """Every problem of source (sorted by line); ok only when there is none."""
    if not source.strip():
        return _reject(0, "the file is empty; restore train.py (git checkout -- train.py) and edit from there")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return _reject(e.lineno or 0, f"syntax error: {e.msg}; fix it so that `python train.py` parses")
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        return _reject(0, f"cannot parse the file ({type(e).__name__}: {e}); write plain Python source")
    if not tree.body:
        return _reject(0, "the file has no statements; restore train.py (git checkout -- train.py)")

    problems: set[Problem] = set()
    declared: dict[str, int] = {}
    if config.check_ranges:
        params, errors = scan_hyperparameters(source)
        problems.update(Problem(line, reason) for line, reason in errors)
        for p in params:
            if p.has_range:
                declared.setdefault(p.name, p.line)
                if not p.in_range(p.value):
                    problems.add(Problem(p.line, f"{p.name} = {p.value!r} is outside its declared range "
                                                 f"{p.range_text}; pick a value inside it"))
    checker = _Checker(config, _aliases(tree), declared)
    try:
        checker.visit(tree)
    except RecursionError:
        return _reject(0, "the code is nested too deeply to check; flatten the deepest expression")
    problems |= checker.problems
    return GateResult(ok=not problems, problems=tuple(sorted(problems)))


def check_file(path: str | os.PathLike[str], config: GateConfig = GateConfig()) -> GateResult:
    """check_source on a file; a missing or unreadable file is a line-0 problem, never an exception."""
    try:
        source = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return _reject(0, f"{path} not found; restore it (git checkout -- train.py) or pass the right path")
    except (OSError, UnicodeDecodeError) as e:
        return _reject(0, f"cannot read {path} ({e}); make it a readable UTF-8 text file")
    return check_source(source, config)


def hash_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """str(path) -> sha256 hex digest, read in 1 MiB chunks; 'missing' or 'unreadable' where it cannot be read."""
    digests: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            digests[str(path)] = digest.hexdigest()
        except FileNotFoundError:
            digests[str(path)] = "missing"
        except OSError:  # a directory, no permission: still a state, compared like any other
            digests[str(path)] = "unreadable"
    return digests


def changed_files(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Paths whose digest differs between two hash_files results (appearing or vanishing counts), sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _reject(line: int, reason: str) -> GateResult:
    return GateResult(ok=False, problems=(Problem(line, reason),))


def _matches(qualname: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return qualname.startswith(pattern[:-1])
    return qualname == pattern or qualname.startswith(pattern + ".")


@functools.cache
def _canonical(qualname: str) -> str:
    """The dotted name re-rooted at the module it really reaches: 'prepare.subprocess.run' -> 'subprocess.run',
    'torch.os.system' -> 'os.system'; so an allowed module's own imports cannot smuggle in what the whitelist
    keeps out. Names that do not resolve are returned as written."""
    parts = qualname.split(".")
    try:
        obj = importlib.import_module(parts[0])
    except Exception:  # an unimportable root is judged by its written name
        return qualname
    canonical = [parts[0]]
    for i, attr in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, attr)
        except Exception:
            return ".".join(canonical + parts[i:])
        canonical = obj.__name__.split(".") if isinstance(obj, types.ModuleType) else canonical + [attr]
    return ".".join(canonical)


@functools.cache
def _public_names(module: str) -> frozenset[str]:
    return frozenset(getattr(importlib.import_module(module), "__all__", ()))


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _qualname(node: ast.AST, aliases: Mapping[str, str]) -> str | None:
    """'torch.nn.functional.softmax' for `F.softmax` after `import torch.nn.functional as F`; None if not imported."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _chain(node: ast.AST) -> Iterator[ast.AST]:
    """node, then what it is an attribute or item of, down to the base expression."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        yield node
        node = node.value
    yield node


def _bindings(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(name, expression) pairs a statement binds directly, for alias tracking."""
    if isinstance(node, ast.Assign):
        pairs = [(t, node.value) for t in node.targets]
    elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
        pairs = [(node.target, node.value)]
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)) and isinstance(node.iter, (ast.Tuple, ast.List,
                                                                                              ast.Set)):
        pairs = [(node.target, elt) for elt in node.iter.elts]  # `for m in (prepare, torch): m.X = 1`
    elif isinstance(node, ast.arguments):  # `def f(m=prepare): m.X = 1`
        positional = node.posonlyargs + node.args
        pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d is not None]
    else:
        return
    for target, value in pairs:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
            yield from ((t.id, v) for t, v in zip(target.elts, value.elts, strict=False) if isinstance(t, ast.Name))
        elif isinstance(target, ast.Name):
            yield target.id, value
        elif isinstance(target, ast.arg):
            yield target.arg, value


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> qualified name of the imported object it stands for (imports, then simple assignments)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    root = a.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    bindings = [b for node in ast.walk(tree) for b in _bindings(node)]
    grown = True
    while grown:  # aliases of aliases; each name is bound once, so this ends
        grown = False
        for name, value in bindings:
            qualname = _qualname(value, aliases)
            if qualname and name not in aliases:
                aliases[name] = qualname
                grown = True
    return aliases


class _Checker(ast.NodeVisitor):
    def __init__(self, config: GateConfig, aliases: dict[str, str], declared: dict[str, int]):
        self.config = config
        self.aliases = aliases
        self.declared = declared  # ranged hyperparameter -> its declaration line
        self.problems: set[Problem] = set()
        self.called: set[int] = set()  # id() of expressions in call position

    def report(self, node: ast.AST, reason: str) -> None:
        self.problems.add(Problem(getattr(node, "lineno", 0), reason))

    def denied_reason(self, qualname: str) -> str | None:
        real = _canonical(qualname)
        if real.split(".")[0] not in self.config.allowed_imports | self.config.reachable_modules:
            return f"{qualname} reaches module {real.rsplit('.', 1)[0]}, which train.py may not use"
        parts = qualname.split(".")
        if parts[0] == "prepare" and len(parts) > 1 and parts[1] not in _public_names("prepare"):
            return f"{qualname} is not part of prepare's interface for train.py (prepare.__all__)"
        for pattern, why in self.config.denied.items():
            if _matches(qualname, pattern) or _matches(real, pattern):
                return f"{qualname} {why}"
        return None

    def seed_reason(self, name: str) -> str:
        return f"{name}(...) reseeds random generators; the seed belongs to the frozen side (prepare.py)"

    # imports --------------------------------------------------------------------------------------------------

    def check_module(self, node: ast.AST, module: str) -> bool:
        if module.split(".")[0] not in self.config.allowed_imports:
            allowed = ", ".join(sorted(self.config.allowed_imports))
            self.report(node, f"import of {module} is not allowed; train.py may import only {allowed}")
            return False
        if reason := self.denied_reason(module):
            self.report(node, reason)
            return False
        return True

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.check_module(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.report(node, "relative import; train.py is a single file, import prepare by name")
            return
        module = node.module or ""
        if not self.check_module(node, module):
            return
        for a in node.names:
            if a.name == "*":
                self.report(node, f"from {module} import * hides which names are used; import them by name")
            elif _is_dunder(a.name) and a.name not in self.config.allowed_dunders:
                self.report(node, f"importing {a.name} reaches interpreter internals")
            elif reason := self.denied_reason(f"{module}.{a.name}"):
                self.report(node, reason)

    # names and attributes -------------------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in self.config.denied_builtins:
            self.report(node, f"{name} {self.config.denied_builtins[name]}")
        elif _is_dunder(name) and name not in self.config.allowed_dunders:
            self.report(node, f"{name} reaches interpreter internals")
        elif name in ("open", "getattr", "setattr", "delattr") and id(node) not in self.called:
            self.report(node, f"{name} may only be called directly, so the gate can see its arguments")
        elif (qualname := self.aliases.get(name)) and (reason := self.denied_reason(qualname)):
            self.report(node, reason)
        if isinstance(node.ctx, (ast.Store, ast.Del)) and self.declared.get(name, node.lineno) != node.lineno:
            self.report(node, f"{name} is a hyperparameter declared on line {self.declared[name]}; "
                              "set it only there, so its range check holds")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.check_attribute(node, node.attr, node.value, called=id(node) in self.called):
            return  # the rest of the chain would only repeat the same problem
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.check_store(node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.check_store(node)
        self.generic_visit(node)

    def check_attribute(self, node: ast.AST, attr: str, base: ast.AST, called: bool) -> bool:
        """Rules on `base.attr` (also `getattr(base, "attr")`); True when it reached a denied name."""
        if _is_dunder(attr) and attr not in self.config.allowed_dunders:
            self.report(node, f".{attr} reaches interpreter internals")
        if attr in self.config.file_methods:
            self.report(node, f".{attr}(...) {_WRITE}")
        if attr in self.config.seed_calls and (called or attr != "seed"):  # `.seed` alone is often just a value
            self.report(node, self.seed_reason(attr))
        base_name = _qualname(base, self.aliases)
        if base_name and (reason := self.denied_reason(f"{base_name}.{attr}")):
            self.report(node, reason)
            return True
        return False

    def check_store(self, node: ast.Attribute | ast.Subscript) -> None:
        what = f"{'deleting' if isinstance(node.ctx, ast.Del) else 'assigning'} {ast.unparse(node)}"
        base = list(_chain(node))[-1]
        if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "type":
            self.report(node, f"{what} can patch an imported class; change your own classes only")
        qualname = _qualname(node, self.aliases)
        if not (qualname and any(_matches(qualname, p) for p in self.config.assignable)):
            self.check_frozen(node, what, node)

    def check_frozen(self, node: ast.AST, what: str, target: ast.AST) -> None:
        """Report `what` (an assignment, deletion or in-place change of target) if target is reached from an import."""
        chain = list(_chain(target))
        root = self.aliases.get(chain[-1].id) if isinstance(chain[-1], ast.Name) else None
        if root is None:
            return
        if any(_qualname(n, self.aliases) == "os.environ" for n in chain):
            self.report(node, f"{what} changes os.environ, which the harness and the evaluator share; only read it")
        else:
            self.report(node, f"{what} changes an object reached from imported {root}; imported code and objects "
                              "are frozen")

    # calls ----------------------------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self.called.add(id(func))
        if isinstance(func, ast.Name):
            if func.id == "open":
                self.check_open(node, mode_position=1)
            elif func.id in ("getattr", "setattr", "delattr"):
                self.check_reflection(node, func.id)
            elif func.id == "input":
                self.report(node, "input() waits on a stdin that nobody attends")
            if func.id in self.config.seed_calls:
                self.report(node, self.seed_reason(func.id))
        elif isinstance(func, ast.Attribute):
            qualname = _qualname(func, self.aliases)
            if func.attr == "open" and not (qualname and self.denied_reason(qualname)):  # Path.open(mode)
                self.check_open(node, mode_position=0)
            if func.attr in self.config.mutating_methods:
                self.check_frozen(node, f"{ast.unparse(func)}(...)", func.value)
        self.generic_visit(node)

    def check_open(self, node: ast.Call, mode_position: int) -> None:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            self.report(node, "open(...) with *args or **kwargs hides its mode; pass the mode as a literal like 'rb'")
            return
        mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
        if mode is None and len(node.args) > mode_position:
            mode = node.args[mode_position]
        if mode is None:
            return
        if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
            self.report(node, "open(...) with a computed mode; write the mode as a literal like 'r' or 'rb'")
        elif set(mode.value) & set("wax+"):
            self.report(node, f"open(..., {mode.value!r}) {_WRITE}")

    def check_reflection(self, node: ast.Call, name: str) -> None:
        """getattr/setattr/delattr: a literal, non-dunder attribute name; set/del never on imported objects."""
        if len(node.args) < 2 or any(isinstance(a, ast.Starred) for a in node.args[:2]):
            self.report(node, f"{name}(...) needs the object and the attribute name as plain arguments")
            return
        obj, attr = node.args[0], node.args[1]
        if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
            self.report(node, f"{name}(...) with a computed attribute name; write the attribute out (obj.attr)")
            return
        self.check_attribute(node, attr.value, obj, called=False)
        if name != "getattr":
            self.check_frozen(node, f"{name}(..., {attr.value!r})", obj)
