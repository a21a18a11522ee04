"""The one place where metrics are defined: training, export parity and the bench all use these,
so "RMSE" means the same thing everywhere."""

from __future__ import annotations

import numpy as np


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        p = p.reshape(t.shape)
    return p, t


def rmse(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def max_abs_diff(a, b) -> float:
    p, t = _pair(a, b)
    return float(np.max(np.abs(p - t))) if p.size else 0.0


def regression_metrics(pred, target) -> dict[str, float]:
    return {"rmse": rmse(pred, target), "mae": mae(pred, target)}
