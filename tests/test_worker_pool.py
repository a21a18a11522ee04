"""The distill stage's baseline workers die with the run: a forked worker shares the run directory's
lock, so an orphan would keep training and make the resumed run fail with "another pocketkd process
is writing this run directory" (seen in a fresh-clone CI run of the SIGKILL test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("threads", [1, 2])  # forked (one thread) and spawned workers
def test_baseline_workers_die_when_the_run_is_killed(threads):
    code = textwrap.dedent(f"""
        import os, time
        from pipeline.stages.distill import worker_pool
        with worker_pool(1, {threads}) as pool:
            print(pool.submit(os.getpid).result(), flush=True)
            pool.submit(time.sleep, 120)  # a baseline still training when the run dies
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        worker = int(proc.stdout.readline())
        assert alive(worker)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker), f"worker {worker} outlived its killed run"
