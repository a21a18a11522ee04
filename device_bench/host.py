"""The ``host`` target: this machine, in a fresh Python process, as a device would run it.

``run_local_runner`` is how: it writes the inputs to a temp dir, runs ``runner.py`` with a local
interpreter in a child process that dies with us, and reads the JSON result back. Other targets
that run on this machine (a test-only one, say) reuse it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import sys
from pathlib import Path

import numpy as np

from device_bench.target_base import RUNNER, Target, TargetError, runner_args, runner_error
from pipeline.procs import run_child, temp_dir


def run_local_runner(python: list[str], model: Path, x: np.ndarray, *, where: str, threads=1, warmup=50, runs=300,
                     batch=1, timeout=600, max_seconds=None) -> dict:
    """``python runner.py ...`` on this machine (``python``: the interpreter and its options)."""
    with temp_dir("pocketkd-bench") as tmp:  # removed on every exit; a SIGKILLed run's by the next run
        inputs = Path(tmp) / "inputs.npz"
        out = Path(tmp) / "result.json"
        np.savez(inputs, x=np.asarray(x, dtype=np.float32))
        cmd = [*python, str(RUNNER), *runner_args(str(model), str(inputs), str(out), threads=threads, warmup=warmup,
                                                  runs=runs, batch=batch, max_seconds=max_seconds)]
        proc = run_child(cmd, timeout=timeout)
        if proc.returncode != 0:
            raise TargetError(f"runner failed {where} for {model}: {runner_error(proc.stderr or proc.stdout)}")
        return json.loads(out.read_text())


class HostTarget(Target):
    """This machine, in a fresh Python process (the same interpreter), as a device would run it."""

    scheme = "host"
    forms = "host"
    exact = True

    def fingerprint(self) -> str:
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
        result = run_local_runner([sys.executable], model, x, where="on host", threads=threads, warmup=warmup,
                                  runs=runs, batch=batch, timeout=timeout, max_seconds=max_seconds)
        result.update(target=self.label, emulated=self.emulated)
        return result
