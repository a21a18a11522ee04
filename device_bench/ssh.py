"""The ``ssh://`` target: bench on a real device (a Raspberry Pi, a board, a phone with Termux).

Written ``ssh://[user@]host[:port][?key=PATH&python=PATH&known_hosts=PATH]``:

- ``user`` defaults to what ``ssh`` picks (your ``~/.ssh/config``, then your login name);
  ``port`` to 22. IPv6 hosts go in brackets: ``ssh://pi@[fe80::1%eth0]:22``.
- ``key``: the private key to log in with (``ssh -i``, with ``IdentitiesOnly=yes``). Default: the
  ``POCKETKD_SSH_KEY`` environment variable, else whatever ``ssh`` would use (agent, ~/.ssh/id_*,
  ~/.ssh/config).
- ``python``: the interpreter on the device that has NumPy and onnxruntime (and/or LiteRT),
  e.g. ``/home/pi/venv/bin/python``. Default ``python3`` on the remote login PATH.
- ``known_hosts``: the known-hosts file (``UserKnownHostsFile``). Default: the
  ``POCKETKD_SSH_KNOWN_HOSTS`` environment variable, else ssh's own (``~/.ssh/known_hosts``).

Authentication is by key only: ``ssh`` runs with ``BatchMode=yes`` (never prompts) and
``StrictHostKeyChecking=accept-new`` (a new device's host key is recorded on first contact; a
changed one is refused). The device needs a POSIX shell, ``mktemp``, Python >= 3.8 with NumPy,
onnxruntime for ``.onnx``/``.ort`` files and ``ai-edge-litert`` (or ``tflite-runtime``) for
``.tflite``. Files travel with ``scp`` (retried with ``scp -O`` for devices without an SFTP
server, e.g. dropbear).

One run, for all files: log in once (an OpenSSH ControlMaster whose socket lives in a private
local temp dir; every ``ssh`` and ``scp`` below is multiplexed over it, so the device sees one
login per run), check the interpreter and make a temp dir (``mktemp -d``), ``scp`` runner.py, the
models, the inputs and the job file there in one copy, run ``PYTHON runner.py --jobs jobs.json
--json results.jsonl`` (all files in one process; again from the next file after a crash),
``scp`` the results back, remove the temp dir (also on failure) and close the connection.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from device_bench.jobs import JOBS, RESULTS, Launched, bench_present, read_lines, run_resumable, write_jobs
from device_bench.target_base import RUNNER, Job, Target, TargetError, settings_args
from pipeline.procs import temp_dir

log = logging.getLogger(__name__)

FORM = "ssh://[user@]host[:port][?key=PATH&python=PATH&known_hosts=PATH]"
OPTIONS = ("key", "python", "known_hosts")
CONNECT_TIMEOUT = 10
STEP_TIMEOUT = 300
# the shared connection closes this long after its last session if we cannot close it (killed)
CONTROL_PERSIST = 60
# exit codes of the probe script (the remote shell's), distinct from ssh's 255 and a shell's 126/127
NO_PYTHON, NO_NUMPY, OLD_PYTHON = 201, 202, 203
UNREACHABLE = ("connection refused", "connection timed out", "operation timed out", "no route to host",
               "could not resolve hostname", "network is unreachable", "name or service not known",
               "temporary failure in name resolution", "host is unreachable")
RUNTIME_HINT = {
    "onnxruntime": "pip install onnxruntime",
    "tflite": "pip install ai-edge-litert (or tflite-runtime on older devices)",
}


def _bad(spec: str, why: str) -> TargetError:
    return TargetError(f"bad ssh target {spec!r}: {why}")  # parse_target appends the allowed forms


class SshTarget(Target):
    """A device reached with ``ssh``/``scp`` (key authentication)."""

    scheme = "ssh"
    emulated = False
    forms = FORM

    def __init__(self, spec: str):
        super().__init__(spec)
        try:
            u = urlsplit(spec)
            port = u.port
        except ValueError as exc:  # e.g. ssh://host:notaport, ssh://host:99999
            raise _bad(spec, f"the port must be a number from 1 to 65535 ({exc})") from None
        if u.scheme != "ssh":
            raise _bad(spec, "it must start with ssh://")
        if not u.hostname:
            raise _bad(spec, "no host")
        if port is not None and not 1 <= port <= 65535:
            raise _bad(spec, f"port {port} is not in 1..65535")
        if u.netloc.rstrip().endswith(":"):
            raise _bad(spec, "':' with no port after it")
        if u.password is not None:
            raise _bad(spec, "passwords are not supported (key authentication only; use ?key=PATH)")
        if u.username is not None and not u.username:
            raise _bad(spec, "'@' with no user before it")
        if u.path not in ("", "/"):
            raise _bad(spec, f"unexpected path {u.path!r}")
        if u.fragment:
            raise _bad(spec, f"unexpected '#{u.fragment}'")
        try:
            query = parse_qs(u.query, keep_blank_values=True, strict_parsing=bool(u.query))
        except ValueError:
            raise _bad(spec, f"cannot parse the options {u.query!r}") from None
        unknown = sorted(set(query) - set(OPTIONS))
        if unknown:
            raise _bad(spec, f"unknown option(s) {', '.join(unknown)} (allowed: {', '.join(OPTIONS)})")
        for k, v in query.items():
            if len(v) != 1 or not v[0]:
                raise _bad(spec, f"option {k} needs exactly one non-empty value")
        opts = {k: v[0] for k, v in query.items()}
        self.user = u.username
        self.host = u.hostname
        self.port = port or 22
        self.python = opts.get("python", "python3")
        key = opts.get("key") or os.environ.get("POCKETKD_SSH_KEY") or None
        self.key = str(Path(key).expanduser()) if key else None
        kh = opts.get("known_hosts") or os.environ.get("POCKETKD_SSH_KNOWN_HOSTS") or None
        self.known_hosts = str(Path(kh).expanduser()) if kh else None
        self.control: str | None = None  # the ControlMaster's socket while a run holds the connection

    # ------------------------------------------------------------------ naming

    @property
    def label(self) -> str:
        """``ssh://user@host:port`` (the options, which hold local paths, are left out)."""
        return f"ssh://{self.user + '@' if self.user else ''}{self._host_for_url()}:{self.port}"

    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def where(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self._host_for_url()}:{self.port}"

    def _dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _scp_dest(self, path: str) -> str:
        return f"{self.user + '@' if self.user else ''}{self._host_for_url()}:{path}"

    # ------------------------------------------------------------------ ssh plumbing

    def _options(self) -> list[str]:
        o = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
             "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ServerAliveInterval=15",
             "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
        if self.key:
            o += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            o += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.control:  # multiplexed; ssh falls back to its own connection if the master is gone
            o += ["-o", "ControlMaster=no", "-o", f"ControlPath={self.control}"]
        return o

    @contextmanager
    def _connection(self, private: Path) -> Iterator[None]:
        """Log in once: a ControlMaster (``ssh -N -f``) on a socket in ``private`` (a temp dir of mode
        0700: only we can reach it), which the ``ssh`` and ``scp`` calls inside the block share; closed
        (``ssh -O exit``) at the end."""
        socket, errors = private / "control", private / "master.log"
        master = ["ssh", *self._options(), "-o", "ControlMaster=yes", "-o", f"ControlPath={socket}",
                  "-o", f"ControlPersist={CONTROL_PERSIST}", "-N", "-f", "-p", str(self.port), self._dest()]
        log.debug("ssh target: %s", " ".join(map(shlex.quote, master)))
        # the backgrounded master keeps its stderr open: a file, not a pipe we would wait on
        with open(errors, "w") as err:
            try:
                code = subprocess.run(master, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                      timeout=STEP_TIMEOUT).returncode
            except subprocess.TimeoutExpired:
                raise TargetError(f"ssh target {self.where}: logging in timed out after {STEP_TIMEOUT}s") from None
        stderr = errors.read_text()
        if code != 0 and self._is_transport(stderr):
            raise self._transport_error(stderr, "logging in")
        self.control = str(socket) if code == 0 and socket.exists() else None
        if self.control is None:  # e.g. a client without multiplexing: each step logs in on its own
            log.warning("ssh target %s: no shared connection (%s); one login per step", self.where,
                        _tail(stderr, 1) or f"exit {code}")
        try:
            yield
        finally:
            if self.control:
                self.control = None
                try:
                    self._exec(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "-p", str(self.port),
                                self._dest()], "closing the connection", 30)
                except TargetError as exc:
                    log.warning("ssh target %s: %s", self.where, exc)

    def _exec(self, cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
        log.debug("ssh target: %s", " ".join(map(shlex.quote, cmd)))
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TargetError(f"ssh target {self.where}: {what} timed out after {timeout:.0f}s") from None


    def _ssh(self, remote_cmd: str, what: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        cmd = ["ssh", *self._options(), "-p", str(self.port), self._dest(), remote_cmd]
        proc = self._exec(cmd, what, timeout)
        if proc.returncode == 255:
            raise self._transport_error(proc.stderr, what)
        return proc

    def _scp(self, sources: list[str], dest: str, what: str) -> None:
        base = ["scp", *self._options(), "-P", str(self.port), "-q"]
        proc = self._exec([*base, *sources, dest], what, STEP_TIMEOUT)
        if proc.returncode != 0 and not self._is_transport(proc.stderr):
            # devices without an SFTP server (dropbear, busybox): OpenSSH >= 9 scp needs -O for them
            log.info("ssh target %s: scp failed (%s); retrying with the legacy scp protocol (-O)", self.where,
                     _tail(proc.stderr, 1))
            retry = self._exec([*base, "-O", *sources, dest], what, STEP_TIMEOUT)
            if retry.returncode == 0:
                return
        if proc.returncode != 0:
            if proc.returncode == 255 or self._is_transport(proc.stderr):
                raise self._transport_error(proc.stderr, what)
            raise TargetError(f"ssh target {self.where}: {what} failed: {_tail(proc.stderr)}")

    @staticmethod
    def _is_transport(stderr: str) -> bool:
        low = stderr.lower()
        return any(s in low for s in (*UNREACHABLE, "permission denied (", "host key verification failed"))

    def _transport_error(self, stderr: str, what: str) -> TargetError:
        low = stderr.lower()
        detail = _tail(stderr, 2) or "ssh exited 255 with no message"
        if any(s in low for s in UNREACHABLE):
            return TargetError(f"cannot reach {self.host}:{self.port} over ssh ({detail}); check the device is on, "
                               f"the address and port, and that sshd runs there")
        if "permission denied" in low:
            key = f"key {self.key}" if self.key else "ssh's default keys/agent (no ?key= and no POCKETKD_SSH_KEY)"
            return TargetError(f"ssh authentication to {self.where} failed ({detail}); tried {key}. Key "
                               f"authentication only (BatchMode): add the public key to the device's "
                               f"~/.ssh/authorized_keys, or pass ?key=PATH")
        if "host key verification failed" in low or "remote host identification has changed" in low:
            kh = self.known_hosts or "~/.ssh/known_hosts"
            return TargetError(f"ssh host key of {self.where} does not match the one recorded in {kh} ({detail}); "
                               f"if the device was reinstalled: ssh-keygen -R '[{self.host}]:{self.port}'")
        return TargetError(f"ssh to {self.where} failed during {what}: {detail}")

    # ------------------------------------------------------------------ the bench

    def _probe(self) -> str:
        """Check the interpreter and NumPy, make the remote temp dir and return its path."""
        py = shlex.quote(self.python)
        script = (
            f'command -v {py} >/dev/null 2>&1 || exit {NO_PYTHON}\n'
            f'{py} -c "import sys\nif sys.version_info < (3, 8): sys.exit({OLD_PYTHON})\n'
            f'try:\n    import numpy\nexcept ImportError:\n    sys.exit({NO_NUMPY})" || exit $?\n'
            'mktemp -d "${TMPDIR:-/tmp}/pocketkd-bench.XXXXXX"\n'
        )
        proc = self._ssh(script, "checking the device's python")
        if proc.returncode == NO_PYTHON:
            raise TargetError(f"no {self.python!r} on {self.where}: install python3 on the device (e.g. "
                              f"apt-get install python3), or name the interpreter with ?python=/path/to/python")
        if proc.returncode == NO_NUMPY:
            raise TargetError(f"{self.python} on {self.where} has no numpy: on the device, pip install numpy "
                              f"(or pass ?python= for an interpreter that has it)")
        if proc.returncode == OLD_PYTHON:
            raise TargetError(f"{self.python} on {self.where} is older than Python 3.8, which runner.py needs")
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines or not lines[-1].startswith("/"):
            raise TargetError(f"could not prepare a temp dir on {self.where} (exit {proc.returncode}): "
                              f"{_tail(proc.stderr or proc.stdout)}")
        return lines[-1]

    def run_many(self, jobs: Sequence[Job], *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
                 max_seconds=None) -> list[dict | TargetError]:
        """Every file in one runner process on the device, over one login."""
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise TargetError(f"the ssh target needs the {tool} command here: apt-get install openssh-client")
        if self.key and not Path(self.key).is_file():
            raise TargetError(f"ssh key {self.key} does not exist")
        settings = settings_args(threads=threads, warmup=warmup, runs=runs, batch=batch, max_seconds=max_seconds)
        results = bench_present(jobs, lambda present: self._run_present(present, settings, timeout))
        for result in results:
            if isinstance(result, dict):
                result.update(target=self.label, emulated=self.emulated)
        return results

    def _run_present(self, present: list[Job], settings: list[str], timeout: float) -> list:
        log.info("ssh target %s: benching %d file(s) in one process", self.where, len(present))
        with temp_dir("pocketkd-ssh") as tmp, self._connection(Path(tmp)):
            local = Path(tmp)
            files = write_jobs(present, local, ship=True)
            remote = self._probe()
            try:
                self._scp([str(RUNNER), *map(str, files)], self._scp_dest(remote + "/"),
                          "copying runner.py, the models and the inputs")
                q = shlex.quote
                cmd = (f"cd {q(remote)} && : > {RESULTS} && {q(self.python)} runner.py --jobs {JOBS} "
                       f"{' '.join(map(q, settings))} --json {RESULTS}")

                def launch(first: int) -> Launched:
                    proc = self._ssh(f"{cmd} --first {first}", f"running {len(present) - first} file(s)",
                                     timeout=timeout * (len(present) - first))
                    if proc.returncode == 127:
                        raise TargetError(f"no {self.python!r} on {self.where}: install python3 on the device, or "
                                          f"name the interpreter with ?python=/path/to/python")
                    self._scp([self._scp_dest(f"{remote}/{RESULTS}")], str(local / RESULTS), "fetching the results")
                    return Launched(proc.returncode, proc.stderr or proc.stdout, read_lines((local / RESULTS).read_text()))

                return run_resumable(len(present), launch, lambda i, code, text: self._error(present, i, code, text))
            finally:
                self._cleanup(remote)

    def _error(self, present: list[Job], i: int | None, code: int | None, text: str) -> TargetError:
        name = present[i].model.name if i is not None else f"{len(present)} file(s)"
        if code == 3 and "missing runtime" in text:
            runtime = "tflite" if name.endswith(".tflite") else "onnxruntime"
            return TargetError(f"{self.python} on {self.where} lacks the runtime for {name} "
                               f"(runner: error: {text}): on the device, {RUNTIME_HINT[runtime]}")
        return TargetError(f"runner failed on {self.where} for {name} (exit {code}): {text}")

    def _cleanup(self, remote: str) -> None:
        if "pocketkd-bench." not in remote:  # only ever remove what _probe made
            return
        try:
            proc = self._ssh(f"rm -rf {shlex.quote(remote)}", "removing the temp dir", timeout=60)
            if proc.returncode != 0:
                log.warning("ssh target %s: could not remove %s: %s", self.where, remote, _tail(proc.stderr))
        except TargetError as exc:
            log.warning("ssh target %s: could not remove %s: %s", self.where, remote, exc)


def _tail(text: str, n: int = 5) -> str:
    return " | ".join(ln.strip() for ln in (text or "").strip().splitlines()[-n:] if ln.strip())
