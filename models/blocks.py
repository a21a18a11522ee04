"""Small building blocks shared by the reference mobile architectures.

Faithful to torchvision's definitions so that ``state_dict`` key names match:
``_make_divisible`` (torchvision/models/_utils.py, from the TensorFlow MobileNet code),
``Conv2dNormActivation`` and ``SqueezeExcitation`` (torchvision/ops/misc.py),
``StochasticDepth`` (torchvision/ops/stochastic_depth.py; Huang et al., "Deep Networks with
Stochastic Depth", https://arxiv.org/abs/1603.09382). Squeeze-and-excitation: Hu et al.,
https://arxiv.org/abs/1709.01507.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ModuleFactory = Callable[..., nn.Module]


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``), never going down by
    more than 10 % (torchvision/models/_utils.py)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv2d -> norm -> activation as an ``nn.Sequential`` (keys ``0.weight``, ``1.running_mean``, ...).

    Padding keeps the size at stride 1 (``(k - 1) // 2 * dilation``); the convolution has a bias only
    when there is no norm layer. ``activation_layer=None`` leaves the activation out."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer: ModuleFactory | None = nn.BatchNorm2d,
                 activation_layer: ModuleFactory | None = nn.ReLU, dilation: int = 1):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation=dilation, groups=groups, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """``x * scale_activation(fc2(activation(fc1(avgpool(x)))))`` with 1x1 convolutions ``fc1``/``fc2``.

    MobileNetV3 uses ReLU + hard-sigmoid, EfficientNet SiLU + sigmoid."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation: ModuleFactory = nn.ReLU,
                 scale_activation: ModuleFactory = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class StochasticDepth(nn.Module):
    """Drop whole residual branches per sample ("row" mode) with probability ``p`` while training,
    rescaling the survivors by ``1 / (1 - p)``; the identity in eval mode (and when ``p == 0``)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"drop probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device)
        noise = noise.bernoulli_(survival)
        if survival > 0.0:
            noise = noise / survival
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}"


def classifier_or_identity(num_classes: int, make: Callable[[], nn.Module]) -> nn.Module:
    """The network's classifier, or ``nn.Identity`` (no parameters) when ``num_classes == 0``: the
    network then ends at its pooled features, where pocketkd puts its own heads."""
    return make() if num_classes else nn.Identity()


def init_conv_bn(model: nn.Module, conv_nonlinearity: str | None = None) -> None:
    """torchvision's initialisation of convolutions (Kaiming normal, fan-out, zero bias) and batch
    norms (weight 1, bias 0); ResNet passes ``conv_nonlinearity="relu"``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if conv_nonlinearity:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=conv_nonlinearity)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
