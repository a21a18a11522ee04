"""MobileNetV2 and MobileNetV3-Small/-Large: the students.

- Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", https://arxiv.org/abs/1801.04381
  (torchvision/models/mobilenetv2.py).
- Howard et al., "Searching for MobileNetV3", https://arxiv.org/abs/1905.02244
  (torchvision/models/mobilenetv3.py): hard-swish in the stem, the later blocks and the last conv;
  squeeze-excite with ReLU + hard-sigmoid and ``_make_divisible(expanded // 4, 8)`` channels; batch norm
  eps=0.001, momentum=0.01.

Module names follow torchvision (``features.N.conv...`` / ``features.N.block...``, ``classifier``).
Differences, all off by default: ``in_channels`` (1 for grey images) and ``num_classes=0`` (no
``classifier``: the network ends at its pooled features).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from models.blocks import Conv2dNormActivation, SqueezeExcitation, _make_divisible, classifier_or_identity, \
    init_conv_bn
from models.pretrained import apply_weights


def _init_linear_normal(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class _PooledNet(nn.Module):
    """``features`` -> global average pool -> flatten -> ``classifier``."""

    features: nn.Sequential
    classifier: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features) pooled features."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


# ----------------------------------------------------------------------------------------- V2
class InvertedResidualV2(nn.Module):
    """1x1 expand (ReLU6, unless the ratio is 1), 3x3 depthwise (ReLU6), linear 1x1 projection;
    residual when the stride is 1 and the width unchanged. Key names ``conv.0.0``, ..., ``conv.N``."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, kernel_size=1, activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden, activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(_PooledNet):
    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 round_nearest: int = 8, dropout: float = 0.2):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [Conv2dNormActivation(in_channels, input_channel, stride=2,
                                                          activation_layer=nn.ReLU6)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, last_channel, kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.num_features = last_channel
        self.classifier = classifier_or_identity(
            num_classes, lambda: nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channel, num_classes)))
        init_conv_bn(self)
        _init_linear_normal(self)


# ----------------------------------------------------------------------------------------- V3
@dataclass
class BneckConfig:
    """One row of the paper's Tables 1-2, channels already scaled by the width multiplier."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int

    @classmethod
    def scaled(cls, width_mult: float, inp: int, kernel: int, exp: int, out: int, se: bool, act: str,
               stride: int) -> "BneckConfig":
        adjust = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        return cls(adjust(inp), kernel, adjust(exp), adjust(out), se, act == "HS", stride)


class InvertedResidualV3(nn.Module):
    """1x1 expand (if wider), kxk depthwise, squeeze-excite (optional), linear 1x1 projection; ReLU or
    hard-swish. Key names ``block.0.0``, ``block.k.fc1``, ..."""

    def __init__(self, cnf: BneckConfig, norm_layer):
        super().__init__()
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=act))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels, kernel_size=cnf.kernel,
                                           stride=cnf.stride, groups=cnf.expanded_channels, norm_layer=norm_layer,
                                           activation_layer=act))
        if cnf.use_se:
            squeeze = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze, scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        return result + x if self.use_res_connect else result


# (input, kernel, expanded, output, SE, activation, stride): paper Table 1 (Large) and Table 2 (Small)
V3_LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]
V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]


class MobileNetV3(_PooledNet):
    """Stem (3x3/2, hard-swish), bneck blocks, 1x1 conv to 6x the last width (hard-swish), pool,
    classifier Linear -> hard-swish -> dropout -> Linear."""

    def __init__(self, setting: list[tuple], last_channel: int, num_classes: int = 1000, width_mult: float = 1.0,
                 in_channels: int = 3, dropout: float = 0.2):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        cnfs = [BneckConfig.scaled(width_mult, *row) for row in setting]
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, cnfs[0].input_channels, kernel_size=3, stride=2,
                                                        norm_layer=norm_layer, activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(cnf, norm_layer) for cnf in cnfs]
        lastconv_in = cnfs[-1].out_channels
        lastconv_out = 6 * lastconv_in
        layers.append(Conv2dNormActivation(lastconv_in, lastconv_out, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.num_features = lastconv_out
        last = _make_divisible(last_channel * width_mult, 8)
        self.classifier = classifier_or_identity(num_classes, lambda: nn.Sequential(
            nn.Linear(lastconv_out, last), nn.Hardswish(inplace=True), nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last, num_classes)))
        init_conv_bn(self)
        _init_linear_normal(self)


def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 weights: str | os.PathLike | None = None) -> MobileNetV2:
    """MobileNetV2 (3,504,872 parameters at 1000 classes, width 1.0)."""
    return apply_weights(MobileNetV2(num_classes, width_mult, in_channels), weights)


def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                       weights: str | os.PathLike | None = None) -> MobileNetV3:
    """MobileNetV3-Large (5,483,032 parameters at 1000 classes, width 1.0)."""
    return apply_weights(MobileNetV3(V3_LARGE, 1280, num_classes, width_mult, in_channels), weights)


def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                       weights: str | os.PathLike | None = None) -> MobileNetV3:
    """MobileNetV3-Small (2,542,856 parameters at 1000 classes, width 1.0)."""
    return apply_weights(MobileNetV3(V3_SMALL, 1024, num_classes, width_mult, in_channels), weights)
