"""The machine as /proc shows it: the CPU time of this process's descendants and of the whole machine.

Owns: `CpuWatch`, how much of the machine's CPU a run, and everything else, used while it went on. Linux only, like
the sandbox. Does not own: what is done with the numbers (kit/bench/recorder.py).
"""

from __future__ import annotations

import os
import threading
import time
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


def _machine_busy() -> int:
    """Busy clock ticks of all cores since boot (user, nice, system, irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _descendants(root: int) -> dict[int, int]:
    """utime + stime ticks of every live descendant of root."""
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    out = {}
    for pid in ticks:
        p = pid
        while p in parents and p != root and p > 1:
            p = parents[p]
        if p == root and pid != root:
            out[pid] = ticks[pid]
    return out
