"""Regression abstention: a mean / log-variance student (``gaussian``) trained with the Gaussian NLL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.methods.base import register
from pipeline.methods.baselines import KDMethod


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of a mean / log-variance student, constant dropped:

        L = mean over all elements of 0.5 * (log_var + (y - mean)^2 * exp(-log_var)).

    Equals torch.nn.GaussianNLLLoss(full=False, reduction="mean") with var = exp(log_var) (for var above
    its eps clamp, 1e-6); parametrising by log-variance keeps the variance positive without a clamp.
    """
    return (0.5 * (log_var + (y - mean) ** 2 * torch.exp(-log_var))).mean()


@register("gaussian")
class GaussianAbstain(KDMethod):
    """The label head predicts a mean and a log-variance per output (2k outputs), trained with the
    Gaussian NLL on the labels plus MSE of the mean to the teacher: alpha * NLL(y) + (1 - alpha) *
    MSE(mean, y_teacher), alpha = ``distill.kd.alpha``. Selective prediction abstains on the largest
    predicted variance."""

    @classmethod
    def n_extra(cls, d_out: int) -> int:
        return d_out

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        k = y.reshape(len(y), -1).shape[1]
        mean, log_var = label_out[:, :k], label_out[:, k : 2 * k].clamp(-12, 12)
        a = self.kd.alpha
        return a * gaussian_nll(mean, log_var, y.reshape(mean.shape)) + (1 - a) * F.mse_loss(
            mean, y_teacher.reshape(mean.shape))

    def describe(self):
        return {**super().describe(), "alpha": self.kd.alpha, "abstain_output": "log-variance"}
