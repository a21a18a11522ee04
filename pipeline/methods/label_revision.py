"""Label revision (``lr``), data selection (``ds``) and both (``lr_ds``), for classification and regression.

Lan, Cheung, Xu, Liu, Hu, Li, Chen, "Improve Knowledge Distillation via Label Revision and Data
Selection" (arXiv 2404.03693; IEEE TCDS 2025). Label revision mixes the teacher into the label so the
target always ranks the label first; data selection distils only the samples whose teacher is most
reliable and trains the rest on the labels alone. The regression analogue of label revision is
``revise_regression_targets``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.errors import UserError
from pipeline.methods.base import (BOTH, as_labels, check_labels, norms, register, residual_norm, robust_scale,
                                   true_class)
from pipeline.methods.baselines import KDMethod, hinton_per_sample
from pipeline.options import Strict

_TINY = 1e-12


class LRConfig(Strict):
    eta: float = Field(0.5, gt=0, lt=1, description="lr: beta = eta / (p_max - p_y + 1) mixes the teacher into the label")
    scale_k: float = Field(
        2.0, gt=0, description="regression lr: target weight exp(-|y_t - y| / (scale_k x MAD-scale of residuals))"
    )


class DSConfig(Strict):
    fraction: float = Field(
        0.6, gt=0, le=1, description="ds: fraction of training samples distilled (most reliable teacher); the rest: labels only"
    )
    score: Literal["teacher_logp", "influence"] = Field(
        "teacher_logp",
        description="ds ranking (classification): the teacher's log p(label), or the influence of distilling a "
        "sample on the validation loss through the teacher's last layer (needs a PyTorch teacher)",
    )
    damping: float = Field(
        0.01, gt=0, description="ds.score=influence: Hessian damping, as a share of its mean diagonal"
    )


# --------------------------------------------------------------------------- loss terms


def revise_labels(p_teacher: torch.Tensor, labels: torch.Tensor, eta: float) -> torch.Tensor:
    """Label revision (Lan et al., "Improve KD via Label Revision and Data Selection"), per sample:

        p = beta * p_t + (1 - beta) * onehot(y),   beta = eta / (p_t_max - p_t_y + 1),   0 < eta < 1.

    Applied to every sample (for a teacher that is already right, p_t_max = p_t_y and beta = eta).
    ``p_teacher`` are the teacher's probabilities (at whatever temperature the caller distils at).

    Why argmax(p) = y always: with d = p_t_max - p_t_y >= 0 and any j != y,
    p_y - p_j = beta * (p_t_y - p_t_j) + 1 - beta >= -beta * d + 1 - beta = 1 - beta * (1 + d) = 1 - eta > 0.
    """
    check_labels(p_teacher, labels)
    if not 0 < eta < 1:
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    p_t = p_teacher.detach()
    gap = p_t.max(dim=1).values - true_class(p_t, labels)
    beta = (eta / (gap + 1)).unsqueeze(1)
    onehot = F.one_hot(labels, p_t.shape[1]).to(p_t.dtype)
    return beta * p_t + (1 - beta) * onehot


def teacher_reliability(p_teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample reliability of the teacher's supervision, higher = more reliable.

    The paper scores samples with influence functions (how distilling a sample changes the student's
    loss). That needs per-sample gradients and inverse-Hessian products; here a cheap proxy is used
    instead: the teacher's negative cross-entropy on the true label,

        score_i = log p_t[i, y_i]   (= -CE(teacher_i, y_i), p clamped at 1e-12, so the score is finite).

    It is monotone in p_t[y], so it ranks samples exactly like the teacher's probability of the truth:
    samples the teacher gets confidently wrong rank last.
    """
    check_labels(p_teacher, labels)
    return true_class(p_teacher.detach(), labels).clamp_min(_TINY).log()


INFLUENCE_MAX_DIM = 6000  # above this many last-layer parameters the Hessian is taken as the identity


def influence_scores(features: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray,
                     val_features: np.ndarray, val_logits: np.ndarray, val_labels: np.ndarray,
                     damping: float = 0.01) -> tuple[np.ndarray, str]:
    """Data selection by influence (Lan et al. score samples by their influence; this is the documented
    approximation): the influence, through the teacher's last layer, of distilling a training sample
    instead of fitting its label, on the cross-entropy of the validation split. Returns (scores, the
    Hessian used); a higher score means distilling the sample is predicted to lower the validation loss.

    The last layer is W (m x (d+1), bias as a constant feature) on the teacher's penultimate features
    h; at the teacher's own W the distillation target softmax(W h) = p_t gives zero gradient, the label
    gives (p_t - e_y) h^T, so switching sample z from its label to the teacher changes its gradient by
    (e_y - p_t) h^T. The first-order influence of that change on the validation loss L_v (Koh & Liang,
    2017) is  -grad L_v^T H^-1 vec((e_y - p_t) h^T); the score is its negative,

        score_z = vec((e_y - p_t)_z h_z^T) . H^-1 grad L_v,   grad L_v = mean_v (p_v - e_yv) h_v^T,

    with H the Gauss-Newton Hessian of the mean training cross-entropy, (1/n) sum (diag p - p p^T) (x) h h^T,
    plus ``damping`` x its mean diagonal (it is singular along the softmax's shift direction); above
    INFLUENCE_MAX_DIM last-layer parameters H is taken as the identity (a TracIn-style dot product).
    A sample the teacher gets right and confidently scores ~0; one it gets wrong scores by whether
    its label's pull agrees with the validation gradient (negative: keep the label)."""
    def grads(h, logits, y):
        z = np.asarray(logits, dtype=np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        onehot = np.eye(p.shape[1])[np.asarray(y).reshape(-1).astype(np.int64)]
        return np.hstack([np.asarray(h, dtype=np.float64), np.ones((len(h), 1))]), p, onehot

    h, p, e = grads(features, teacher_logits, labels)
    hv, pv, ev = grads(val_features, val_logits, val_labels)
    m, d = p.shape[1], h.shape[1]
    g_val = ((pv - ev).T @ hv / len(hv)).reshape(-1)  # (m * d,), row-major over (class, feature)
    if m * d <= INFLUENCE_MAX_DIM:
        hess = np.empty((m, d, m, d))
        for i in range(m):
            for j in range(i, m):
                a = (p[:, i] * ((i == j) - p[:, j]))[:, None]
                hess[i, :, j, :] = (h * a).T @ h / len(h)
                hess[j, :, i, :] = hess[i, :, j, :].T
        hess = hess.reshape(m * d, m * d)
        hess[np.diag_indices_from(hess)] += damping * float(np.mean(np.diag(hess)))
        v, kind = np.linalg.solve(hess, g_val), "gauss-newton"
    else:
        v, kind = g_val, "identity"
    return np.einsum("nm,md,nd->n", e - p, v.reshape(m, d), h), kind


def select_for_distillation(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the k = round(fraction * N) samples with the highest scores.

    Ties are broken deterministically by the lower index first (stable sort); NaN scores count as the
    least reliable. ``fraction`` must be in [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    s = scores.detach().reshape(-1)
    s = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
    k = int(round(fraction * s.numel()))
    order = torch.sort(s, descending=True, stable=True).indices
    mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    mask[order[:k]] = True
    return mask


def lr_ds_loss(
    student_logits: torch.Tensor,
    p_teacher: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    eta: float,
    T: float = 1.0,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Label revision on the selected samples, ground-truth cross-entropy on the rest (Lan et al.).

    With r_i = revise_labels(p_teacher, y, eta)_i and q_i = softmax(s_i / T), the per-sample loss is

        selected (mask_i):   l_i = alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * H(r_i, q_i)
        not selected:        l_i = CE(s_i, y_i)

    and L = 1/N sum_i l_i over the whole batch (so a sample's weight does not depend on how many others
    were selected). H(r, q) = -sum_j r_j log q_j. ``p_teacher`` should be the teacher's probabilities at
    the same temperature T. The revised target already holds (1 - beta) of its mass on y, so alpha = 0
    (the default) is a usable setting; alpha > 0 adds an explicit hard-label term on selected samples.
    """
    check_labels(student_logits, labels)
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    revised = revise_labels(p_teacher, labels, eta)
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    soft = -(revised * F.log_softmax(student_logits / T, dim=1)).sum(dim=1)
    distil = alpha * ce + (1 - alpha) * T**2 * soft
    return torch.where(mask.to(torch.bool), distil, ce).mean()


def revise_regression_targets(y: torch.Tensor, y_teacher: torch.Tensor, scale: float) -> torch.Tensor:
    """Regression analogue of label revision: a target between y_teacher and y that moves to y as the
    teacher's residual grows,

        w_i = exp(-|r_i| / scale),   target_i = w_i * y_teacher_i + (1 - w_i) * y_i,   r_i = y_teacher_i - y_i,

    |r_i| being the Euclidean norm over outputs (as ``base.residual_norm``), scale > 0. A teacher that
    agrees with the label gives target = y_teacher = y; a far-off teacher is ignored (target -> y).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    w = torch.exp(-residual_norm(y, y_teacher) / scale).reshape(-1, *([1] * (y.dim() - 1)))
    return w * y_teacher + (1 - w) * y


# --------------------------------------------------------------------------- methods


class ReviseSelectKD(KDMethod):
    """The base of lr, ds and lr_ds: KD whose label term may be revised (``revise``, reads ``distill.lr``)
    on the distilled samples, which may be a fixed subset chosen once before training (``select``, reads
    ``distill.ds``): the samples whose teacher is most reliable. Classification ranks by the teacher's
    log p(y) (``teacher_reliability``, the default) or by ``influence_scores`` (ds.score=influence, the
    paper's idea through the teacher's last layer); regression by
    the smallest teacher residual |y - y_teacher|. Without selection every sample is distilled."""

    tasks = BOTH
    revise, select = False, False  # the subclasses set them

    def __init__(self, opts, teacher_residuals: np.ndarray | None = None, **kw):
        super().__init__(opts, teacher_residuals, **kw)
        ts = self.train_set
        if ts is None:
            raise ValueError(f"method {self.name!r} needs the training set's teacher outputs")
        n = len(ts.y)
        self.hessian = None
        if self.task == "classification" and self.select and self.ds.score == "influence":
            if ts.features is None or ts.val_features is None:
                raise UserError(f"method {self.name!r} with distill.ds.score=influence needs the teacher's "
                                "penultimate features, and teacher_preds.npz has none (a teacher stage of an "
                                "older pocketkd): re-run it with --from teacher, or use distill.ds.score=teacher_logp")
            inf, self.hessian = influence_scores(ts.features, ts.teacher, ts.y, ts.val_features, ts.val_teacher,
                                                 ts.val_y, self.ds.damping)
            scores = torch.as_tensor(inf)
        elif self.task == "classification":
            p = torch.softmax(torch.as_tensor(ts.teacher, dtype=torch.float32), dim=1)
            scores = teacher_reliability(p, torch.as_tensor(ts.y).long())
        else:
            scores = -torch.as_tensor(norms(ts.y - ts.teacher))
        frac = self.ds.fraction if self.select else 1.0
        self.selected = select_for_distillation(scores, frac) if frac < 1 else torch.ones(n, dtype=torch.bool)
        self.scale = max(robust_scale(ts.y - ts.teacher), 1e-8) if self.task == "regression" else None

    def _mask(self, idx, batch):
        if idx is None:  # outside training (e.g. a loss on new data): everything counts as selected
            return torch.ones(batch, dtype=torch.bool)
        return self.selected[idx.long()]

    def describe(self):
        return {**super().describe(), "selected_share": float(self.selected.float().mean()),
                **({"ds_fraction": self.ds.fraction} if self.select else {}),
                **({"ds_score": self.ds.score} if self.select and self.task == "classification" else {}),
                **({"influence_hessian": self.hessian} if self.hessian else {}),
                **({"lr_eta": self.lr.eta} if self.revise else {})}

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        mask = self._mask(idx, label_out.shape[0])
        a = self.alpha
        if self.task == "classification":
            labels = as_labels(y)
            if self.revise:
                p_t = torch.softmax(y_teacher / self.T, dim=1)
                return lr_ds_loss(label_out, p_t, labels, mask, self.lr.eta, self.T, a)
            ce = F.cross_entropy(label_out, labels, reduction="none")
            kd = hinton_per_sample(label_out, y_teacher, labels, self.T, a)
            return torch.where(mask, kd, ce).mean()
        target = y
        if self.revise:
            target = revise_regression_targets(y, y_teacher, self.lr.scale_k * self.scale)
        label_term = ((label_out - target) ** 2).reshape(len(y), -1).mean(dim=1)
        distil = a * label_term + (1 - a) * ((label_out - y_teacher) ** 2).reshape(len(y), -1).mean(dim=1)
        plain = ((label_out - y) ** 2).reshape(len(y), -1).mean(dim=1)
        return torch.where(mask, distil, plain).mean()


@register("lr")
class LabelRevision(ReviseSelectKD):
    """Label revision on every sample: the label term uses the revised target (classification:
    beta * p_teacher + (1 - beta) * onehot(y), beta = eta / (p_max - p_y + 1); regression: a target
    between y_teacher and y that moves to y as the teacher's residual grows)."""

    options = {**KDMethod.options, "lr": LRConfig}
    revise, select = True, False
    lr: LRConfig


@register("ds")
class DataSelection(ReviseSelectKD):
    """KD on the selected (most reliable) samples, the labels alone on the rest."""

    options = {**KDMethod.options, "ds": DSConfig}
    revise, select = False, True
    ds: DSConfig


@register("lr_ds")
class LabelRevisionDataSelection(ReviseSelectKD):
    """Label revision on the selected samples, the labels alone on the rest (Lan et al.)."""

    options = {**KDMethod.options, "lr": LRConfig, "ds": DSConfig}
    revise, select = True, True
    lr: LRConfig
    ds: DSConfig
