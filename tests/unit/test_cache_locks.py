"""Caches written on first use are safe under parallel processes (e.g. pytest-xdist workers on a fresh machine):
one process writes while the others wait, and nobody sees a half-written file."""

from __future__ import annotations

import subprocess
import sys

HOLD = """
import sys, time
from pathlib import Path
from hopscope.models.embedded import exclusive
lock, log, tag = sys.argv[1:]
with exclusive(Path(lock)):
    with open(log, "a") as f:
        f.write(tag + " in\\n")
    time.sleep(0.5)
    with open(log, "a") as f:
        f.write(tag + " out\\n")
"""


def test_exclusive_lets_one_process_in_at_a_time(tmp_path):
    lock, log = tmp_path / ".x.lock", tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(log), tag]) for tag in "ab"]
    assert all(p.wait(120) == 0 for p in procs)
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 4
    # inside the lock, each "in" is followed by the same process's "out" before anyone else comes in
    assert events[0][0] == events[1][0] and events[2][0] == events[3][0] and events[0][0] != events[2][0]
    assert [e[1] for e in events] == ["in", "out", "in", "out"]
