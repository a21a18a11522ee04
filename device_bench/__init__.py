"""Run exported models where they ship: latency statistics and outputs from the target's runtime.

``runner.py`` is the self-contained script copied to a target; ``targets`` knows how to run it
(host today; qemu-aarch64 and ssh arrive through their issue); ``stats`` summarises results.
"""

from device_bench.targets import TARGETS, Target, TargetError, parse_target

__all__ = ["TARGETS", "Target", "TargetError", "parse_target"]
