"""EfficientNet-B0: a student.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
https://arxiv.org/abs/1905.11946, as defined in torchvision/models/efficientnet.py: MBConv blocks
(1x1 expand, kxk depthwise, squeeze-excite with SiLU + sigmoid and ``max(1, input // 4)`` channels,
linear 1x1 projection), SiLU everywhere, stochastic depth on the residual branches rising linearly
to 0.2 (a no-op in eval mode), dropout 0.2 before the classifier. B0 uses PyTorch's default batch
norm (eps=1e-5, momentum=0.1), as torchvision does; eps=1e-3/momentum=0.01 is torchvision's choice
for B5-B7 and the V2 family only.

Module names follow torchvision (``features.N.M.block.K...``, ``classifier.1``). Differences, all
off by default: ``in_channels`` (1 for grey images), ``num_classes=0`` (no classifier).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import Conv2dNormActivation, SqueezeExcitation, StochasticDepth, _make_divisible, \
    classifier_or_identity, init_conv_bn
from models.pretrained import apply_weights


@dataclass
class MBConvConfig:
    """One stage of the paper's Table 1, channels scaled by the width and repeats by the depth coefficient."""

    expand_ratio: float
    kernel: int
    stride: int
    input_channels: int
    out_channels: int
    num_layers: int

    @staticmethod
    def adjust_channels(channels: float, width_mult: float) -> int:
        return _make_divisible(channels * width_mult, 8)

    @classmethod
    def scaled(cls, width_mult: float, depth_mult: float, expand_ratio: float, kernel: int, stride: int,
               input_channels: int, out_channels: int, num_layers: int) -> "MBConvConfig":
        return cls(expand_ratio, kernel, stride, cls.adjust_channels(input_channels, width_mult),
                   cls.adjust_channels(out_channels, width_mult), int(math.ceil(num_layers * depth_mult)))


class MBConv(nn.Module):
    def __init__(self, cnf: MBConvConfig, stochastic_depth_prob: float, norm_layer=nn.BatchNorm2d):
        super().__init__()
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        layers: list[nn.Module] = []
        if expanded != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, expanded, kernel_size=1, norm_layer=norm_layer,
                                               activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel_size=cnf.kernel, stride=cnf.stride,
                                           groups=expanded, norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cnf.input_channels // 4),
                                        activation=lambda: nn.SiLU(inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cnf.out_channels, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result) + x
        return result


# expand ratio, kernel, stride, input, output, repeats: paper Table 1
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNet(nn.Module):
    def __init__(self, setting: list[MBConvConfig], dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                 num_classes: int = 1000, in_channels: int = 3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, setting[0].input_channels, kernel_size=3,
                                                        stride=2, norm_layer=norm_layer, activation_layer=nn.SiLU)]
        total_blocks = sum(cnf.num_layers for cnf in setting)
        block_id = 0
        for cnf in setting:
            stage: list[nn.Module] = []
            for _ in range(cnf.num_layers):
                block_cnf = copy.copy(cnf)
                if stage:  # every block after the first of a stage: same width in and out, stride 1
                    block_cnf.input_channels = block_cnf.out_channels
                    block_cnf.stride = 1
                stage.append(MBConv(block_cnf, stochastic_depth_prob * block_id / total_blocks, norm_layer))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        lastconv_in = setting[-1].out_channels
        lastconv_out = 4 * lastconv_in
        layers.append(Conv2dNormActivation(lastconv_in, lastconv_out, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = lastconv_out
        self.classifier = classifier_or_identity(num_classes, lambda: nn.Sequential(
            nn.Dropout(p=dropout, inplace=True), nn.Linear(lastconv_out, num_classes)))
        init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features) pooled features."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                    depth_mult: float = 1.0, weights: str | os.PathLike | None = None) -> EfficientNet:
    """EfficientNet-B0 (5,288,548 parameters at 1000 classes); ``width_mult``/``depth_mult`` are the
    paper's compound-scaling coefficients (B0: 1.0/1.0)."""
    setting = [MBConvConfig.scaled(width_mult, depth_mult, *row) for row in B0]
    return apply_weights(EfficientNet(setting, 0.2, 0.2, num_classes, in_channels), weights)
