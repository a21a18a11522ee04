"""Config section ``distill``: the deployed method, the baselines, the students' training loop, and one
options section per ``distill.<key>`` that a registered method reads.

The sections come from the registry (``pipeline.methods``): each method class declares its options
classes, and ``DistillConfig`` has one field per section, in order of first use.
"""

from __future__ import annotations

from pydantic import Field, create_model, field_validator

from pipeline.methods import METHODS, option_sections
from pipeline.options import Strict, TrainConfig


def _check_method(name: str) -> None:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")


class _DistillFields(Strict):
    """The keys of ``distill`` that are not a method's options."""

    method: str = Field("tor_mt", description="method of the deployed student (registry: pipeline.methods.METHODS)")
    baselines: list[str] = Field(
        ["scratch", "kd"], description="extra students trained on the same data for comparison in the report"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        _check_method(name)
        return name

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        for name in names:
            _check_method(name)
        return names


def _sections() -> dict[str, type[Strict]]:
    sections = option_sections()
    clash = sorted(set(sections) & set(_DistillFields.model_fields))
    if clash:
        raise ValueError(f"options section {clash[0]!r} would hide the key distill.{clash[0]}")
    return sections


DistillConfig = create_model(
    "DistillConfig", __base__=_DistillFields, __module__=__name__,
    **{key: (opt, Field(default_factory=opt)) for key, opt in _sections().items()},
)
