"""Model families: backbones (registry ``BACKBONES``), the two-head student and head dropping."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from models.cnn import CNN
from models.mlp import MLP, Regressor, count_parameters
from models.student import SingleHead, TwoHeadStudent, drop_teacher_head

BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_backbone(kind: str, input_shape: Sequence[int], hidden: list[int], activation: str = "relu",
                   channels: Sequence[int] = ()) -> nn.Module:
    """A backbone from the registry; ``channels`` is used by convolutional backbones only."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; allowed: {', '.join(BACKBONES)}")
    kwargs = {"channels": channels} if kind == "cnn" else {}
    return BACKBONES[kind](tuple(input_shape), hidden, activation, **kwargs)


__all__ = [
    "BACKBONES",
    "CNN",
    "MLP",
    "Regressor",
    "SingleHead",
    "TwoHeadStudent",
    "build_backbone",
    "count_parameters",
    "drop_teacher_head",
]
