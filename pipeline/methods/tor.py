"""Teacher outlier rejection (regression): ``tor`` on the label head, ``tor_mt`` with a teacher head too.

A training sample whose label is far from the teacher's prediction, |y - y_teacher| > delta, is an
outlier; its label is left out of the loss (``reject``) or replaced by the teacher's value
(``substitute``). delta is fixed before training: absolute, or k x the MAD scale of the teacher's
residuals on the training set.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.methods.base import Method, norms, register, residual_norm, robust_scale
from pipeline.options import Strict


class TORConfig(Strict):
    mode: Literal["reject", "substitute"] = Field(
        "reject", description="outliers: leave out of the label loss (reject) or use y_teacher as target (substitute)"
    )
    delta_rule: Literal["absolute", "mad"] = Field(
        "mad", description="outlier threshold: a fixed delta, or k x MAD-scale of the residuals y - y_teacher"
    )
    delta: float = Field(0.5, gt=0, description="threshold for delta_rule=absolute")
    k: float = Field(2.0, gt=0, description="multiplier for delta_rule=mad (delta = k * 1.4826 * MAD)")


class TORMTConfig(Strict):
    label_weight: float = Field(1.0, ge=0, description="weight of the TOR loss on the label head")
    teacher_weight: float = Field(0.5, ge=0, description="weight of MSE(teacher head, y_teacher)")


# --------------------------------------------------------------------------- loss terms


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


@register("tor")
class TOR(Method):
    """Teacher outlier rejection on the label head only."""

    options = {"tor": TORConfig}
    tor: TORConfig

    def __init__(self, opts, teacher_residuals: np.ndarray | None = None, **kw):
        super().__init__(opts, teacher_residuals, **kw)
        self.delta = tor_threshold(self.tor, teacher_residuals)
        # the training samples whose label is rejected (|y - y_teacher| > delta): fixed before training
        self.flagged = norms(teacher_residuals) > self.delta if teacher_residuals is not None else None
        self.outlier_share = float(np.mean(self.flagged)) if self.flagged is not None else None

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        return tor_loss(label_out, y, y_teacher, self.delta, self.tor.mode)[0]

    def describe(self):
        return {
            **super().describe(),
            "mode": self.tor.mode,
            "delta_rule": self.tor.delta_rule,
            "delta": self.delta,
            "train_outlier_share": self.outlier_share,
        }


@register("tor_mt")
class TORMultiTask(TOR):
    """TOR on the label head + MSE(teacher head, y_teacher), summed with configurable weights."""

    options = {**TOR.options, "tor_mt": TORMTConfig}
    tor_mt: TORMTConfig
    trains_teacher_head = True

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        w = self.tor_mt
        tor = tor_loss(label_out, y, y_teacher, self.delta, self.tor.mode)[0]
        return w.label_weight * tor + w.teacher_weight * F.mse_loss(teacher_out, y_teacher)

    def describe(self):
        return {**super().describe(), **self.tor_mt.model_dump()}
