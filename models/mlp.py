"""MLP backbones. A backbone maps (N, in_features) to (N, out_features) features."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Linear -> activation blocks; ``out_features`` is the last hidden width."""

    def __init__(self, in_features: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}


def build_backbone(kind: str, in_features: int, hidden: list[int], activation: str = "relu") -> nn.Module:
    return BACKBONES[kind](in_features, hidden, activation)


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
