"""The machine as /proc shows it: the CPU time of process trees, of cores and of the whole machine.

Owns: `CpuWatch` (how much of the machine's CPU a recorded run, and everything else, used while it went on),
`CoreShare` (how much of a run's own cores other processes took: the harness's contention measurement),
`tree_cpu_seconds` (what a process tree has spent: the harness's CPU clock), `foreign_gpu_processes` (who else
computes on this process's GPU, from nvidia-smi) and `busiest` (who is using the machine, for a message). Linux
only, like the sandbox. Does not own: what is done with the numbers (kit/harness.py,
kit/loop.py, kit/bench/recorder.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU seconds of this process's descendants and of the whole machine while a run goes on, sampled from /proc
    (the sandbox kills its processes unreaped, so rusage never sees them). `others` is what the rest of the machine
    used: a recorded run that shared the cores got fewer steps than it would have alone."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.ours = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuWatch:
        self.wall, self.machine = time.monotonic(), _machine_busy()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.monotonic() - self.wall
        self.machine = (_machine_busy() - self.machine) / TICKS
        self.own = sum(self.ours.values()) / TICKS
        capacity = self.wall * (os.cpu_count() or 1)
        self.own_share = self.own / capacity
        self.others_share = max(self.machine - self.own, 0.0) / capacity

    def _sample(self) -> None:
        while True:
            for pid, ticks in _descendants(os.getpid()).items():
                self.ours[pid] = max(ticks, self.ours.get(pid, 0))
            if self._stop.wait(self.interval):
                return


class CoreShare:
    """The share of a set of cores that processes other than ours used from construction until `others()` is asked:
    (busy time of those cores - CPU time of our processes) / (wall time × cores). A run whose cores were shared
    got fewer steps, and a slower clock for each, than it would have alone: it cannot be compared with others."""

    def __init__(self, cores: set[int] | None = None):
        self.cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
        self.started, self.busy = time.monotonic(), busy_ticks(self.cores)

    def others(self, ours_seconds: float) -> float:
        """ours_seconds: CPU seconds our own processes used since construction."""
        wall = time.monotonic() - self.started
        busy = (busy_ticks(self.cores) - self.busy) / TICKS
        return max(busy - ours_seconds, 0.0) / (wall * len(self.cores)) if wall > 0 else 0.0


def wait_until_quiet(limit: float, timeout: float, give_up: Callable[[], bool], window: float = 2.0) -> float:
    """Wait, `window` seconds at a time, until other processes use at most `limit` of this process's cores, for at
    most `timeout` seconds or until give_up() says so; the share last seen."""
    deadline = time.monotonic() + timeout
    while True:
        share, own = CoreShare(), time.process_time()
        time.sleep(window)
        others = share.others(time.process_time() - own)
        if others <= limit or time.monotonic() >= deadline or give_up():
            return others


def busiest(seconds: float = 1.0, exclude: int | None = None, top: int = 3) -> list[tuple[str, float]]:
    """The processes (but `exclude`'s tree) that used the most CPU over the next `seconds`, as (name and pid, cores
    used): what to name when a run cannot get the machine to itself."""
    before = _processes()
    time.sleep(seconds)
    after = _processes()
    ours = _tree(exclude, after) if exclude is not None else set()
    used = [(after[pid][1] - before[pid][1]) / TICKS / seconds for pid in after if pid in before and pid not in ours]
    pids = [pid for pid in after if pid in before and pid not in ours]
    ranked = sorted(zip(used, pids, strict=True), reverse=True)[:top]
    return [(f"{_name(pid)} (pid {pid})", round(share, 2)) for share, pid in ranked if share >= 0.05]


def foreign_gpu_processes() -> dict[int, str]:
    """Processes with a compute context on the GPU this process's children use (the first of CUDA_VISIBLE_DEVICES,
    else GPU 0) that are not in this process's tree, as pid -> what to call them; empty without nvidia-smi. A MIG
    slice is not told apart from the others on its GPU, so none are named there."""
    listed = _nvidia_smi("--query-compute-apps=gpu_uuid,pid,used_memory,process_name")
    if not listed:
        return {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    uuids = {row[0]: row[1] for row in _nvidia_smi("--query-gpu=index,uuid") if len(row) == 2}
    ours = visible if visible.startswith("GPU-") else uuids.get(visible)
    mine = _tree(os.getpid(), _processes())
    return {int(row[1]): f"{', '.join(row[3:])} (pid {row[1]}, {row[2]} MiB)" for row in listed
            if len(row) >= 4 and row[0] == ours and row[1].isdigit() and int(row[1]) not in mine}


def gpu_name() -> str:
    """The name of the GPU this process's children use (the first of CUDA_VISIBLE_DEVICES, else GPU 0), asked of
    nvidia-smi so that the asking process makes no CUDA context of its own; "unknown" without it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    for row in _nvidia_smi("--query-gpu=index,uuid,name"):
        if len(row) >= 3 and visible in (row[0], row[1]):
            return ", ".join(row[2:])
    return "unknown"


def _nvidia_smi(query: str) -> list[list[str]]:
    """nvidia-smi's CSV answer to one query, split into fields; empty if it is missing or fails."""
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


def _name(pid: int) -> str:
    try:
        return re.sub(r"\s+", " ", Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")).strip()[:80] or Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def busy_ticks(cores: list[int] | None) -> int:
    """Busy clock ticks of the given cores (None: all) since boot (user, nice, system, irq, softirq, steal)."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and (cores is None or int(name[3:]) in cores):
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            total += user + nice + system + irq + softirq + steal
    return total


def _machine_busy() -> int:
    return busy_ticks(None)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds a process and every descendant used so far, the reaped ones included (their time is in their
    parents' cutime and cstime): what a training process has spent, however it split the work."""
    table = _processes()
    tree = _tree(root, table)
    return sum(own + children for pid, (_, own, children) in table.items() if pid in tree) / TICKS


def _processes() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent, its own utime + stime ticks, its reaped children's ticks)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return table


def _tree(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    """root and its live descendants."""
    tree = set()
    for pid in table:
        p = pid
        while p in table and p != root and p > 1:
            p = table[p][0]
        if p == root:
            tree.add(pid)
    return tree


def _descendants(root: int) -> dict[int, int]:
    """utime + stime ticks of every live descendant of root."""
    table = _processes()
    return {pid: table[pid][1] for pid in _tree(root, table) if pid != root}
