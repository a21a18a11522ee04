"""Distillation methods (registry ``METHODS``) and the losses they are made of.

A method is a class registered with ``@register("name")``. It is built once per training run
from the distillation config and the teacher's residuals on the training set (so data-dependent
constants such as TOR's MAD threshold are fixed before training), and its ``loss`` maps the
student's two heads, the labels and the teacher's predictions to a scalar.

Adding a method is one class here, one ``@register`` line, and its tests.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import DistillConfig, TORConfig

MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation

METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def deco(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


# --------------------------------------------------------------------------- loss terms


def residual_norm(y: torch.Tensor, y_teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample |y - y_teacher| (Euclidean norm over outputs, so multi-output works the same)."""
    r = (y - y_teacher).reshape(y.shape[0], -1)
    return r.norm(dim=1)


def _norms(residuals: np.ndarray) -> np.ndarray:
    r = np.asarray(residuals, dtype=np.float64)
    return np.abs(r.ravel()) if r.ndim == 1 or r.shape[1] == 1 else np.linalg.norm(r.reshape(len(r), -1), axis=1)


def robust_scale(residuals: np.ndarray) -> float:
    """MAD-based scale of residuals, 1.4826 * median(|r - median(r)|): the sigma of Gaussian r.

    Single-output residuals are used signed; for several outputs, the per-sample norms."""
    r = np.asarray(residuals, dtype=np.float64)
    r = r.ravel() if r.ndim == 1 or r.shape[1] == 1 else _norms(r)
    return float(MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))))


def tor_threshold(cfg: TORConfig, residuals: np.ndarray | None) -> float:
    """delta for TOR: ``cfg.delta`` (absolute) or ``cfg.k`` x robust scale of the training residuals."""
    if cfg.delta_rule == "absolute":
        return float(cfg.delta)
    if residuals is None or len(residuals) == 0:
        raise ValueError("delta_rule='mad' needs the teacher's residuals on the training set")
    scale = robust_scale(residuals)
    return float(cfg.k * max(scale, 1e-8))


def tor_loss(
    pred: torch.Tensor, y: torch.Tensor, y_teacher: torch.Tensor, delta: float, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher outlier rejection. A sample with |y - y_teacher| > delta is an outlier.

    ``reject``: outliers are left out of the loss (mean squared error over the inliers only; an
    outlier gets no gradient from its label). ``substitute``: outliers take y_teacher as target.
    Returns (loss, outlier mask).
    """
    outlier = residual_norm(y, y_teacher) > delta
    if mode == "reject":
        keep = (~outlier).to(pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
        se = (pred - y) ** 2 * keep
        denom = keep.sum() * (se[0].numel() if se.dim() > 1 else 1)
        return se.sum() / denom.clamp_min(1.0), outlier
    if mode == "substitute":
        mask = outlier.reshape(-1, *([1] * (y.dim() - 1)))
        target = torch.where(mask, y_teacher, y)
        return F.mse_loss(pred, target), outlier
    raise ValueError(f"unknown TOR mode {mode!r}; allowed: reject, substitute")


# --------------------------------------------------------------------------- methods


class Method:
    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None):
        self.cfg = cfg

    def loss(
        self, label_out: torch.Tensor, teacher_out: torch.Tensor, y: torch.Tensor, y_teacher: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"method": self.name}


@register("scratch")
class Scratch(Method):
    """The student on the (noisy) labels alone: MSE on the label head."""

    uses_teacher = False

    def loss(self, label_out, teacher_out, y, y_teacher):
        return F.mse_loss(label_out, y)


@register("kd")
class VanillaKD(Method):
    """alpha * MSE(student, y) + (1 - alpha) * MSE(student, y_teacher), one head."""

    def loss(self, label_out, teacher_out, y, y_teacher):
        a = self.cfg.kd.alpha
        return a * F.mse_loss(label_out, y) + (1 - a) * F.mse_loss(label_out, y_teacher)

    def describe(self):
        return {"method": self.name, "alpha": self.cfg.kd.alpha}


@register("tor")
class TOR(Method):
    """Teacher outlier rejection on the label head only."""

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None):
        super().__init__(cfg, teacher_residuals)
        self.delta = tor_threshold(cfg.tor, teacher_residuals)
        self.outlier_share = (
            float(np.mean(_norms(teacher_residuals) > self.delta)) if teacher_residuals is not None else None
        )

    def loss(self, label_out, teacher_out, y, y_teacher):
        return tor_loss(label_out, y, y_teacher, self.delta, self.cfg.tor.mode)[0]

    def describe(self):
        return {
            "method": self.name,
            "mode": self.cfg.tor.mode,
            "delta_rule": self.cfg.tor.delta_rule,
            "delta": self.delta,
            "train_outlier_share": self.outlier_share,
        }


@register("tor_mt")
class TORMultiTask(TOR):
    """TOR on the label head + MSE(teacher head, y_teacher), summed with configurable weights."""

    def loss(self, label_out, teacher_out, y, y_teacher):
        w = self.cfg.tor_mt
        tor = tor_loss(label_out, y, y_teacher, self.delta, self.cfg.tor.mode)[0]
        return w.label_weight * tor + w.teacher_weight * F.mse_loss(teacher_out, y_teacher)

    def describe(self):
        return {**super().describe(), **self.cfg.tor_mt.model_dump()}


def build_method(name: str, cfg: DistillConfig, teacher_residuals: np.ndarray | None) -> Method:
    return METHODS[name](cfg, teacher_residuals)
