"""Targets run ``runner.py`` with a model and inputs and return its JSON result.

Registry ``TARGETS`` maps a scheme to a class; ``parse_target(spec)`` builds one. Allowed forms:

- ``host``: this machine, in a fresh Python process;
- ``qemu-aarch64``: aarch64 Python and runtimes under qemu-user (``device_bench.qemu``);
- ``ssh://[user@]host[:port][?key=PATH&python=PATH&known_hosts=PATH]``: a device over ssh
  (``device_bench.ssh``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("runner.py")


class TargetError(UserError):
    """The target cannot run the bench (bad target string, unreachable, missing runtime)."""


class Target:
    scheme: ClassVar[str] = ""
    emulated: ClassVar[bool] = False
    forms: ClassVar[str] = ""  # how the target is written, for error messages and --help

    exact: ClassVar[bool] = False  # the target is written exactly as its scheme ("host", "qemu-aarch64")

    def __init__(self, spec: str):
        if self.exact and spec != self.scheme:
            raise TargetError(f"bad bench target {spec!r}: the {self.scheme} target is written exactly "
                              f"'{self.scheme}'; allowed: {allowed_forms()}")
        self.spec = spec

    @property
    def label(self) -> str:
        return self.spec

    def fingerprint(self) -> str:
        """What, besides the model and inputs, decides this target's results (part of the bench cache key)."""
        return self.label

    @staticmethod
    def existing_model(model) -> Path:
        model = Path(model)
        if not model.exists():
            raise TargetError(f"model file {model} does not exist")
        return model

    def run(self, model: Path, x: np.ndarray, *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
            max_seconds=None) -> dict:
        raise NotImplementedError


class HostTarget(Target):
    """This machine, in a fresh Python process (the same interpreter), as a device would run it."""

    scheme = "host"
    forms = "host"
    exact = True

    def fingerprint(self) -> str:
        import importlib.metadata as md
        import platform

        versions = []
        for pkg in ("onnxruntime", "ai-edge-litert", "numpy"):
            try:
                versions.append(f"{pkg}={md.version(pkg)}")
            except md.PackageNotFoundError:
                versions.append(f"{pkg}=none")
        return f"host:{platform.machine()}:{sys.version.split()[0]}:{','.join(versions)}"

    def run(self, model: Path, x: np.ndarray, *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
            max_seconds=None) -> dict:
        model = self.existing_model(model)
        from pipeline.procs import temp_dir

        with temp_dir("pocketkd-bench") as tmp:  # removed on every exit; a SIGKILLed run's by the next run
            inputs = Path(tmp) / "inputs.npz"
            out = Path(tmp) / "result.json"
            np.savez(inputs, x=np.asarray(x, dtype=np.float32))
            cmd = [sys.executable, str(RUNNER), "--model", str(model), "--inputs", str(inputs),
                   "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs),
                   "--batch", str(batch), "--json", str(out), *max_seconds_args(max_seconds)]
            from pipeline.procs import run_child

            proc = run_child(cmd, timeout=timeout)
            if proc.returncode != 0:
                raise TargetError(f"runner failed on host for {model}: {runner_error(proc.stderr or proc.stdout)}")
            result = json.loads(out.read_text())
        result.update(target=self.label, emulated=self.emulated)
        return result


TARGETS: dict[str, type[Target]] = {"host": HostTarget}


def allowed_forms() -> str:
    return ", ".join(cls.forms or name for name, cls in TARGETS.items())


def parse_target(spec: str) -> Target:
    """The target for ``spec``; a ``TargetError`` naming the allowed forms when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"empty bench target; allowed: {allowed_forms()}")
    spec = spec.strip()
    scheme = spec.split("://", 1)[0] if "://" in spec else spec
    cls = TARGETS.get(scheme)
    if cls is None:
        raise TargetError(f"unknown bench target {spec!r}; allowed: {allowed_forms()}")
    return cls(spec)


def runner_error(text: str) -> str:
    """The runner's own one-line ``error: ...`` from its output, else the last line (no traceback)."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1][:300] if lines else "no output"


def max_seconds_args(max_seconds) -> list[str]:
    return [] if max_seconds is None else ["--max-seconds", str(float(max_seconds))]


# Registered last: these modules import Target and TargetError from here.
from device_bench.qemu import QemuAarch64Target  # noqa: E402
from device_bench.ssh import SshTarget  # noqa: E402

TARGETS.update({QemuAarch64Target.scheme: QemuAarch64Target, SshTarget.scheme: SshTarget})
