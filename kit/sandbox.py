"""Process isolation for one experiment: what a sandboxed command may see, write and use.

Owns: choosing a backend (bubblewrap, else `unshare`, else none with a warning), wrapping a
command so that it has no network, a read-only view of the file system except the directories it
may write, hidden directories (the validation split) replaced by empty ones, its own PID
namespace (so nothing it starts outlives it), no capabilities (so none of this can be unmounted or
remounted from inside), and resource limits (memory, file size, processes).
Does not own: running or timing the command (kit/harness.py).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import resource
import shlex
import shutil
import signal
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path

BACKENDS = ("bwrap", "unshare", "none")
PR_SET_PDEATHSIG = 1  # prctl option, from <sys/prctl.h>


@dataclass(frozen=True)
class SandboxSpec:
    writable: tuple[Path, ...] = ()
    """Directories the command may write (the run directory); everything else is read-only."""
    hidden: tuple[Path, ...] = ()
    """Directories replaced by an empty one inside the sandbox (the validation split)."""
    memory_limit_mb: int = 0
    """Limit on the process's writable memory (RLIMIT_DATA); 0 = none (GPU runs, whose drivers map a lot)."""
    file_size_limit_mb: int = 2048
    """Largest file the command may write, so a runaway log or checkpoint cannot fill the disk."""
    max_processes: int = 4096
    """RLIMIT_NPROC (threads count too); not enforced for root, where the PID namespace and the gate hold."""
    extra_env: dict[str, str] = field(default_factory=dict)


def _works(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def detect_backend() -> str:
    """The strongest backend that runs here: 'bwrap', 'unshare' or 'none'."""
    if shutil.which("bwrap") and _works(wrap(["true"], SandboxSpec(), "bwrap")):
        return "bwrap"
    if shutil.which("unshare") and _works(wrap(["true"], SandboxSpec(), "unshare")):
        return "unshare"
    return "none"


def resolve_backend(requested: str | None = None) -> str:
    """The backend to use; 'auto'/None picks the strongest available and warns when there is none."""
    if requested not in (None, "auto", *BACKENDS):
        raise ValueError(f"unknown sandbox backend {requested!r}: choose auto, {', '.join(BACKENDS)}")
    backend = detect_backend() if requested in (None, "auto") else requested
    if backend == "none":
        warnings.warn("no sandbox: experiments run with network and a writable file system; "
                      "install bubblewrap (apt-get install bubblewrap) to isolate them", stacklevel=2)
    return backend


def wrap(argv: list[str], spec: SandboxSpec, backend: str) -> list[str]:
    """argv wrapped so that it runs inside the sandbox described by spec."""
    if backend == "none":
        return list(argv)
    if backend == "bwrap":
        cmd = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL"]  # run as root, bwrap keeps caps
        for device in sorted(glob.glob("/dev/nvidia*")):  # a fresh /dev has no GPU nodes; CUDA needs them
            cmd += ["--dev-bind", device, device]
        for path in spec.hidden:
            cmd += ["--tmpfs", str(path)]
        for path in spec.writable:
            cmd += ["--bind", str(path), str(path)]
        return cmd + ["--", *argv]
    if backend == "unshare":
        # A shell inside new user/mount/net/pid namespaces sets up the mounts, then execs argv.
        steps = [f"mount --bind {shlex.quote(str(p))} {shlex.quote(str(p))}" for p in spec.writable]
        skip = " ".join(shlex.quote(str(p)) for p in spec.writable)
        steps.append(
            "for m in $(awk '{print $5}' /proc/self/mountinfo); do "
            f"case \" {skip} \" in *\" $m \"*) continue;; esac; "
            "case $m in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac; "
            "mount -o remount,bind,ro \"$m\" 2>/dev/null || true; done")
        steps += [f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(p))}" for p in spec.hidden]
        # the working directory was entered before the mounts: enter it again, or it stays on the read-only view
        steps.append('cd "$PWD"')
        # Root of the new user namespace could undo every mount above: drop all capabilities before exec.
        drop = 'exec setpriv --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- "$@"'
        script = " && ".join(steps + [drop])
        return ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--ipc", "--uts",
                "--fork", "--kill-child", "--mount-proc", "--", "/bin/sh", "-c", script, "sandbox", *argv]
    raise ValueError(f"unknown sandbox backend {backend!r}")


def limit_resources(spec: SandboxSpec):
    """A preexec_fn for subprocess.Popen that applies spec's rlimits in the child before exec."""

    def apply() -> None:
        # die with the process that started us (the loop), even if it is SIGKILLed: no orphans
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        mb = 1 << 20
        if spec.memory_limit_mb > 0:
            resource.setrlimit(resource.RLIMIT_DATA, (spec.memory_limit_mb * mb, spec.memory_limit_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.file_size_limit_mb * mb, spec.file_size_limit_mb * mb))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        cap = spec.max_processes if hard == resource.RLIM_INFINITY else min(spec.max_processes, hard)
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))

    return apply


def base_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: what Python, PyTorch and CUDA need, nothing secret (no API keys, tokens)."""
    keep_prefixes = ("CUDA_", "NVIDIA_", "OMP_", "MKL_", "LC_", "TORCH_CUDA_ARCH")
    keep = {"PATH", "HOME", "LANG", "TERM", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "USER"}
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith(keep_prefixes)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env
