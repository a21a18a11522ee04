"""The bench targets: ``parse_target(spec)`` builds one from how it is written.

Allowed forms:

- ``host``: this machine, in one fresh Python process for all files (``device_bench.host``);
- ``qemu-aarch64``: aarch64 Python and runtimes under qemu-user (``device_bench.qemu``);
- ``ssh://[user@]host[:port][?key=PATH&python=PATH&known_hosts=PATH]``: a device over ssh
  (``device_bench.ssh``).

The base class and the registry are in ``device_bench.target_base``; this module registers the
built-in targets (``BUILTIN``, in the order error messages list them). Adding a target: a module
with a ``Target`` subclass (``run`` or ``run_many``) that imports only ``target_base`` (and
``jobs``), and one entry in ``BUILTIN``.
"""

from __future__ import annotations

from device_bench.host import HostTarget
from device_bench.qemu import QemuAarch64Target
from device_bench.ssh import SshTarget
from device_bench.target_base import (
    RUNNER,
    TARGETS,
    Target,
    TargetError,
    max_seconds_args,
    register_target,
    runner_error,
    scheme_of,
    unregister_target,
)

__all__ = ["BUILTIN", "RUNNER", "TARGETS", "HostTarget", "QemuAarch64Target", "SshTarget", "Target", "TargetError",
           "allowed_forms", "max_seconds_args", "parse_target", "register_target", "runner_error",
           "unregister_target"]

BUILTIN: tuple[type[Target], ...] = (HostTarget, QemuAarch64Target, SshTarget)
for _cls in BUILTIN:
    register_target(_cls)


def allowed_forms() -> str:
    return ", ".join(cls.forms or name for name, cls in TARGETS.items())


def parse_target(spec: str) -> Target:
    """The target for ``spec``; a one-line ``TargetError`` naming the allowed forms when it is malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"empty bench target; allowed: {allowed_forms()}")
    spec = spec.strip()
    cls = TARGETS.get(scheme_of(spec))
    if cls is None:
        raise TargetError(f"unknown bench target {spec!r}; allowed: {allowed_forms()}")
    try:
        return cls.parse(spec)
    except TargetError as exc:
        raise TargetError(f"{' '.join(str(exc).split())}; allowed: {allowed_forms()}") from None
