"""Run exported models where they ship: latency statistics and outputs from the target's runtime.

``runner.py`` is the self-contained script copied to a target; ``target_base`` defines what a target
is (``Target``, ``Job``, ``TargetError``, the ``TARGETS`` registry); ``jobs`` runs many files in one
runner process; ``host``, ``qemu`` and ``ssh`` are the built-in targets, registered by ``targets``,
which also has ``parse_target``. The names below are imported on first use, so
``import device_bench.runner`` loads no target module.
"""

__all__ = ["TARGETS", "Target", "TargetError", "parse_target", "register_target"]


def __getattr__(name: str):
    if name in __all__:
        from device_bench import targets

        return getattr(targets, name)
    raise AttributeError(f"module 'device_bench' has no attribute {name!r}")
