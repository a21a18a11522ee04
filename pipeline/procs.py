"""Child processes that die with their parent, and temp directories removed on every exit path.

``run_child`` starts a command in its own process group with ``PR_SET_PDEATHSIG`` = SIGKILL (Linux):
if pocketkd is killed, even by SIGKILL, the kernel kills the child too, and on a timeout, an error or
Ctrl-C the whole group is killed before the exception goes on. ``temp_dir`` is a
``TemporaryDirectory`` whose name carries the owner's PID, so a later run removes what a SIGKILLed
one could not (``sweep_stale_temp_dirs``); SIGTERM is turned into an exception by the CLI, so
``finally`` blocks run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child (a ``preexec_fn`` between fork and exec, or a process pool's ``initializer``): the kernel
    SIGKILLs it when ``parent`` dies. A forked pool worker shares the run directory's lock; orphaned, it
    would keep training and keep the lock."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the process group still lets us kill it on errors
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)


def popen_child(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **kwargs)`` in a new process group that dies with us (a long-lived child)."""
    parent = os.getpid()
    return subprocess.Popen(cmd, preexec_fn=lambda: die_with_parent(parent), process_group=0, **kwargs)


def run_child(cmd: list[str], timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a new process group that dies with
    us; ``subprocess.TimeoutExpired`` on timeout (after killing the group)."""
    proc = popen_child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


# --------------------------------------------------------------------------- temp directories

_OWNED = re.compile(r"^(?P<prefix>pocketkd-[a-z0-9]+)-pid(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp_dirs(prefix: str) -> int:
    """Remove ``<tmp>/<prefix>-pid<PID>-*`` directories whose process is gone; returns how many."""
    removed = 0
    base = Path(tempfile.gettempdir())
    try:
        entries = list(base.iterdir())
    except OSError:
        return 0
    for p in entries:
        m = _OWNED.match(p.name)
        if m and m["prefix"] == prefix and p.is_dir() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    if removed:
        log.debug("removed %d temp directories left by killed runs (%s-*)", removed, prefix)
    return removed


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory named ``<prefix>-pid<PID>-*``; stale ones of dead processes are removed first."""
    sweep_stale_temp_dirs(prefix)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}-pid{os.getpid()}-")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so ``finally`` blocks and context managers clean up."""


def raise_on_sigterm() -> None:
    def handler(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass
