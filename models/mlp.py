"""MLP backbone. A backbone maps (N, *input_shape) to (N, out_features) features."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Flatten, then Linear -> activation blocks; ``out_features`` is the last hidden width."""

    def __init__(self, input_shape: Sequence[int], hidden: list[int], activation: str = "relu", **_):
        super().__init__()
        width = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Regressor(nn.Module):
    """A backbone with one linear output layer: the teacher, and what a student becomes when deployed."""

    def __init__(self, backbone: nn.Module, out_features: int = 1):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
