"""Per-element regression losses shared by the teacher (``teacher.loss``) and the robust-loss scratch
baseline (``distill.scratch.loss``): mse, l1, or Huber with a delta per output."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.methods.base import MAD_TO_SIGMA

HUBER_K = 1.345  # Huber's tuning constant: 95 % efficiency on Gaussian residuals of scale sigma
LOSSES = ("mse", "l1", "huber")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def huber_deltas(y_train: np.ndarray, delta: float | None = None) -> np.ndarray:
    """Huber's delta per output: ``delta`` when given, else HUBER_K x the MAD scale of each output of
    the (standardised) training labels (1 where that scale is 0)."""
    y = np.asarray(y_train, dtype=np.float64).reshape(len(y_train), -1)
    if delta is not None:
        return np.full(y.shape[1], float(delta))
    d = HUBER_K * MAD_TO_SIGMA * np.median(np.abs(y - np.median(y, axis=0)), axis=0)
    return np.where(d > 0, d, 1.0)


def regression_loss(kind: str, y_train: np.ndarray, delta: float | None = None) -> tuple[LossFn, list[float] | None]:
    """(per-element loss fn(out, y), Huber's deltas or None) for ``kind`` in LOSSES."""
    if kind == "mse":
        return (lambda out, y: F.mse_loss(out, y, reduction="none")), None
    if kind == "l1":
        return (lambda out, y: F.l1_loss(out, y, reduction="none")), None
    if kind != "huber":
        raise ValueError(f"unknown regression loss {kind!r}; allowed: {', '.join(LOSSES)}")
    deltas = huber_deltas(y_train, delta)
    d = torch.as_tensor(deltas, dtype=torch.float32)

    def huber(out, y):
        a = (out - y).abs()
        return torch.where(a <= d, 0.5 * a ** 2, d * (a - 0.5 * d))

    return huber, [float(v) for v in deltas]
