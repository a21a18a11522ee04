"""Distillation methods (registry ``METHODS``) and the losses they are made of.

A method is a class registered with ``@register("name")``. It is built once per training run
from the distillation config and what is known about the training set before training (the
teacher's outputs on it, so data-dependent constants such as TOR's MAD threshold or the data
selection are fixed up front), and its ``loss`` maps the student's two heads, the labels, the
teacher's outputs and the samples' indices in the training set to a scalar.

``tasks`` says where a method applies (``regression``, ``classification``); the config refuses a
method on a task it does not support. ``n_extra(d_out)`` widens the label head (the gambler's
abstain output, the gaussian student's log-variances); such a method ``abstains()``. Methods that
leave samples out of the backward pass count them: ``usage_per_epoch`` is the share of training
samples that took part, per epoch.

Adding a method is one class here, one ``@register`` line, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import distributed
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

    For several outputs the scale of the residual *vector*: sqrt(sum_j sigma_j^2) with sigma_j the MAD
    scale of output j, i.e. the RMS length of a Gaussian residual vector. (The MAD of the per-sample
    norms would be wrong here: norms are skewed and positive, their spread is much smaller than their
    size, so k x that spread rejects most clean samples.) For one output both readings agree."""
    r = np.asarray(residuals, dtype=np.float64)
    r = r.reshape(len(r), -1) if r.ndim > 1 else r.reshape(-1, 1)
    sig = MAD_TO_SIGMA * np.median(np.abs(r - np.median(r, axis=0)), axis=0)
    return float(np.sqrt(np.sum(sig ** 2)))


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


@dataclass
class TrainingSet:
    """What a method may know about the training set before training starts."""

    y: np.ndarray  # labels as training sees them: (n, k) float32, or (n,) int64 classes
    teacher: np.ndarray  # teacher outputs on the training set: (n, k) predictions or (n, m) logits
    task: str = "regression"
    significance: np.ndarray | None = None  # (n,) normalised SRL significance from teacher training


def _as_labels(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1).long()


class Method:
    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True
    tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    @classmethod
    def n_extra(cls, d_out: int) -> int:
        """Outputs the label head has beyond the task's ``d_out`` (what selective prediction abstains on)."""
        return 0

    @classmethod
    def abstains(cls) -> bool:
        return cls.n_extra(1) > 0

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None, *,
                 train_set: TrainingSet | None = None):
        self.cfg = cfg
        self.train_set = train_set
        self.task = train_set.task if train_set is not None else "regression"
        self._used = 0.0
        self._seen = 0
        self.usage_per_epoch: list[float] = []

    def loss(self, label_out: torch.Tensor, teacher_out: torch.Tensor, y: torch.Tensor, y_teacher: torch.Tensor,
             idx: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def count(self, mask: torch.Tensor) -> None:
        """Record which samples of a training batch take part in the backward pass (not during eval)."""
        if torch.is_grad_enabled():
            self._used += float(mask.float().sum())
            self._seen += int(mask.numel())

    def epoch_end(self) -> None:
        # under torchrun each rank counted its share of the batches: sum over ranks
        used, seen = distributed.all_reduce_sum(self._used), distributed.all_reduce_sum(self._seen)
        if seen:
            self.usage_per_epoch.append(used / seen)
        self._used, self._seen = 0.0, 0

    def describe(self) -> dict:
        out = {"method": self.name}
        if self.usage_per_epoch:
            out["samples_used_share_mean"] = float(np.mean(self.usage_per_epoch))
            out["samples_used_share_per_epoch"] = [round(u, 4) for u in self.usage_per_epoch]
        return out

    # helpers for classification methods
    @property
    def T(self) -> float:
        return self.cfg.kd.temperature

    @property
    def alpha(self) -> float:
        return self.cfg.kd.alpha


BOTH = frozenset({"regression", "classification"})
CLS = frozenset({"classification"})


@register("scratch")
class Scratch(Method):
    """The student on the (noisy) labels alone: MSE (regression) or cross-entropy on the label head."""

    uses_teacher = False
    tasks = BOTH

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        if self.task == "classification":
            return F.cross_entropy(label_out, _as_labels(y))
        return F.mse_loss(label_out, y)


@register("kd")
class VanillaKD(Method):
    """Regression: alpha * MSE(student, y) + (1 - alpha) * MSE(student, y_teacher), one head.
    Classification: Hinton KD, alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))."""

    tasks = BOTH

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        a = self.cfg.kd.alpha
        if self.task == "classification":
            from pipeline.classification import hinton_kd_loss

            return hinton_kd_loss(label_out, y_teacher, _as_labels(y), self.T, a)
        return a * F.mse_loss(label_out, y) + (1 - a) * F.mse_loss(label_out, y_teacher)

    def describe(self):
        extra = {"temperature": self.T} if self.task == "classification" else {}
        return {**super().describe(), "alpha": self.cfg.kd.alpha, **extra}


@register("tor")
class TOR(Method):
    """Teacher outlier rejection on the label head only."""

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None, **kw):
        super().__init__(cfg, teacher_residuals, **kw)
        self.delta = tor_threshold(cfg.tor, teacher_residuals)
        self.outlier_share = (
            float(np.mean(_norms(teacher_residuals) > self.delta)) if teacher_residuals is not None else None
        )

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        return tor_loss(label_out, y, y_teacher, self.delta, self.cfg.tor.mode)[0]

    def describe(self):
        return {
            **super().describe(),
            "mode": self.cfg.tor.mode,
            "delta_rule": self.cfg.tor.delta_rule,
            "delta": self.delta,
            "train_outlier_share": self.outlier_share,
        }


@register("tor_mt")
class TORMultiTask(TOR):
    """TOR on the label head + MSE(teacher head, y_teacher), summed with configurable weights."""

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        w = self.cfg.tor_mt
        tor = tor_loss(label_out, y, y_teacher, self.delta, self.cfg.tor.mode)[0]
        return w.label_weight * tor + w.teacher_weight * F.mse_loss(teacher_out, y_teacher)

    def describe(self):
        return {**super().describe(), **self.cfg.tor_mt.model_dump()}


# ---- Lan et al.: label revision (lr), data selection (ds), both (lr_ds)


class _Selection(Method):
    """Data selection: a fixed subset of the training set, the samples whose teacher is most reliable,
    chosen once before training. Classification: by the teacher's log p(y) (a stand-in for the paper's
    influence score, see ``classification.teacher_reliability``); regression: by the smallest teacher
    residual |y - y_teacher|."""

    tasks = BOTH
    select, revise = True, False  # the subclasses set both

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None, **kw):
        super().__init__(cfg, teacher_residuals, **kw)
        ts = self.train_set
        if ts is None:
            raise ValueError(f"method {self.name!r} needs the training set's teacher outputs")
        n = len(ts.y)
        if self.task == "classification":
            from pipeline.classification import teacher_reliability

            p = torch.softmax(torch.as_tensor(ts.teacher, dtype=torch.float32), dim=1)
            scores = teacher_reliability(p, torch.as_tensor(ts.y).long())
        else:
            scores = -torch.as_tensor(_norms(ts.y - ts.teacher))
        from pipeline.classification import select_for_distillation

        frac = cfg.ds.fraction if self.select else 1.0
        self.selected = select_for_distillation(scores, frac) if frac < 1 else torch.ones(n, dtype=torch.bool)
        self.scale = max(robust_scale(ts.y - ts.teacher), 1e-8) if self.task == "regression" else None

    def _mask(self, idx, batch):
        if idx is None:  # outside training (e.g. a loss on new data): everything counts as selected
            return torch.ones(batch, dtype=torch.bool)
        return self.selected[idx.long()]

    def describe(self):
        return {**super().describe(), "selected_share": float(self.selected.float().mean()),
                **({"ds_fraction": self.cfg.ds.fraction} if self.select else {}),
                **({"lr_eta": self.cfg.lr.eta} if self.revise else {})}

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        mask = self._mask(idx, label_out.shape[0])
        a = self.alpha
        if self.task == "classification":
            from pipeline.classification import _hinton_per_sample, lr_ds_loss

            labels = _as_labels(y)
            if self.revise:
                p_t = torch.softmax(y_teacher / self.T, dim=1)
                return lr_ds_loss(label_out, p_t, labels, mask, self.cfg.lr.eta, self.T, a)
            ce = F.cross_entropy(label_out, labels, reduction="none")
            kd = _hinton_per_sample(label_out, y_teacher, labels, self.T, a)
            return torch.where(mask, kd, ce).mean()
        target = y
        if self.revise:
            from pipeline.classification import revise_regression_targets

            target = revise_regression_targets(y, y_teacher, self.cfg.lr.scale_k * self.scale)
        label_term = ((label_out - target) ** 2).reshape(len(y), -1).mean(dim=1)
        distil = a * label_term + (1 - a) * ((label_out - y_teacher) ** 2).reshape(len(y), -1).mean(dim=1)
        plain = ((label_out - y) ** 2).reshape(len(y), -1).mean(dim=1)
        return torch.where(mask, distil, plain).mean()


@register("lr")
class LabelRevision(_Selection):
    """Label revision on every sample: the label term uses the revised target (classification:
    beta * p_teacher + (1 - beta) * onehot(y), beta = eta / (p_max - p_y + 1); regression: a target
    between y_teacher and y that moves to y as the teacher's residual grows)."""

    select, revise = False, True


@register("ds")
class DataSelection(_Selection):
    """KD on the selected (most reliable) samples, the labels alone on the rest."""

    select, revise = True, False


@register("lr_ds")
class LabelRevisionDataSelection(_Selection):
    """Label revision on the selected samples, the labels alone on the rest (Lan et al.)."""

    select, revise = True, True


# ---- Xu, Pu, Zhao: knowledge adjustment (ka) and the abstaining gambler student (ka_gambler)


@register("ka")
class KnowledgeAdjustment(Method):
    """Hinton KD from an adjusted teacher: where the teacher's argmax is not the label, its probability
    of the label and its maximum probability are swapped (``classification.probability_shift``).
    As in the paper ("instead of learning a combination of both teachers and ground truth, we apply
    knowledge adjustment"), the student learns from the adjusted teacher alone by default;
    ``distill.ka.alpha`` > 0 adds alpha * CE(labels) as in Hinton KD. The gambler student keeps
    ``distill.kd.alpha``: its hard term is the gambler loss, which trains the abstain output."""

    tasks = CLS

    def _shifted_kd(self, student_logits, y_teacher, labels):
        from pipeline.classification import probability_shift

        p_t = probability_shift(torch.softmax(y_teacher / self.T, dim=1), labels, self.cfg.ka.min_label_prob)
        log_q = F.log_softmax(student_logits / self.T, dim=1)
        return (p_t * (p_t.clamp_min(1e-12).log() - log_q)).sum(dim=1).mean() * self.T ** 2

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        labels = _as_labels(y)
        a = self.cfg.ka.alpha
        return a * F.cross_entropy(label_out, labels) + (1 - a) * self._shifted_kd(label_out, y_teacher, labels)

    def describe(self):
        return {**super().describe(), "alpha": self.cfg.ka.alpha, "temperature": self.T}


@register("ka_gambler")
class KnowledgeAdjustmentGambler(KnowledgeAdjustment):
    """m + 1 outputs, the last one 'abstain': alpha * gambler loss -log(p_y + p_abstain / o) +
    (1 - alpha) * adjusted KD on the m real classes. Selective prediction abstains on the largest p_abstain."""

    @classmethod
    def n_extra(cls, d_out: int) -> int:
        return 1  # the abstain output

    def payoff(self, m: int) -> float:
        o = self.cfg.ka.payoff or (1 + m) / 2
        if not 1 < o < m:
            raise ValueError(f"distill.ka.payoff must be in (1, {m}) for {m} classes, got {o}")
        return o

    _epochs_done = 0

    def epoch_end(self) -> None:
        super().epoch_end()
        self._epochs_done += 1

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        from pipeline.classification import gambler_loss

        labels = _as_labels(y)
        m = label_out.shape[1] - 1
        if torch.is_grad_enabled() and self._epochs_done < self.cfg.ka.pretrain_epochs:
            # warm-up: plain cross-entropy over the m classes (validation still scores the gambler loss,
            # so early stopping compares like with like)
            hard = F.cross_entropy(label_out[:, :m], labels)
        else:
            hard = gambler_loss(label_out, labels, self.payoff(m))
        return self.alpha * hard + (1 - self.alpha) * self._shifted_kd(label_out[:, :m], y_teacher, labels)

    def describe(self):
        m = self.train_set.teacher.shape[1] if self.train_set is not None else None
        return {**super().describe(), "alpha": self.alpha, "payoff": self.payoff(m) if m else self.cfg.ka.payoff, "abstain_output": True}


# ---- Mishra & Sundaram: significance-based, regulated and hybrid distillation


@register("significance")
class SignificanceKD(Method):
    """Hinton KD weighted by the sample's normalised significance from the teacher's SRL training;
    samples below ``distill.significance.min_weight`` are left out of the backward pass."""

    tasks = CLS
    use_significance, regulate = True, False

    def __init__(self, cfg: DistillConfig, teacher_residuals: np.ndarray | None = None, **kw):
        super().__init__(cfg, teacher_residuals, **kw)
        w = None
        if self.use_significance:
            if self.train_set is None or self.train_set.significance is None:
                raise ValueError(f"method {self.name!r} needs the teacher's SRL significance")
            w = torch.as_tensor(self.train_set.significance, dtype=torch.float32)
            w = torch.where(w >= cfg.significance.min_weight, w, torch.zeros_like(w))
        self.weights = w

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        from pipeline.classification import _hinton_per_sample, self_regulated_mask

        labels = _as_labels(y)
        w = torch.ones(len(labels))
        if self.use_significance and idx is not None:
            w = self.weights[idx.long()]
        if self.regulate:
            w = w * self_regulated_mask(label_out.detach(), labels, self.cfg.regulated.tau).float()
        self.count(w > 0)
        return (w * _hinton_per_sample(label_out, y_teacher, labels, self.T, self.alpha)).mean()

    def describe(self):
        out = {**super().describe(), "alpha": self.alpha, "temperature": self.T}
        if self.weights is not None:
            out["significant_share"] = float((self.weights > 0).float().mean())
            out["min_weight"] = self.cfg.significance.min_weight
        if self.regulate:
            out["tau"] = self.cfg.regulated.tau
        return out


@register("regulated")
class RegulatedKD(SignificanceKD):
    """The student regulates itself: Hinton KD on the samples it gets wrong or right with p_y < tau only."""

    use_significance, regulate = False, True


@register("hybrid")
class HybridKD(SignificanceKD):
    """Significance weights and the student's own regulation together."""

    use_significance, regulate = True, True


# ---- regression abstention: a mean / log-variance student


@register("gaussian")
class GaussianAbstain(Method):
    """The label head predicts a mean and a log-variance per output (2k outputs), trained with the
    Gaussian NLL on the labels plus MSE of the mean to the teacher: alpha * NLL(y) + (1 - alpha) *
    MSE(mean, y_teacher). Selective prediction abstains on the largest predicted variance."""

    @classmethod
    def n_extra(cls, d_out: int) -> int:
        return d_out

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        from pipeline.classification import gaussian_nll

        k = y.reshape(len(y), -1).shape[1]
        mean, log_var = label_out[:, :k], label_out[:, k : 2 * k].clamp(-12, 12)
        a = self.cfg.kd.alpha
        return a * gaussian_nll(mean, log_var, y.reshape(mean.shape)) + (1 - a) * F.mse_loss(
            mean, y_teacher.reshape(mean.shape))

    def describe(self):
        return {**super().describe(), "alpha": self.cfg.kd.alpha, "abstain_output": "log-variance"}


def build_method(name: str, cfg: DistillConfig, teacher_residuals: np.ndarray | None,
                 train_set: TrainingSet | None = None) -> Method:
    return METHODS[name](cfg, teacher_residuals, train_set=train_set)
