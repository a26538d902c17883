"""A whole study survives a hard kill: SIGKILL in the middle of analyses, then ``--resume``, gives exactly the
tables of an uninterrupted run (real analyses at quick size on a tiny model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ANALYSES = ("recall", "injection")
ARGS = ["study", "--model", "tiny-llama", "--quick", "--no-progress", "--threads", "1"]
for _a in ANALYSES:
    ARGS += ["--only", _a]


def _cli(args: list[str]) -> subprocess.Popen:
    code = "import sys; from hopscope.cli import main; sys.argv = ['hopscope'] + sys.argv[1:]; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, cwd=Path(__file__).resolve().parents[2])


def _finished_parts(folder: Path, analysis: str) -> int:
    return sum(1 for p in (folder / analysis / "parts").glob("*/*/_done") if not p.parent.name.startswith("."))


def _kill_when(proc: subprocess.Popen, folder: Path, analysis: str, parts: int, timeout: float = 600) -> bool:
    """SIGKILL ``proc`` once ``analysis`` has ``parts`` finished shards; False if it ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if _finished_parts(folder, analysis) >= parts:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{analysis} did not reach {parts} parts in {timeout} s")


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every stored table of a study (parts are the same data in pieces; configs hold times)."""
    return {p.relative_to(folder).as_posix(): pd.read_parquet(p)
            for p in sorted(folder.rglob("*.parquet")) if "/parts/" not in p.as_posix()}


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_tables(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = _cli(ARGS + ["--out", str(ref)])
    assert done.wait(timeout=900) == 0, done.stderr.read().decode()[-2000:]

    killed = [_kill_when(_cli(ARGS + ["--out", str(run)]), run, "recall", 2)]
    killed.append(_kill_when(_cli(ARGS + ["--resume", str(run)]), run, "injection", 3))
    assert any(killed), "no kill landed: the study finished before every kill point"
    kept = {p: p.stat().st_mtime_ns for p in run.rglob("parts/*/*/_done") if not p.parent.name.startswith(".")}
    last = _cli(ARGS + ["--resume", str(run)])
    assert last.wait(timeout=900) == 0, last.stderr.read().decode()[-2000:]

    got, want = _tables(run), _tables(ref)
    assert set(got) == set(want) and len(want) > 10
    for name, table in want.items():
        pd.testing.assert_frame_equal(got[name], table, check_exact=True, obj=name)
    # every part finished before the last session was kept as it was, not computed again
    assert len(kept) >= 2 and all(p.stat().st_mtime_ns == t for p, t in kept.items())
