"""What every bench target is: the ``Target`` base class, ``TargetError`` and the registry.

A target runs ``runner.py`` (the self-contained script next to this file) with model files and
inputs somewhere, and returns the runner's JSON results: ``run`` for one file, ``run_many`` for a
list of ``Job`` (file, inputs) in one go. A target implements either; each has a default in terms
of the other (the built-in targets implement ``run_many``: one runner process per target for all
files). ``TARGETS`` maps the scheme a target is written with (``host``, ``qemu-aarch64``, ``ssh``
for ``ssh://...``) to its class;
``register_target`` adds one. The built-in targets are registered in ``device_bench.targets``,
which also has ``parse_target``. Target modules import this module (and ``jobs``, the many-files
plumbing), never each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

from pipeline.errors import UserError

if TYPE_CHECKING:
    import numpy as np

RUNNER = Path(__file__).with_name("runner.py")


class TargetError(UserError):
    """The target cannot run the bench (bad target string, unreachable, missing runtime)."""


@dataclass(frozen=True)
class Job:
    """One model file to bench and the inputs to time it on and to predict."""

    model: Path
    x: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "model", Path(self.model))


class Target:
    """One place to run ``runner.py``. Subclasses set ``scheme`` (the registry key: the spec itself,
    or the part before ``://``) and ``forms`` (how it is written, for error messages and --help),
    and implement ``run`` or ``run_many``. ``parse`` builds one from a spec; a malformed spec raises ``TargetError``
    saying why (``parse_target`` appends the allowed forms)."""

    scheme: ClassVar[str] = ""
    emulated: ClassVar[bool] = False
    forms: ClassVar[str] = ""  # how the target is written, for error messages and --help
    exact: ClassVar[bool] = False  # the target is written exactly as its scheme ("host", "qemu-aarch64")

    def __init__(self, spec: str):
        if self.exact and spec != self.scheme:
            raise TargetError(f"bad bench target {spec!r}: the {self.scheme} target is written exactly "
                              f"'{self.scheme}'")
        self.spec = spec

    @classmethod
    def parse(cls, spec: str) -> Target:
        """The target written ``spec`` (its scheme is ``cls.scheme``); ``TargetError`` when malformed."""
        return cls(spec)

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
        """Bench ``model`` on inputs ``x``: the runner's JSON result plus ``target`` and ``emulated``."""
        if type(self).run_many is Target.run_many:
            raise NotImplementedError(f"{type(self).__name__} implements neither run nor run_many")
        result = self.run_many([Job(Path(model), x)], threads=threads, warmup=warmup, runs=runs, batch=batch,
                               timeout=timeout, max_seconds=max_seconds)[0]
        if isinstance(result, TargetError):
            raise result
        return result

    def run_many(self, jobs: Sequence[Job], *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
                 max_seconds=None) -> list[dict | TargetError]:
        """Bench every job, in order: per job ``run``'s result, or the ``TargetError`` saying why that
        file failed (the others still run). ``timeout`` is per file. A failure of the whole target
        (unreachable, no emulator) is raised. This default calls ``run`` per file."""
        results: list[dict | TargetError] = []
        for job in jobs:
            try:
                results.append(self.run(job.model, job.x, threads=threads, warmup=warmup, runs=runs, batch=batch,
                                        timeout=timeout, max_seconds=max_seconds))
            except TargetError as exc:
                results.append(exc)
        return results


TARGETS: dict[str, type[Target]] = {}


def scheme_of(spec: str) -> str:
    """``ssh`` for ``ssh://pi@board``; the whole spec when it has no ``://`` (``host``)."""
    return spec.split("://", 1)[0] if "://" in spec else spec


def register_target(cls: type[Target]) -> type[Target]:
    """Add ``cls`` to ``TARGETS`` under ``cls.scheme`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Target)) or not cls.scheme:
        raise TypeError(f"{cls!r} is not a Target subclass with a scheme")
    if TARGETS.get(cls.scheme, cls) is not cls:
        raise ValueError(f"bench target scheme {cls.scheme!r} is already taken by {TARGETS[cls.scheme].__name__}")
    TARGETS[cls.scheme] = cls
    return cls


def unregister_target(scheme: str) -> None:
    TARGETS.pop(scheme, None)


def runner_error(text: str) -> str:
    """The runner's own one-line ``error: ...`` from its output, else the last line (no traceback)."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1][:300] if lines else "no output"


def max_seconds_args(max_seconds) -> list[str]:
    return [] if max_seconds is None else ["--max-seconds", str(float(max_seconds))]


def settings_args(*, threads, warmup, runs, batch, max_seconds) -> list[str]:
    """The timing options of ``runner.py``, shared by every file of a run."""
    return ["--threads", str(int(threads)), "--warmup", str(int(warmup)), "--runs", str(int(runs)), "--batch",
            str(int(batch)), *max_seconds_args(max_seconds)]


def runner_args(model: str, inputs: str, out: str, *, threads, warmup, runs, batch, max_seconds) -> list[str]:
    """The command-line arguments of ``runner.py`` for one file (after the interpreter and the script)."""
    return ["--model", model, "--inputs", inputs, "--json", out,
            *settings_args(threads=threads, warmup=warmup, runs=runs, batch=batch, max_seconds=max_seconds)]
