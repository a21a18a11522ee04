"""Small CNN backbone for (N, C, H, W) images: conv3x3-ReLU-maxpool blocks, then an MLP."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.mlp import ACTIVATIONS, MLP


class CNN(nn.Module):
    """``channels`` conv blocks (3x3, padding 1, activation, 2x2 max-pool while the map is >= 4
    pixels), flatten, then ``hidden`` fully connected layers."""

    def __init__(self, input_shape: Sequence[int], hidden: list[int], activation: str = "relu",
                 channels: Sequence[int] = (8, 16)):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"a cnn backbone needs (C, H, W) inputs, got shape {tuple(input_shape)}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), ACTIVATIONS[activation]()]
            if min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*layers)
        self.mlp = MLP((c, h, w), hidden, activation)
        self.out_features = self.mlp.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(x))
