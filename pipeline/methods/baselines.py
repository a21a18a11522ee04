"""Baselines: the student on the labels alone (``scratch``) and plain knowledge distillation (``kd``).

Hinton KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015). Its options
(``distill.kd``: alpha, temperature) are also read by the KD-based methods of the other families
(``KDMethod``). Loss-term conventions for classification: logits and probabilities are (N, m) float
tensors, labels are (N,) int64 class indices, masks are (N,) bool; teacher outputs are treated as
constants (detached) wherever they enter a loss.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.methods.base import BOTH, Method, as_labels, check_labels, register
from pipeline.methods.losses import LOSSES, regression_loss
from pipeline.options import Strict


class KDConfig(Strict):
    alpha: float = Field(
        0.5, ge=0, le=1,
        description="kd: alpha*MSE(s, y) + (1-alpha)*MSE(s, y_teacher); classification: alpha*CE + (1-alpha)*T^2*KL",
    )
    temperature: float = Field(4.0, gt=0, description="classification: softmax temperature T of Hinton KD")


class ScratchConfig(Strict):
    loss: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        "mse", description="scratch (regression): the label loss, mse, or a robust l1 / huber (a baseline for TOR)"
    )
    huber_delta: float | None = Field(
        None, gt=0, description="scratch with loss=huber: delta in standardised label units (default 1.345 x MAD scale)"
    )


# --------------------------------------------------------------------------- loss terms


def hinton_per_sample(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, T: float, alpha: float
) -> torch.Tensor:
    """Per-sample alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * KL(softmax(t_i/T) || softmax(s_i/T))."""
    check_labels(student_logits, labels)
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    log_q_s = F.log_softmax(student_logits / T, dim=1)
    log_q_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_q_s, log_q_t, reduction="none", log_target=True).sum(dim=1)
    return alpha * ce + (1 - alpha) * T**2 * kl


def hinton_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, T: float, alpha: float
) -> torch.Tensor:
    """Hinton et al. (2015) knowledge distillation:

        L = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

    with both terms averaged over the batch ("batchmean": KL summed over classes, mean over samples).
    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones.
    """
    return hinton_per_sample(student_logits, teacher_logits, labels, T, alpha).mean()


def soft_target_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets, mean over the batch: L = -1/N sum_i sum_j t_ij log softmax(s_i)_j."""
    return -(targets.detach() * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


# --------------------------------------------------------------------------- methods


class KDMethod(Method):
    """Base of the methods built on Hinton KD: they read ``distill.kd`` (temperature T and alpha)."""

    options = {"kd": KDConfig}
    kd: KDConfig

    @property
    def T(self) -> float:
        return self.kd.temperature

    @property
    def alpha(self) -> float:
        return self.kd.alpha


@register("scratch")
class Scratch(Method):
    """The student on the (noisy) labels alone: cross-entropy (classification) or, on the label head,
    ``distill.scratch.loss``: MSE by default, or a robust l1 / Huber loss."""

    uses_teacher = False
    tasks = BOTH
    options = {"scratch": ScratchConfig}
    scratch: ScratchConfig

    def __init__(self, opts, teacher_residuals=None, **kw):
        super().__init__(opts, teacher_residuals, **kw)
        y = self.train_set.y if self.train_set is not None else np.zeros((1, 1))
        self.reg_loss, self.huber_delta = regression_loss(self.scratch.loss, y, self.scratch.huber_delta)

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        if self.task == "classification":
            return F.cross_entropy(label_out, as_labels(y))
        return self.reg_loss(label_out, y).mean()

    def describe(self):
        extra = {"loss": self.scratch.loss} if self.task == "regression" else {}
        if self.huber_delta is not None and self.task == "regression":
            extra["huber_delta"] = self.huber_delta
        return {**super().describe(), **extra}


@register("kd")
class VanillaKD(KDMethod):
    """Regression: alpha * MSE(student, y) + (1 - alpha) * MSE(student, y_teacher), one head.
    Classification: Hinton KD, alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))."""

    tasks = BOTH

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        a = self.kd.alpha
        if self.task == "classification":
            return hinton_kd_loss(label_out, y_teacher, as_labels(y), self.T, a)
        return a * F.mse_loss(label_out, y) + (1 - a) * F.mse_loss(label_out, y_teacher)

    def describe(self):
        extra = {"temperature": self.T} if self.task == "classification" else {}
        return {**super().describe(), "alpha": self.kd.alpha, **extra}
