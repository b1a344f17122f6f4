"""kit.machine: CPU time read from /proc tells a run's own work from what the rest of the machine did."""

import os
import subprocess
import sys

from kit.machine import CpuWatch

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
