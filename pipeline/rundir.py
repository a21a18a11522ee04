"""The run directory as a resource: which paths may become one, the marker that says a directory is
a pocketkd run, and the lock that gives it one writer at a time.

- ``check_out_dir(path, force)`` validates ``--out`` without writing anything: a non-empty path that
  is a directory or can be made one (its nearest existing ancestor is a writable directory), and
  that is new, empty, or already a pocketkd run (it holds ``MARKER``), unless ``force``.
- ``RunLock`` holds ``fcntl.flock`` on ``<run>/.pocketkd.lock`` for the run's lifetime, with the
  holder's PID written in the file. The OS drops the lock when its process dies however it dies, so
  a lock file left by a killed run is never in the way (its PID is just stale text).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from pipeline.errors import UserError, os_error_text

log = logging.getLogger(__name__)

MARKER = ".pocketkd-run"
LOCK = ".pocketkd.lock"
# a directory written by pocketkd before the marker existed still counts as a run
LEGACY_RUN_FILES = ("manifest.json",)


def is_run_dir(path: Path) -> bool:
    return (path / MARKER).is_file() or any((path / f).is_file() for f in LEGACY_RUN_FILES)


def nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path("/")


def check_out_dir(raw: str | os.PathLike | None, force: bool = False, flag: str = "--out") -> Path:
    """The run directory for ``raw``, checked; nothing is created. One ``UserError`` line otherwise."""
    if raw is None or not str(raw).strip():
        raise UserError(f"{flag} {str(raw)!r}: empty path; give a directory, e.g. {flag} runs/exp1")
    path = Path(str(raw)).expanduser()
    try:
        if path.is_symlink() and not path.exists():
            raise UserError(f"{flag} {path}: dangling symlink or symlink loop; give a directory or a new path")
        if path.exists():
            if not path.is_dir():
                raise UserError(f"{flag} {path}: exists and is not a directory; give a directory or a new path")
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"{flag} {path}: Permission denied (not writable); give a directory you can write")
            if not force and not is_run_dir(path) and any(path.iterdir()):
                raise UserError(f"{flag} {path}: a non-empty directory that is not a pocketkd run (no {MARKER}); "
                                "give a new or empty directory, or add --force to write a run into it anyway")
            return path
        anc = nearest_existing(path.parent if str(path.parent) else Path("."))
        if anc.is_symlink() and not anc.exists():
            raise UserError(f"{flag} {path}: {anc} is a dangling symlink or symlink loop; give a creatable path")
        if not anc.is_dir():
            raise UserError(f"{flag} {path}: {anc} is not a directory, so {path} cannot be created; "
                            "give a path under a directory")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: cannot create it in {anc}: Permission denied")
    except OSError as exc:
        raise UserError(f"{flag} {path}: {os_error_text(exc)}; give a directory or a creatable path") from None
    return path


def make_dir(path: Path, flag: str = "--out") -> None:
    """``mkdir -p`` with OS errors as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create the directory: {os_error_text(exc)}") from None


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.pocketkd.lock``; ``acquire`` creates the directory and the
    marker. Use as a context manager; released on any exit (and by the OS if the process dies)."""

    def __init__(self, run_dir: Path, flag: str = "--out"):
        self.run_dir = Path(run_dir)
        self.flag = flag
        self.fd: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK

    @staticmethod
    def holder(path: Path) -> str:
        try:
            return path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> RunLock:
        make_dir(self.run_dir, self.flag)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"{self.flag} {self.run_dir}: cannot create the lock file {LOCK}: "
                            f"{os_error_text(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.flag} {self.run_dir}: cannot lock {LOCK}: {os_error_text(exc)}") from None
            raise UserError(f"{self.flag} {self.run_dir}: another pocketkd process (PID {self.holder(self.path)}) "
                            "is writing this run directory; wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        marker = self.run_dir / MARKER
        if not marker.exists():
            marker.write_text("a pocketkd run directory (python -m pipeline run); see README.md\n")
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.ftruncate(fd, 0)  # no PID left behind: the file says nobody holds it
            finally:
                os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
