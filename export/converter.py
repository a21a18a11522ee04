"""The converter child: one long-lived process per export that imports TensorFlow and onnx2tf once
and serves every TFLite conversion and TensorFlow load check of the export.

TensorFlow is heavy to import (~15 s on 2 cores), logs from C++ straight to the terminal and keeps
memory; the child keeps all of that out of the pipeline process. It starts on the first request
that the conversion cache could not answer (or earlier, with ``start()``, when a miss is certain,
so the import overlaps the PyTorch -> ONNX export), and its output is shown only when a request
fails. Requests are JSON lines on its stdin; answers come back on a pipe of their own, so whatever
TensorFlow prints cannot garble them. The child is in its own process group and dies with us
(``pipeline.procs``).

``session()`` makes one converter the current one for a block (the export stage, ``export_all``);
``submit`` runs conversions on one background thread, so the ORT formats and their checks go on in
the main thread while the child converts (the two cores of the target machine, both busy).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pipeline.procs import kill_group, popen_child

log = logging.getLogger(__name__)

STARTS = 0  # children started by this process (tests count them)
_ACTIVE: list[Converter] = []
_ACTIVE_LOCK = threading.Lock()
ROOT = Path(__file__).resolve().parent.parent


class ConverterError(RuntimeError):
    pass


class Converter:
    def __init__(self, timeout: float = 900, warm: tuple[str, ...] | None = None):
        self.timeout = timeout
        self.warm = warm  # modules the child imports before its ready line (None: converter_child's default)
        self._proc: subprocess.Popen | None = None
        self._answers: int | None = None  # our end of the answer pipe (a file descriptor)
        self._buf = b""
        self._log = None  # the child's stdout + stderr (shown when a request fails)
        self._ready = False
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Start the child now (it imports TensorFlow while we go on); no-op when it runs."""
        if not self._lock.acquire(blocking=False):  # a request is under way: the child runs
            return
        try:
            self._start()
        finally:
            self._lock.release()

    def _start(self) -> None:
        global STARTS
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop()
        read_fd, write_fd = os.pipe()
        self._log = tempfile.TemporaryFile(prefix="pocketkd-converter-")
        # TF_USE_LEGACY_KERAS: tf.keras is tf_keras, which onnx2tf uses anyway, so TensorFlow does not
        # also import Keras 3 (and scikit-learn): ~5 s less of import, the same files
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": "",
               "TF_USE_LEGACY_KERAS": "1"}
        try:
            self._proc = popen_child(
                [sys.executable, "-m", "export.converter_child", str(write_fd),
                 *([",".join(self.warm)] if self.warm is not None else [])], stdin=subprocess.PIPE,
                stdout=self._log, stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env, cwd=str(ROOT))
        finally:
            os.close(write_fd)
        self._answers, self._buf = read_fd, b""
        self._ready = False
        STARTS += 1
        log.debug("converter child started (pid %d)", self._proc.pid)

    def request(self, op: str, **args) -> dict | list:
        """Send one request and wait for its answer; ``ConverterError`` with the child's last output
        when it fails or dies (the next request starts a new child)."""
        with self._lock:
            self._start()
            try:
                if not self._ready:
                    ready = self._answer()  # the child's "ready" line: TensorFlow and onnx2tf are imported
                    log.debug("converter child ready after %.1f s of imports", ready.get("seconds", 0))
                    self._ready = True
                self._proc.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
                self._proc.stdin.flush()
                answer = self._answer()
            except (OSError, ValueError, ConverterError) as exc:
                tail = self._tail()
                self._stop()
                raise ConverterError(f"the converter child failed ({exc}):\n{tail}") from None
            if not answer.get("ok"):
                raise ConverterError(f"{answer.get('error')}\n{answer.get('trace', '')}".strip())
            return answer["result"]

    def _answer(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise ConverterError(f"no answer within {self.timeout:g} s")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise ConverterError(f"it exited (code {self._proc.wait(timeout=10)})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _tail(self, lines: int = 15) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        keep = [ln for ln in text.strip().splitlines() if ln.strip()]
        return "\n".join(keep[-lines:])

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    proc.stdin.close()  # the child's loop ends at end of input
                    proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            kill_group(proc)
        if self._answers is not None:
            os.close(self._answers)
        if self._log is not None:
            self._log.close()
        self._answers = self._log = None

    # ------------------------------------------------------------------ background work
    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run ``fn`` on this converter's one background thread (conversions queue in order)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketkd-convert")
            return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        """End the child: gracefully when idle; killed at once when a request is under way (the
        block ended by an error or Ctrl-C), so the waiting thread gets its answer (an error) now."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if self._lock.acquire(blocking=False):
            self._lock.release()
        elif (proc := self._proc) is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._stop()


def current() -> Converter | None:
    with _ACTIVE_LOCK:
        return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def session(timeout: float = 900, warm: tuple[str, ...] | None = None) -> Iterator[Converter]:
    """The current converter, or a new one made current for the block and closed after it. ``warm``:
    the modules a new child imports first (``export.converter_child.WARM``: per TFLite converter);
    whatever a request needs beyond them it imports on first use."""
    existing = current()
    if existing is not None:
        yield existing
        return
    conv = Converter(timeout, warm)
    with _ACTIVE_LOCK:
        _ACTIVE.append(conv)
    try:
        yield conv
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.remove(conv)
        conv.close()
