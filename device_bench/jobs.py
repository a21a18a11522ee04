"""Many model files in one runner process: what a target sends, and the results read back.

``write_jobs`` puts ``inputs.npz`` (each distinct input array once) and ``jobs.json`` (the
runner's ``--jobs`` file) in a work directory, with the models copied next to them when they
travel. ``run_resumable`` drives a target's ``launch`` (one runner process over the jobs from index
``first`` on) and reads the JSON lines the runner wrote. The runner isolates a failing file itself;
when the process dies in the middle of a file (a runtime's segfault, a timeout) that file is
recorded as failed and a new process starts at the next one, so one bad file never loses the
others' results. ``bench_present`` keeps missing files away from the target.

The files are timed one after another in the same process, never concurrently: the runtime is
imported and warmed once, each file still gets its own warm-up runs before timing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from device_bench.target_base import Job, TargetError, runner_error
from pipeline.procs import run_child

JOBS, INPUTS, RESULTS = "jobs.json", "inputs.npz", "results.jsonl"


@dataclass
class Launched:
    """What one runner process left: its exit code (None: killed on timeout), its error output, and
    the JSON lines of its results file."""

    returncode: int | None
    stderr: str
    lines: list[dict]


# error(index, code, text): the TargetError for job ``index`` (None: the whole run) that failed with
# exit ``code`` (the runner's for that file, else the process's; None: timed out) and one line ``text``
ErrorFn = Callable[[int | None, int | None, str], TargetError]


def write_jobs(jobs: Sequence[Job], work: Path, *, ship: bool) -> list[Path]:
    """``jobs.json`` and ``inputs.npz`` in ``work``; returns the files written. ``ship``: the models are
    copied into ``work`` (renamed when two share a name) and named relative to it, for a runner that
    starts in ``work`` or a copy of it; else they are named by absolute path."""
    work = work.absolute()
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    entries, names = [], set()
    for i, job in enumerate(jobs):
        x = np.ascontiguousarray(job.x, dtype=np.float32)
        digest = hashlib.sha256(repr(x.shape).encode() + x.tobytes()).hexdigest()
        key = arrays.setdefault(digest, (f"x{len(arrays)}", x))[0]
        model = str(Path(job.model).absolute())
        if ship:
            model = job.model.name if job.model.name not in names else f"{i}-{job.model.name}"
            names.add(model)
            shutil.copy2(job.model, work / model)
        entries.append({"model": model, "inputs": INPUTS if ship else str(work / INPUTS), "key": key,
                        "name": job.model.name})
    np.savez(work / INPUTS, **dict(arrays.values()))
    (work / JOBS).write_text(json.dumps(entries))
    return [work / JOBS, work / INPUTS, *(work / e["model"] for e in entries if ship)]


def read_lines(text: str) -> list[dict]:
    """The complete JSON lines of a results file (a line cut short by a killed process is dropped)."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return lines


def run_resumable(n: int, launch: Callable[[int], Launched], error: ErrorFn) -> list[dict | TargetError]:
    """Per job, the runner's result or the ``TargetError`` for it; ``launch(first)`` runs jobs
    ``first..n-1`` in one process. A process that ends before its first file raises ``error(None, ...)``."""
    results: list = [None] * n
    first = 0
    while first < n:
        got = launch(first)
        started = None
        for line in got.lines:
            i = line.pop("index", None)
            if line.get("started"):
                started = i
            elif isinstance(i, int) and first <= i < n:
                results[i] = error(i, line.get("exit"), line["error"]) if "error" in line else line
                started = None
        text = "" if got.returncode is None else runner_error(got.stderr)
        if got.returncode is not None and got.returncode < 0:
            text += f" (killed by signal {-got.returncode})"
        if isinstance(started, int) and first <= started < n:  # the process died on this file
            results[started] = error(started, got.returncode, text)
            first = started + 1
        elif all(r is not None for r in results[first:]):
            break
        else:  # no file started (interpreter, runner or job file broken): not one file's fault
            raise error(None, got.returncode, text)
    return results


def launch_local(cmd: list[str], work: Path, timeout: float, **popen) -> Launched:
    """Run ``cmd`` (a runner writing ``work/results.jsonl``) in a child process that dies with us."""
    out = work / RESULTS
    out.unlink(missing_ok=True)
    try:
        proc = run_child(cmd, timeout=timeout, **popen)
        code, err = proc.returncode, proc.stderr or proc.stdout
    except subprocess.TimeoutExpired:
        code, err = None, ""
    return Launched(code, err, read_lines(out.read_text()) if out.exists() else [])


def bench_present(jobs: Sequence[Job], run: Callable[[list[Job]], list]) -> list[dict | TargetError]:
    """``run`` on the jobs whose model file exists (not at all when none does); the others get a
    "does not exist" error in their place."""
    present = [Path(job.model).exists() for job in jobs]
    done = iter(run([job for job, ok in zip(jobs, present) if ok]) if any(present) else [])
    return [next(done) if ok else TargetError(f"model file {job.model} does not exist")
            for job, ok in zip(jobs, present)]
