"""kit.machine: CPU time read from /proc tells a run's own work from what the rest of the machine did."""

import os
import subprocess
import sys
import time

from kit.machine import CoreShare, CpuWatch, busiest, tree_cpu_seconds, wait_until_quiet

SPIN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end:\n    pass\n"


def test_cpu_watch_tells_its_own_work_from_the_machines():
    with CpuWatch(interval=0.05) as watch:
        subprocess.run([sys.executable, "-c", SPIN.format(seconds=0.5)])
    assert watch.own >= 0.4 and 0 < watch.own_share <= 1.0 and 0 <= watch.others_share <= 1.0
    assert watch.wall >= watch.own / (os.cpu_count() or 1)


def test_cpu_watch_sees_a_process_that_is_not_its_own_take_a_core():
    # the spinner is orphaned at once (its shell exits), so it is no descendant of ours: the rest of the machine
    started = subprocess.run(["sh", "-c", f"{sys.executable} -c '{SPIN.format(seconds=20)}' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True)
    hog = int(started.stdout.strip())
    try:
        with CpuWatch(interval=0.1) as watch:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)"])
        assert watch.others_share >= 0.8 / (os.cpu_count() or 1)  # about one core of the machine's
        assert watch.own_share < 0.2
    finally:
        os.kill(hog, 9)


def _hog() -> subprocess.Popen:
    """A process spinning on one of this process's cores (it inherits their affinity), not part of any run."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_the_cpu_time_of_a_tree_counts_children_already_gone():
    script = (f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {SPIN.format(seconds=0.6)!r}])\n"
              "print('done', flush=True)\ninput()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "done"  # the child spun, exited and was reaped
        assert tree_cpu_seconds(parent.pid) >= 0.55
    finally:
        parent.kill()
        parent.wait()


def test_the_share_of_its_cores_that_others_take_is_seen_and_named():
    quiet = CoreShare()
    time.sleep(0.3)
    baseline = quiet.others(0.0)
    hog = _hog()
    try:
        share = CoreShare()
        time.sleep(1.5)
        assert share.others(0.0) >= 0.8 / len(share.cores) > baseline  # about one core of ours
        assert any(f"pid {hog.pid}" in name and cores > 0.5 for name, cores in busiest(1.0))
        # the hog stays: waiting for quiet gives up at its timeout and says how busy it still was
        assert wait_until_quiet(0.1, timeout=0.0, give_up=lambda: False, window=0.5) > 0.1
    finally:
        hog.kill()
        hog.wait()
    assert not any(f"pid {hog.pid}" in name for name, _ in busiest(0.5))


def test_waiting_for_quiet_ends_when_asked():
    hog = _hog()
    try:
        started = time.monotonic()
        wait_until_quiet(0.1, timeout=600, give_up=lambda: time.monotonic() - started > 1, window=0.5)
        assert time.monotonic() - started < 60
    finally:
        hog.kill()
        hog.wait()


def _fake_nvidia_smi(directory, compute_apps: str) -> None:
    """An nvidia-smi that answers the two queries the kit asks, like the real one on a two-GPU machine."""
    script = directory / "nvidia-smi"
    script.write_text("#!/bin/sh\ncase \"$1\" in\n"
                      "  --query-gpu=*) printf '0, GPU-aaaa\\n1, GPU-bbbb\\n' ;;\n"
                      f"  --query-compute-apps=*) printf '{compute_apps}' ;;\n"
                      "  *) exit 9 ;;\nesac\n")
    script.chmod(0o755)


def test_foreign_gpu_processes_are_the_others_on_our_gpu(tmp_path, monkeypatch):
    from kit.machine import foreign_gpu_processes

    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as child:
        try:  # our child (ours), pid 1 on our GPU (foreign), pid 2 on the other GPU (not ours to judge)
            _fake_nvidia_smi(tmp_path, f"GPU-aaaa, {child.pid}, 900, python\\n"
                                       "GPU-aaaa, 1, 20480, other, job\\nGPU-bbbb, 2, 100, train\\n")
            monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            assert foreign_gpu_processes() == {1: "other, job (pid 1, 20480 MiB)"}
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
            assert foreign_gpu_processes() == {2: "train (pid 2, 100 MiB)"}
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")
            assert set(foreign_gpu_processes()) == {1}
        finally:
            child.kill()


def test_no_nvidia_smi_means_no_gpu_processes(tmp_path, monkeypatch):
    from kit.machine import foreign_gpu_processes

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert foreign_gpu_processes() == {}
    _fake_nvidia_smi(tmp_path, "")
    assert foreign_gpu_processes() == {}
