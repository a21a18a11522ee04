"""The reference architectures as pocketkd backbones: the network up to its pooled features (its
classifier is replaced by pocketkd's heads), optionally followed by ``hidden`` fully connected layers."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from models.efficientnet import efficientnet_b0
from models.mlp import MLP
from models.mobilenet import mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from models.resnet import resnet18, resnet34, resnet50

BN_MOMENTUM = 0.1  # every backbone trains with PyTorch's default batch-norm momentum (see ImageBackbone)

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "mobilenet_v3_large": mobilenet_v3_large,
    "efficientnet_b0": efficientnet_b0,
}


class ImageBackbone(nn.Module):
    """``net`` (a reference architecture built with ``num_classes=0``) -> pooled features -> MLP.

    ``out_features`` is the pooled feature width when ``hidden`` is empty, else its last width. The
    network's own activations are the paper's; ``activation`` applies to the ``hidden`` layers only.
    A torchvision weights file loads into it with ``models.pretrained.load_torchvision_weights``
    (keys sit under ``net.``).

    Batch norm trains with momentum BN_MOMENTUM (0.1) in every architecture. torchvision's MobileNetV3
    uses 0.01, tuned for ImageNet's ~5,000 steps an epoch; pocketkd's data sets give ~30, and at 0.01
    the eval-mode statistics lag the weights for hundreds of steps: a pose tor_mt student's validation
    loss stayed flat for 10 epochs and early stopping kept its first epoch (17.6 degrees against 7.3
    for single-head tor). The momentum is not part of a state_dict: torchvision weights load the same."""

    def __init__(self, arch: str, input_shape: Sequence[int], hidden: Sequence[int] = (), activation: str = "relu",
                 width_mult: float = 1.0, weights=None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
        if len(input_shape) != 3:
            raise ValueError(f"a {arch} backbone needs (C, H, W) inputs, got shape {tuple(input_shape)}")
        self.arch = arch
        self.net = ARCHITECTURES[arch](num_classes=0, in_channels=int(input_shape[0]), width_mult=width_mult,
                                       weights=weights)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = BN_MOMENTUM
        self.mlp = MLP((self.net.num_features,), list(hidden), activation)
        self.out_features = self.mlp.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.net(x))


def image_backbone_factory(arch: str) -> Callable[..., ImageBackbone]:
    """A registry entry with the ``(input_shape, hidden, activation, **kwargs)`` signature of ``MLP``/``CNN``."""

    def build(input_shape: Sequence[int], hidden: Sequence[int] = (), activation: str = "relu",
              width_mult: float = 1.0, **kwargs) -> ImageBackbone:
        return ImageBackbone(arch, input_shape, hidden, activation, width_mult, **kwargs)

    build.__name__ = arch
    build.__doc__ = f"{arch} backbone ({ARCHITECTURES[arch].__doc__})"
    return build
