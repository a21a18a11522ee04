"""Config section ``bench``: targets, formats and timing of the benchmark."""

from __future__ import annotations

from pydantic import Field, field_validator

from device_bench.targets import TargetError, parse_target
from export.format_table import FormatName
from pipeline.options import Strict


class BenchConfig(Strict):
    targets: list[str] = Field(
        ["host", "qemu-aarch64"], min_length=1,
        description="where to run the bench: host, qemu-aarch64, ssh://user@host[:port][?key=PATH&python=PATH]",
    )
    skip_unavailable: bool = Field(
        True, description="drop qemu-aarch64 (with a hint) when qemu is not installed, instead of failing"
    )
    formats: list[FormatName] = Field(
        [], description="formats to bench (empty: every exported file that runs); the teacher's ONNX is always included"
    )
    parity_atol: float = Field(
        1e-5, gt=0, description="fp32 outputs on a target must match the host's within this x max(1, max |output|)"
    )
    threads: int = Field(1, ge=1, description="intra-op threads of the runtime")
    warmup: int = Field(50, ge=0, description="untimed runs before timing")
    runs: int = Field(300, ge=1, description="timed batch-1 runs")
    batch: int = Field(1, ge=1, description="batch size of the timed runs")
    max_seconds: float = Field(
        60.0, gt=0, description="per file and target: stop timing after this many seconds (at least 10 runs)"
    )
    emulated_teacher_rows: int = Field(
        64, ge=1, description="test rows the teacher predicts on emulated targets (fp32 parity only; it is slow)"
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            try:
                parse_target(spec)  # a malformed target fails here, before any work
            except TargetError as exc:
                raise ValueError(str(exc)) from None
        return specs
