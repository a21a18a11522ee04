"""Config section ``distill``: the deployed method, the baselines, the students' training loop, and one
options section per ``distill.<key>`` that a registered method reads.

The sections come from the registry (``pipeline.methods``): each method class declares its options
classes, and ``DistillConfig`` has one field per section, in order of first use. A method registered
later (a plugin, a test) updates the same class in place: its sections are added (and removed again
by ``unregister``) and every config model that embeds ``DistillConfig`` is rebuilt, so validation,
defaults, ``--set``, the cache hash and docs/CONFIG.md all see the registry as it is.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel, Field, create_model, field_validator
from pydantic.fields import FieldInfo

from pipeline.methods import METHODS, on_registry_change, option_sections
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
    parallel: bool = Field(
        True, description="train the baselines in worker processes beside the deployed method when the machine "
        "has 2 or more cores (not under torchrun); each job then gets its share of the cores as torch threads")

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


def _embeds(model: type[BaseModel], target: type[BaseModel]) -> bool:
    return any(f.annotation is target or target in typing.get_args(f.annotation) for f in model.model_fields.values())


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _follow_registry() -> None:
    """After a late (un)registration: give DistillConfig exactly the registry's sections, then rebuild it
    and every model that embeds it (``Config``), whose validators were compiled with the old fields."""
    sections, fields = _sections(), DistillConfig.model_fields  # the class's own field dict (pydantic >= 2.6)
    own = set(_DistillFields.model_fields)
    stale = [key for key in fields if key not in own and fields[key].annotation is not sections.get(key)]
    for key in stale:
        del fields[key]
    new = [key for key in sections if key not in fields]
    for key in new:
        fields[key] = FieldInfo.from_annotated_attribute(sections[key], Field(default_factory=sections[key]))
    if not stale and not new:
        return
    rebuilt = [DistillConfig]
    DistillConfig.model_rebuild(force=True)
    grew = True
    while grew:  # parents after their children, until no model embeds a rebuilt one unrebuilt
        grew = False
        for model in _subclasses(Strict):
            if model not in rebuilt and any(_embeds(model, done) for done in rebuilt):
                model.model_rebuild(force=True)
                rebuilt.append(model)
                grew = True


on_registry_change(_follow_registry)
