"""What every bench target is: the ``Target`` base class, ``TargetError`` and the registry.

A target runs ``runner.py`` (the self-contained script next to this file) with a model file and
inputs somewhere, and returns the runner's JSON result. ``TARGETS`` maps the scheme a target is
written with (``host``, ``qemu-aarch64``, ``ssh`` for ``ssh://...``) to its class;
``register_target`` adds one. The built-in targets are registered in ``device_bench.targets``,
which also has ``parse_target``. Target modules import this module only, never each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pipeline.errors import UserError

if TYPE_CHECKING:
    import numpy as np

RUNNER = Path(__file__).with_name("runner.py")


class TargetError(UserError):
    """The target cannot run the bench (bad target string, unreachable, missing runtime)."""


class Target:
    """One place to run ``runner.py``. Subclasses set ``scheme`` (the registry key: the spec itself,
    or the part before ``://``) and ``forms`` (how it is written, for error messages and --help),
    and implement ``run``. ``parse`` builds one from a spec; a malformed spec raises ``TargetError``
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
        raise NotImplementedError


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


def runner_args(model: str, inputs: str, out: str, *, threads, warmup, runs, batch, max_seconds) -> list[str]:
    """The command-line arguments of ``runner.py`` (after the interpreter and the script)."""
    return ["--model", model, "--inputs", inputs, "--threads", str(int(threads)), "--warmup", str(int(warmup)),
            "--runs", str(int(runs)), "--batch", str(int(batch)), "--json", out, *max_seconds_args(max_seconds)]
