"""Self-regulated learning (SRL) of the teacher, and the students built on it: ``significance``,
``regulated`` and ``hybrid`` (classification).

Mishra, Sundaram, "Self Regulated Learning Mechanism for Data Efficient Knowledge Distillation". Under
SRL only the samples a model gets wrong, or right with confidence below tau, take part in the
backward pass; a sample's significance is how often it did while the teacher trained
(``SignificanceCounter``; the teacher's options ``teacher.srl`` are ``SRLConfig``). The students
weight Hinton KD by that significance, regulate themselves the same way, or both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.methods.base import CLS, as_labels, check_labels, register, true_class
from pipeline.methods.baselines import KDMethod, hinton_per_sample
from pipeline.options import Strict


class SRLConfig(Strict):
    """Self-regulated learning (Mishra & Sundaram): only samples the model gets wrong, or right with
    confidence below tau, take part in the backward pass; a sample's significance is how often it did."""

    enabled: bool = Field(
        False, description="teacher: train with SRL (otherwise participation is only counted, for significance)"
    )
    tau: float = Field(0.9, gt=0, le=1, description="classification: confidence p_y below which a right sample takes part")
    tolerance: float = Field(
        1.0, gt=0, description="regression: |error| above tolerance x MAD-scale of the residuals takes part"
    )


class SignificanceConfig(Strict):
    min_weight: float = Field(
        0.2, ge=0, lt=1, description="significance / hybrid: samples below this normalised significance are left out"
    )


class RegulatedConfig(Strict):
    tau: float = Field(0.9, gt=0, le=1, description="regulated / hybrid: the student skips samples it gets right with p_y >= tau")


# --------------------------------------------------------------------------- loss terms


def self_regulated_mask(logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Samples that take part in the backward pass under SRL (Mishra & Sundaram): those the model gets
    wrong OR whose true-class confidence is below tau:  (argmax z_i != y_i) or (softmax(z_i)[y_i] < tau).
    Confidently right samples (right and p_y >= tau) are skipped."""
    check_labels(logits, labels)
    z = logits.detach()
    p_y = true_class(F.softmax(z, dim=1), labels)
    return (z.argmax(dim=1) != labels) | (p_y < tau)


def self_regulated_ce(
    logits: torch.Tensor, labels: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SRL cross-entropy: L = sum_{i in S} CE(z_i, y_i) / |S| with S = self_regulated_mask(z, y, tau).

    Skipped samples get exactly zero gradient; if S is empty, L = 0 (no NaN). Returns (loss, mask)."""
    mask = self_regulated_mask(logits, labels, tau)
    ce = F.cross_entropy(logits, labels, reduction="none")
    kept = torch.where(mask, ce, torch.zeros_like(ce))
    return kept.sum() / mask.sum().clamp_min(1), mask


class SignificanceCounter:
    """Per-sample SRL participation counts accumulated across epochs (Mishra & Sundaram).

    ``update(indices, mask)`` adds 1 to count[indices[i]] for every i with mask[i] (repeated indices in
    one call add up). ``normalised()`` returns the significance weights w = count / max(count), in
    [0, 1]: the sample that took part most often gets 1, samples never selected get 0; all zeros if
    nothing has been counted yet.
    """

    def __init__(self, n_samples: int):
        if n_samples <= 0:
            raise ValueError(f"n_samples must be > 0, got {n_samples}")
        self.counts = torch.zeros(n_samples, dtype=torch.float64)

    def update(self, indices: torch.Tensor, mask: torch.Tensor) -> None:
        idx = indices.reshape(-1).to(torch.long).cpu()
        self.counts.index_add_(0, idx, mask.reshape(-1).to(torch.float64).cpu())

    def normalised(self) -> torch.Tensor:
        top = self.counts.max()
        if top <= 0:
            return torch.zeros_like(self.counts, dtype=torch.float32)
        return (self.counts / top).to(torch.float32)


def significance_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    T: float,
    alpha: float,
) -> torch.Tensor:
    """Significance-weighted Hinton KD: L = 1/N sum_i w_i * l_i, with l_i the per-sample Hinton loss

        l_i = alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * KL(softmax(t_i / T) || softmax(s_i / T))

    and w_i in [0, 1] (e.g. ``SignificanceCounter.normalised()[batch_indices]``). Dividing by N (not by
    sum w) makes all-ones weights reproduce ``hinton_kd_loss`` exactly and a zero weight a zero gradient.
    """
    per = hinton_per_sample(student_logits, teacher_logits, labels, T, alpha)
    return (weights.detach().to(per.dtype).reshape(-1) * per).mean()


# --------------------------------------------------------------------------- methods


class SelfRegulatedKD(KDMethod):
    """The base of significance, regulated and hybrid: Hinton KD per sample, weighted by the sample's
    significance (``use_significance``, reads ``distill.significance``) and/or masked by the student's
    own SRL rule (``regulate``, reads ``distill.regulated``)."""

    tasks = CLS
    use_significance, regulate = False, False  # the subclasses set them

    def __init__(self, opts, teacher_residuals=None, **kw):
        super().__init__(opts, teacher_residuals, **kw)
        w = None
        if self.use_significance:
            if self.train_set is None or self.train_set.significance is None:
                raise ValueError(f"method {self.name!r} needs the teacher's SRL significance")
            w = torch.as_tensor(self.train_set.significance, dtype=torch.float32)
            w = torch.where(w >= self.significance.min_weight, w, torch.zeros_like(w))
        self.weights = w

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        labels = as_labels(y)
        w = torch.ones(len(labels))
        if self.use_significance and idx is not None:
            w = self.weights[idx.long()]
        if self.regulate:
            w = w * self_regulated_mask(label_out.detach(), labels, self.regulated.tau).float()
        self.count(w > 0)
        return (w * hinton_per_sample(label_out, y_teacher, labels, self.T, self.alpha)).mean()

    def describe(self):
        out = {**super().describe(), "alpha": self.alpha, "temperature": self.T}
        if self.weights is not None:
            out["significant_share"] = float((self.weights > 0).float().mean())
            out["min_weight"] = self.significance.min_weight
        if self.regulate:
            out["tau"] = self.regulated.tau
        return out


@register("significance")
class SignificanceKD(SelfRegulatedKD):
    """Hinton KD weighted by the sample's normalised significance from the teacher's SRL training;
    samples below ``distill.significance.min_weight`` are left out of the backward pass."""

    options = {**KDMethod.options, "significance": SignificanceConfig}
    use_significance, regulate = True, False
    significance: SignificanceConfig


@register("regulated")
class RegulatedKD(SelfRegulatedKD):
    """The student regulates itself: Hinton KD on the samples it gets wrong or right with p_y < tau only."""

    options = {**KDMethod.options, "regulated": RegulatedConfig}
    use_significance, regulate = False, True
    regulated: RegulatedConfig


@register("hybrid")
class HybridKD(SelfRegulatedKD):
    """Significance weights and the student's own regulation together."""

    options = {**KDMethod.options, "significance": SignificanceConfig, "regulated": RegulatedConfig}
    use_significance, regulate = True, True
    significance: SignificanceConfig
    regulated: RegulatedConfig
