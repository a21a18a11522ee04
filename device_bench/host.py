"""The ``host`` target: this machine, in a fresh Python process, as a device would run it.

``run_local_jobs`` is how: it writes the inputs and the job file to a temp dir, runs ``runner.py``
over every file in one child process that dies with us (again from the next file after a crash),
and reads the JSON results back; ``run_local_runner`` does it for one file. Other targets that run
on this machine (a test-only one, say) reuse them.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from device_bench.jobs import JOBS, RESULTS, bench_present, launch_local, run_resumable, write_jobs
from device_bench.target_base import RUNNER, Job, Target, TargetError, settings_args
from pipeline.procs import temp_dir


def run_local_jobs(python: list[str], jobs: Sequence[Job], *, where: str, threads=1, warmup=50, runs=300, batch=1,
                   timeout=600, max_seconds=None) -> list[dict | TargetError]:
    """``python runner.py --jobs ...`` on this machine (``python``: the interpreter and its options);
    ``timeout`` is per file. Per job: the runner's result, or the ``TargetError`` for that file."""
    settings = settings_args(threads=threads, warmup=warmup, runs=runs, batch=batch, max_seconds=max_seconds)

    def run(present: list[Job]) -> list:
        def error(i, code, text):
            if i is None:
                return TargetError(f"runner failed {where}" + (f": {text}" if code is not None else
                                                               f": timed out after {timeout:.0f}s"))
            if code is None:
                return TargetError(f"runner {where} timed out after {timeout:.0f}s on {present[i].model}")
            return TargetError(f"runner failed {where} for {present[i].model}: {text}")

        with temp_dir("pocketkd-bench") as tmp:  # removed on every exit; a SIGKILLed run's by the next run
            work = Path(tmp)
            write_jobs(present, work, ship=False)
            cmd = [*python, str(RUNNER), "--jobs", str(work / JOBS), *settings, "--json", str(work / RESULTS)]
            return run_resumable(len(present), lambda first: launch_local(
                [*cmd, "--first", str(first)], work, timeout * (len(present) - first)), error)

    return bench_present(jobs, run)


def run_local_runner(python: list[str], model: Path, x: np.ndarray, *, where: str, threads=1, warmup=50, runs=300,
                     batch=1, timeout=600, max_seconds=None) -> dict:
    """``run_local_jobs`` for one file: its result, or its ``TargetError`` raised."""
    result = run_local_jobs(python, [Job(Path(model), x)], where=where, threads=threads, warmup=warmup, runs=runs,
                            batch=batch, timeout=timeout, max_seconds=max_seconds)[0]
    if isinstance(result, TargetError):
        raise result
    return result


class HostTarget(Target):
    """This machine, in one fresh Python process (the same interpreter) for all files, as a device would run it."""

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

    def run_many(self, jobs: Sequence[Job], *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
                 max_seconds=None) -> list[dict | TargetError]:
        results = run_local_jobs([sys.executable], jobs, where="on host", threads=threads, warmup=warmup, runs=runs,
                                 batch=batch, timeout=timeout, max_seconds=max_seconds)
        for result in results:
            if isinstance(result, dict):
                result.update(target=self.label, emulated=self.emulated)
        return results
