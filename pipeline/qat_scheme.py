"""The int8 scheme both fake quantizers train with (``pipeline.qat`` for MLP / CNN students,
``pipeline.qat_graph`` for image backbones): the grids ONNX Runtime's and LiteRT's converters compute."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 scale max|w| / 127 as ORT computes it (float64, then float32)."""
    absmax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).double()
    scale = (absmax / 127.0).float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def activation_qparams(rmin: float, rmax: float) -> tuple[float, int]:
    """(scale, zero point) of the uint8 grid over [min(rmin, 0), max(rmax, 0)], exactly as
    ``onnxruntime.quantization.quant_utils.compute_scale_zp`` computes them."""
    lo, hi = np.minimum(np.float32(rmin), np.float32(0)), np.maximum(np.float32(rmax), np.float32(0))
    scale = np.float64(hi) - np.float64(lo)
    scale = scale / 255.0
    if np.float32(scale) < np.finfo(np.float32).tiny:
        return 1.0, 0
    zp = int(np.round(0 - np.float64(lo) / scale))
    return float(np.float32(scale)), zp


class PerChannelInt8(nn.Module):
    """Weight parametrization: fake-quantized onto the per-channel symmetric int8 grid (STE)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = weight_scale(w)
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32),
                                                      0, -127, 127)


def snap(layers) -> None:
    """Remove each layer's ``PerChannelInt8`` parametrization, keeping the weights on their int8 grid."""
    for layer in layers:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


class ActivationGrid(nn.Module):
    """One 8-bit activation grid: records min / max while calibrating, fake-quantizes once set."""

    def __init__(self):
        super().__init__()
        self.qparams: tuple[float, int] | None = None
        self.seen: list[float] | None = None  # [min, max] while calibrating

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:  # calibration: record the float range, change nothing
            lo, hi = float(t.detach().min()), float(t.detach().max())
            self.seen = [min(self.seen[0], lo), max(self.seen[1], hi)] if self.seen else [lo, hi]
            return t
        if self.qparams is None:
            return t
        scale, zp = self.qparams
        return torch.fake_quantize_per_tensor_affine(t, scale, zp, 0, 255)


@torch.no_grad()
def calibrate_grids(student: nn.Module, grids: list[ActivationGrid], x: np.ndarray,
                    batch: int = 256) -> list[tuple[float, float]]:
    """Set every grid from min / max over ``x``, run through ``student`` in eval mode (weights
    fake-quantized, activations float: what ORT's MinMax calibrator sees on the final model)."""
    was_training = student.training
    student.eval()
    for g in grids:
        g.seen = []
    try:
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        for i in range(0, len(xt), batch):
            student(xt[i : i + batch])
        ranges = [tuple(g.seen) for g in grids]
    finally:
        for g in grids:
            g.seen = None
        student.train(was_training)
    for g, (lo, hi) in zip(grids, ranges):
        g.qparams = activation_qparams(lo, hi)
    return ranges
