"""ResNet-18/-34/-50: the teachers.

He et al., "Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385, as defined
in torchvision/models/resnet.py (ResNet "v1.5": the bottleneck's stride sits on its 3x3 convolution).
Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``), so a torchvision state-dict file loads (models.pretrained.load_torchvision_weights).

Differences, all off by default: ``in_channels`` (1 for grey images), ``width_mult`` (scales the
64/128/256/512 stage widths, rounded to a multiple of 8), ``num_classes=0`` (no ``fc``: the network
ends at its pooled features).
"""

from __future__ import annotations

import os
from typing import Type

import torch
from torch import nn

from models.blocks import _make_divisible, classifier_or_identity, init_conv_bn
from models.pretrained import apply_weights


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, each with batch norm."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four stages of ``layers[i]`` blocks, global average pool, ``fc``."""

    def __init__(self, block: Type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        widths = [_make_divisible(w * width_mult, 8) for w in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[3] * block.expansion
        self.fc = classifier_or_identity(num_classes, lambda: nn.Linear(self.num_features, num_classes))
        init_conv_bn(self, conv_nonlinearity="relu")  # nn.Linear keeps PyTorch's default, as in torchvision

    def _make_layer(self, block: Type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_features) pooled features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet18(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             weights: str | os.PathLike | None = None) -> ResNet:
    """ResNet-18 (11,689,512 parameters at 1000 classes)."""
    return apply_weights(ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width_mult), weights)


def resnet34(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             weights: str | os.PathLike | None = None) -> ResNet:
    """ResNet-34 (21,797,672 parameters at 1000 classes)."""
    return apply_weights(ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, width_mult), weights)


def resnet50(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
             weights: str | os.PathLike | None = None) -> ResNet:
    """ResNet-50 (25,557,032 parameters at 1000 classes)."""
    return apply_weights(ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, width_mult), weights)
