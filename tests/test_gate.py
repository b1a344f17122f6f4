"""kit.gate: every forbidden class is rejected at its exact line; clean train.py code passes; hashes see edits."""

from pathlib import Path

import pytest

from kit.gate import GateConfig, GateResult, Problem, changed_files, check_file, check_source, hash_files

# Six lines of allowed imports that the attacks below refer to.
HEADER = """import os
import torch
import torch.nn.functional as F
import numpy as np
import prepare
from prepare import TIME_BUDGET, evaluate_bpb
"""

CLEAN = '''"""A small train.py-like script."""
import contextlib
import gc
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import DEVICE, MAX_SEQ_LEN, TIME_BUDGET, hand_off, make_dataloader, report_progress

DEPTH = 2                  # transformer blocks [1, 16]
MATRIX_LR = 0.02           # Muon learning rate [0.001, 0.2]
QK_NORM = False            # normalize queries and keys {False, True}
WINDOW_PATTERN = "SL"      # attention window per layer {"L", "SL", "SSL"}
UNTIMED_STEPS = 2          # first steps left out of the budget

torch.backends.cuda.matmul.allow_tf32 = True
torch.set_float32_matmul_precision("high")
torch.use_deterministic_algorithms(False)
workers = int(os.environ.get("WORKERS", "1")) + len(os.environ["HOME"]) * 0 + os.cpu_count()


@dataclass
class Config:
    depth: int = DEPTH
    seq_len: int = MAX_SEQ_LEN


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(config.depth)])
        self.blocks.append(nn.Linear(8, 8))
        setattr(self, "head", nn.Linear(8, 8))

    def forward(self, x, input=None):
        for block in self.blocks:
            x = x + F.relu(block(x)).square()
        return getattr(self, "head")(x)


def lr_at(progress):
    return MATRIX_LR * (1.0 - progress)


if __name__ == "__main__":
    with open(os.path.join(os.path.dirname(__file__), "notes.txt"), "r", encoding="utf-8") as f:
        notes = f.read()
    model = Model(Config()).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=lr_at(0.0))
    loader = make_dataloader(4)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if DEVICE == "cuda" else contextlib.nullcontext()
    step, t0 = 0, time.time()
    while time.time() - t0 < TIME_BUDGET:
        x, y = next(loader)
        with ctx:
            loss = F.mse_loss(model(x.float()), y.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        report_progress(step, time.time() - t0, loss.item(), step * 4)
        if not math.isfinite(loss.item()):
            raise FloatingPointError("loss diverged")
        if step == 1:
            gc.collect()
            gc.freeze()
    print(f"steps: {step}", type(model).__name__)
    hand_off(model)
'''


def reasons_at(source: str) -> dict[int, list[str]]:
    result = check_source(source)
    by_line: dict[int, list[str]] = {}
    for p in result.problems:
        by_line.setdefault(p.line, []).append(p.reason)
    assert result.ok == (not by_line)
    return by_line


def test_clean_train_like_source_passes():
    result = check_source(CLEAN)
    assert result.ok, result.summary()
    assert result.problems == () and result.summary() == "ok"


def test_the_repository_train_py_passes():
    result = check_file(Path(__file__).resolve().parent.parent / "train.py")
    assert result.ok, result.summary()


# attack -> reason fragment; each attack is line 8, after HEADER and `import gc`
ATTACKS = {
    # imports outside the whitelist, or denied parts inside it
    "import subprocess": "import of subprocess is not allowed",
    "import socket": "import of socket is not allowed",
    "import ctypes": "import of ctypes is not allowed",
    "import importlib": "import of importlib is not allowed",
    "from urllib.request import urlopen": "import of urllib.request is not allowed",
    "import requests": "import of requests is not allowed",
    "import multiprocessing": "import of multiprocessing is not allowed",
    "import shutil": "import of shutil is not allowed",
    "import sys": "import of sys is not allowed",
    "import torch.multiprocessing as mp": "torch.multiprocessing spawns",
    "from torch import multiprocessing": "torch.multiprocessing spawns",
    "import torch.distributed": "torch.distributed starts distributed workers",
    "from torch.utils.cpp_extension import load_inline": "torch.utils.cpp_extension loads native code",
    "from . import helpers": "relative import",
    "from prepare import *": "import them by name",
    "from prepare import __builtins__": "interpreter internals",
    # builtins that run or reach code
    "eval('1 + 1')": "eval evaluates strings as code",
    "exec('x = 1')": "exec evaluates strings as code",
    "code = compile('1', 'f', 'eval')": "compile builds code objects",
    "m = __import__('subprocess')": "__import__ imports modules",
    "g = globals()": "globals exposes a namespace",
    "v = vars(prepare)": "vars exposes a namespace",
    "breakpoint()": "breakpoint stops for a debugger",
    "name = input()": "input() waits on a stdin",
    "run = eval": "eval evaluates strings as code",
    # open with a writing or hidden mode
    "open('x.txt', 'w')": "open(..., 'w') writes a file",
    "open('x.txt', 'ab')": "open(..., 'ab') writes a file",
    "open('x.txt', mode='r+')": "open(..., 'r+') writes a file",
    "open('x.txt', 'x')": "open(..., 'x') writes a file",
    "open('x.txt', MODE)": "computed mode",
    "open('x.txt', *args)": "hides its mode",
    "o = open": "open may only be called directly",
    "prepare.DATA_DIR.open('w')": "prepare.DATA_DIR.open is not part of prepare's interface",
    "prepare.PROFILE.open('w')": "open(..., 'w') writes a file",
    "prepare.subprocess.run(['ls'])": "prepare.subprocess.run reaches module subprocess",
    "from prepare import subprocess": "prepare.subprocess reaches module subprocess",
    "torch.os.system('ls')": "torch.os.system spawns or signals a process",
    "prepare.urllib.request.urlopen('http://x')": "reaches module urllib.request",
    "prepare.np.save('x', 1)": "prepare.np.save is not part of prepare's interface",
    "prepare.download('http://x', 'y')": "prepare.download is not part of prepare's interface",
    # processes and the file system through os
    "os.system('ls')": "os.system spawns",
    "os.popen('ls')": "os.popen spawns",
    "os.execv('/bin/sh', ['sh'])": "os.execv spawns",
    "os.spawnl(os.P_NOWAIT, '/bin/sh')": "os.spawnl spawns",
    "pid = os.fork()": "os.fork spawns",
    "os.kill(1, 9)": "os.kill spawns or signals",
    "os.remove('prepare.py')": "os.remove changes the file system",
    "os.unlink('prepare.py')": "os.unlink changes the file system",
    "os.rename('a', 'b')": "os.rename changes the file system",
    "os.replace('a', 'b')": "os.replace changes the file system",
    "os.rmdir('d')": "os.rmdir changes the file system",
    "os.makedirs('d')": "os.makedirs changes the file system",
    "os.mkdir('d')": "os.mkdir changes the file system",
    "os.chmod('prepare.py', 0o777)": "os.chmod changes the file system",
    "os.symlink('a', 'b')": "os.symlink changes the file system",
    "os.link('a', 'b')": "os.link changes the file system",
    "os.truncate('prepare.py', 0)": "os.truncate changes the file system",
    "from os import system": "os.system spawns",
    # os.environ writes
    "os.environ['AUTORESEARCH_BUDGET'] = '9999'": "assigning os.environ['AUTORESEARCH_BUDGET'] changes os.environ",
    "os.environ.update(AUTORESEARCH_SEED='1')": "os.environ.update(...) changes os.environ",
    "os.environ.setdefault('A', 'b')": "os.environ.setdefault(...) changes os.environ",
    "del os.environ['HOME']": "deleting os.environ['HOME']",
    "os.putenv('A', 'b')": "os.putenv changes the process environment",
    "os.environ |= {'A': 'b'}": "assigning os.environ changes os.environ",
    # file writes by any API
    "prepare.DATA_DIR.write_text('x')": ".write_text(...) writes a file",
    "prepare.DATA_DIR.write_bytes(b'x')": ".write_bytes(...) writes a file",
    "torch.save({}, 'model.pt')": "torch.save writes a file",
    "np.save('x.npy', np.zeros(3))": "numpy.save writes a file",
    "np.savez('x.npz', a=np.zeros(3))": "numpy.savez writes a file",
    "np.zeros(3).tofile('x.bin')": ".tofile(...) writes a file",
    "from torch import save": "torch.save writes a file",
    # patching imported modules and whatever is reached from them
    "prepare.TIME_BUDGET = 1": "assigning prepare.TIME_BUDGET changes an object reached from imported prepare",
    "torch.nn.functional.softmax = abs": "assigning torch.nn.functional.softmax changes an object reached from imported torch",
    "F.cross_entropy = abs": "assigning F.cross_entropy changes an object reached from imported torch.nn.functional",
    "prepare.TIME_BUDGET += 100": "assigning prepare.TIME_BUDGET changes",
    "del prepare.evaluate_bpb": "deleting prepare.evaluate_bpb",
    "evaluate_bpb.cache = {}": "assigning evaluate_bpb.cache changes an object reached from imported prepare.evaluate_bpb",
    "TIME_BUDGET.real = 1": "reached from imported prepare.TIME_BUDGET",
    "prepare.PROFILES['cpu'] = None": "assigning prepare.PROFILES['cpu'] changes",
    "prepare.PROFILES.update(cpu=None)": "prepare.PROFILES.update(...) changes an object reached from imported prepare",
    "setattr(prepare, 'TIME_BUDGET', 1)": "setattr(..., 'TIME_BUDGET') changes an object reached from imported prepare",
    "delattr(torch, 'compile')": "delattr(..., 'compile') changes an object reached from imported torch",
    "type(torch.zeros(1)).add = abs": "can patch an imported class",
    # reseeding
    "torch.manual_seed(0)": "manual_seed(...) reseeds",
    "torch.cuda.manual_seed_all(0)": "manual_seed_all(...) reseeds",
    "np.random.seed(0)": "seed(...) reseeds",
    "torch.Generator().manual_seed(1)": "manual_seed(...) reseeds",
    "seed_everything(1)": "seed_everything(...) reseeds",
    "set_seed(1)": "set_seed(...) reseeds",
    "reseed = torch.manual_seed": "manual_seed(...) reseeds",
    # a generator state of its own: restored, forked or built from a constant
    "np.random.set_state(state)": "set_state(...) reseeds",
    "torch.Generator().set_state(state)": "set_state(...) reseeds",
    "with torch.random.fork_rng():\n    pass": "fork_rng(...) reseeds",
    "rng = np.random.default_rng(7)": "default_rng(...) reseeds",
    "rng = np.random.RandomState(7)": "RandomState(...) reseeds",
    "rng = np.random.Generator(np.random.PCG64(7))": "PCG64(...) reseeds",
    # interpreter escapes
    "x = ().__class__": ".__class__ reaches interpreter internals",
    "x = F.__dict__": ".__dict__ reaches interpreter internals",
    "x = lr_at.__globals__": ".__globals__ reaches interpreter internals",
    "x = lr_at.__code__": ".__code__ reaches interpreter internals",
    "x = object.__subclasses__()": ".__subclasses__ reaches interpreter internals",
    "x = int.__bases__": ".__bases__ reaches interpreter internals",
    "x = int.__mro__": ".__mro__ reaches interpreter internals",
    "object.__setattr__(prepare, 'X', 1)": ".__setattr__ reaches interpreter internals",
    "x = getattr(torch, name)": "computed attribute name",
    "x = getattr(F, '__globals__')": ".__globals__ reaches interpreter internals",
    "getattr(os, 'system')('ls')": "os.system spawns",
    "getattr(prepare, 'DATA_DIR').write_text('x')": ".write_text(...) writes a file",
    "f = getattr": "getattr may only be called directly",
    "x = __builtins__": "__builtins__ reaches the interpreter's builtins",
    "x = builtins.open": "builtins reaches the interpreter's builtins",
    "sys.exit(0)": "sys reaches the interpreter's internals",
    "x = __loader__": "__loader__ reaches interpreter internals",
    # objects that reach everything
    "objs = gc.get_objects()": "gc.get_objects reaches every live object",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_forbidden_construct_is_reported_at_its_line(attack):
    source = HEADER + "import gc\n" + attack + "\nprint('done')\n"
    found = reasons_at(source)
    assert set(found) == {8}, found
    assert any(ATTACKS[attack] in reason for reason in found[8]), found[8]


def test_aliases_of_imported_modules_are_followed():
    source = HEADER + "P = prepare\nmm = P\nmm.TIME_BUDGET = 1\nfor m in (torch, prepare):\n    m.x = 1\n" \
                      "def patch(m=prepare):\n    m.TIME_BUDGET = 2\nenv = os.environ\nenv['A'] = 'b'\n"
    found = reasons_at(source)
    assert sorted(found) == [9, 11, 13, 15]
    assert found[9][0].startswith("assigning mm.TIME_BUDGET changes an object reached from imported prepare;")
    assert "changes os.environ" in found[15][0]


def test_allowed_backend_switches_and_reads_pass():
    source = HEADER + "torch.backends.cudnn.benchmark = True\ntorch._inductor.config.coordinate_descent_tuning = True\n" \
                      "x = os.environ.get('HOME'), 'HOME' in os.environ, os.getenv('A')\n" \
                      "torch.use_deterministic_algorithms(True)\nopen('notes.txt').read()\nseed = 3\nprint(seed)\n"
    assert check_source(source).ok, check_source(source).summary()


def test_several_attacks_in_one_source_are_all_reported_in_line_order():
    lines = [
        "import os",                        # 1
        "import torch",                     # 2
        "import prepare",                   # 3
        "DEPTH = 64  # blocks [1, 16]",     # 4
        "os.system('curl evil')",           # 5
        "prepare.TIME_BUDGET = 10**6",      # 6
        "x = 1",                            # 7
        "torch.manual_seed(1234)",          # 8
        "eval('x')",                        # 9
        "import socket",                    # 10
        "torch.save({}, 'm.pt')",           # 11
    ]
    source = "\n".join(lines) + "\n"
    result = check_source(source)
    assert not result.ok
    assert [p.line for p in result.problems] == [4, 5, 6, 8, 9, 10, 11]
    assert result.summary().startswith("line 4: DEPTH = 64 is outside its declared range [1, 16]; ")
    assert "line 5: os.system spawns" in result.summary()


def test_out_of_range_and_wrong_type_hyperparameters_are_rejected():
    found = reasons_at("import torch\nDEPTH = 17  # blocks [1, 16]\nQK_NORM = 1  # qk norm {False, True}\n"
                       "LR = 0.5  # lr [0.001, 0.2]\nOK = 3  # fine [1, 16]\n")
    assert sorted(found) == [2, 3, 4]
    assert found[2] == ["DEPTH = 17 is outside its declared range [1, 16]; pick a value inside it"]
    assert "{False, True}" in found[3][0]


def test_malformed_range_comment_is_rejected_with_its_line():
    found = reasons_at("import torch\n\nDEPTH = 4  # blocks [16, 1]\nLR = 1  # lr [1, 2, 3]\n")
    assert sorted(found) == [3, 4]
    assert "write it as [1, 16]" in found[3][0] and "write [lo, hi]" in found[4][0]


def test_rebinding_a_ranged_hyperparameter_is_rejected():
    found = reasons_at("import torch\nDEPTH = 4  # blocks [1, 16]\nDEPTH = 400\ndef f():\n    global DEPTH\n"
                       "    DEPTH += 1\n")
    assert sorted(found) == [3, 6]
    assert "declared on line 2" in found[3][0]


def test_range_checks_can_be_switched_off():
    config = GateConfig(check_ranges=False)
    assert check_source("import torch\nDEPTH = 99  # blocks [1, 16]\n", config).ok


def test_whitelist_is_configurable():
    source = "import random\nx = random.random()\n"
    assert not check_source(source).ok
    config = GateConfig(allowed_imports=GateConfig().allowed_imports | {"random"})
    assert check_source(source, config).ok


def test_syntax_error_reports_its_line():
    result = check_source("import torch\nx = 1\ndef f(:\n    pass\n")
    assert not result.ok and [p.line for p in result.problems] == [3]
    assert result.problems[0].reason.startswith("syntax error")


@pytest.mark.parametrize("source", ["", "   \n\n", "# only a comment\n"])
def test_empty_source_is_rejected(source):
    result = check_source(source)
    assert not result.ok and result.problems[0].line == 0 and "restore train.py" in result.problems[0].reason


def test_summary_and_problem_text():
    result = GateResult(ok=False, problems=(Problem(12, "os.system spawns a process"), Problem(14, "b")))
    assert result.summary() == "line 12: os.system spawns a process; line 14: b"
    assert str(Problem(3, "x")) == "line 3: x"


def test_check_file_on_missing_path_says_what_to_do(tmp_path):
    missing = tmp_path / "train.py"
    result = check_file(missing)
    assert not result.ok and len(result.problems) == 1
    problem = result.problems[0]
    assert problem.line == 0 and str(missing) in problem.reason and "git checkout -- train.py" in problem.reason


def test_check_file_reads_and_checks(tmp_path):
    good, bad, binary = tmp_path / "good.py", tmp_path / "bad.py", tmp_path / "binary.py"
    good.write_text(CLEAN)
    bad.write_text(HEADER + "os.system('ls')\n")
    binary.write_bytes(b"\xff\xfe\x00")
    assert check_file(good).ok
    assert [p.line for p in check_file(bad).problems] == [7]
    assert check_file(binary).problems[0].line == 0
    assert check_file(tmp_path).problems[0].line == 0  # a directory is unreadable, not an exception


def test_hash_files_and_changed_files_detect_a_one_byte_edit(tmp_path):
    a, b, gone = tmp_path / "prepare.py", tmp_path / "data.bin", tmp_path / "gone.py"
    a.write_text("TIME_BUDGET = 300\n")
    b.write_bytes(bytes(range(256)) * 10_000)  # 2.5 MB: more than one 1 MiB chunk
    before = hash_files([a, b, gone])
    assert before[str(gone)] == "missing"
    assert len(before[str(a)]) == 64 and before == hash_files([a, b, gone])
    assert changed_files(before, hash_files([a, b, gone])) == []

    a.write_text("TIME_BUDGET = 900\n")  # one byte differs
    data = bytearray(b.read_bytes())
    data[-1] ^= 1
    b.write_bytes(bytes(data))
    gone.write_text("x")
    after = hash_files([a, b, gone])
    assert changed_files(before, after) == sorted([str(a), str(b), str(gone)])
    assert changed_files({"x": "1"}, {}) == ["x"]  # a vanished entry counts as changed
