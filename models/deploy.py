"""Deployment rewrites that keep the function and change the exported operators.

MobileNetV3's hard-sigmoid and hard-swish export as ONNX HardSigmoid / HardSwish; onnx2tf turns
them into RELU_0_TO_1 and HARD_SWISH, which LiteRT's XNNPACK delegate leaves to the builtin
kernels (measured on a MobileNetV3-Small student: fp32 100 of 109 nodes delegated in 10
partitions, int8 84 of 111 in 28). Written as ReLU6 arithmetic (the definitions in Howard et al.,
"Searching for MobileNetV3", 2019) they export as Add, Clip(0, 6), Mul, which every converter and
delegate here takes. Which arithmetic matters:

* hard-sigmoid: relu6(x + 3) * (1/6);
* hard-swish: (x * (relu6(x + 3) * 0.5)) * (1/3). TFLite's converter folds x * (relu6(x + 3) / 6)
  and (x * relu6(x + 3)) / 6 back into HARD_SWISH (int8 HARD_SWISH: not taken by XNNPACK), and
  x * clip(x/6 + 1/2, 0, 1) leaves MINIMUM and RELU out of it. The form used before,
  (x / 6) * relu6(x + 3), stays delegated too, but TFLite's full-integer calibration gives its x / 6
  tensor a range up to the product's maximum (pose student: [-0.95, 6.4] for values in [-0.91, 1.02],
  a 3.6x coarser grid at every hard-swish): that full-integer file was 1.085x the fp32 RMSE, this
  form's 1.013x (float-I/O int8 0.9997x -> 1.0002x, ONNX QDQ 1.009x both; docs/BENCHMARKS.md). The
  trailing * (1/3) is folded by the ONNX exporter into the next convolution's weights where one
  follows (``pipeline.qat_graph`` places no grid there).

Parameters and state_dict keys are unchanged; the outputs agree to float rounding (the export parity
check compares every file with the original PyTorch student).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class HardSigmoidReLU6(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (1.0 / 6.0)


class HardSwishReLU6(nn.Module):
    # This arithmetic matters (module docstring): no HARD_SWISH fold (XNNPACK takes every op), and
    # full-integer TFLite 1.013x fp32 RMSE where (x / 6) * relu6(x + 3) gave 1.085x.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * (F.relu6(x + 3.0) * 0.5)) * (1.0 / 3.0)


REWRITES: dict[type, type] = {nn.Hardsigmoid: HardSigmoidReLU6, nn.Hardswish: HardSwishReLU6}


def mobile_friendly(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with hard-sigmoid / hard-swish modules written as ReLU6 arithmetic (the model
    itself when it has none, e.g. the MLP and small CNN students: their export is byte-for-byte as before)."""
    if not any(type(m) in REWRITES for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in REWRITES:
                setattr(parent, name, REWRITES[type(child)]())
    return model


class ClipOutputs(nn.Module):
    """``export.clip_outputs``: the model's first k outputs clipped to [low, high] (the training label
    range, k = len(low)); any further outputs (an abstain output, log-variances) as they are. Exported
    as Max/Min against constants, so every file clips the same way."""

    def __init__(self, model: nn.Module, low, high):
        super().__init__()
        self.model = model
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(1, -1))

    def forward(self, x):
        y = self.model(x)
        k = self.low.shape[1]
        clipped = torch.minimum(torch.maximum(y[:, :k], self.low), self.high)
        return clipped if y.shape[1] == k else torch.cat([clipped, y[:, k:]], dim=1)
