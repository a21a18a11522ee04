"""Model families: backbones (registry ``BACKBONES``), the two-head student and head dropping."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from models.backbones import ARCHITECTURES, ImageBackbone, image_backbone_factory
from models.cnn import CNN
from models.mlp import MLP, count_parameters
from models.heads import SingleHeadNet, TwoHeadStudent, drop_teacher_head

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    **{arch: image_backbone_factory(arch) for arch in ARCHITECTURES},
}


def build_backbone(kind: str, input_shape: Sequence[int], hidden: list[int], activation: str = "relu",
                   channels: Sequence[int] = (), *, width_mult: float = 1.0) -> nn.Module:
    """A backbone from the registry; ``channels`` is used by the small ``cnn`` only, ``width_mult`` by
    the reference architectures (ResNet, MobileNet, EfficientNet) only."""
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone {kind!r}; allowed: {', '.join(BACKBONES)}")
    kwargs: dict = {}
    if kind == "cnn":
        kwargs["channels"] = channels
    elif kind in ARCHITECTURES:
        kwargs["width_mult"] = width_mult
    return BACKBONES[kind](tuple(input_shape), hidden, activation, **kwargs)


__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "ImageBackbone",
    "CNN",
    "MLP",
    "SingleHeadNet",
    "TwoHeadStudent",
    "build_backbone",
    "count_parameters",
    "drop_teacher_head",
]
