"""Knowledge adjustment (``ka``) and the abstaining gambler student (``ka_gambler``), classification.

Xu, Pu, Zhao, "Knowledge distillation with a precise teacher and prediction with abstention": where
the teacher's argmax is not the label, its probability of the label and its maximum are swapped
(``probability_shift``), and the student learns from that adjusted teacher. The gambler student has
an extra "abstain" output trained with the deep gamblers loss of Liu et al., "Deep Gamblers: Learning
to Abstain with Portfolio Theory" (NeurIPS 2019); how it is scored: ``pipeline.methods.abstention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.methods.base import CLS, as_labels, check_labels, register, true_class
from pipeline.methods.baselines import KDMethod
from pipeline.options import Strict


class KAConfig(Strict):
    alpha: float = Field(
        0.0, ge=0, le=1,
        description="ka: weight of cross-entropy on the labels beside the adjusted-teacher KD; 0 = the paper's rule "
        "(the student learns from the adjusted teacher alone, which already ranks the label first)",
    )
    gambler_alpha: float = Field(
        0.5, ge=0, le=1,
        description="ka_gambler: weight of the gambler loss (which trains the abstain output) beside the "
        "adjusted-teacher KD: alpha*gambler + (1-alpha)*KD",
    )
    payoff: float = Field(
        0.0, ge=0, description="ka_gambler: gambler payoff o in (1, m); 0 = automatic, (1 + m) / 2"
    )
    min_label_prob: float = Field(
        0.0, ge=0, lt=1,
        description="ka, ka_gambler: shift only where the teacher's (tempered) probability of the label is at least "
        "this; below it the label is more likely wrong than the teacher and the teacher is kept (0 = always shift, "
        "as in the paper)",
    )
    pretrain_epochs: int = Field(
        0, ge=0,
        description="ka_gambler: first epochs trained without the abstain option (cross-entropy over the m classes), "
        "as the deep gamblers reference code does, so the abstain output does not take over early",
    )


# --------------------------------------------------------------------------- loss terms


def probability_shift(p_teacher: torch.Tensor, labels: torch.Tensor, min_label_prob: float = 0.0) -> torch.Tensor:
    """Knowledge adjustment by probability shift (Xu, Pu, Zhao, "KD with a precise teacher and prediction
    with abstention"). Where the teacher's argmax k != y, swap p_t[y] with the teacher's MAXIMUM p_t[k]:

        p'[y] = p_t[k],   p'[k] = p_t[y],   p'[j] = p_t[j] for every other j;   unchanged if argmax = y.

    The result keeps the teacher's values (so it still sums to 1) but puts the top probability on y.
    Note: swapping the top-1 with the top-2 entry (as one public implementation does) is wrong whenever
    the true class is not the runner-up; this function always swaps with the true class.
    ``min_label_prob`` > 0 (an extension for noisy labels): rows where p_t[y] < min_label_prob are left
    unchanged, since there the label, not the teacher, is the likelier one to be wrong.
    """
    check_labels(p_teacher, labels)
    p = p_teacher.detach().clone()
    top = p.argmax(dim=1)
    p_label = p.gather(1, labels.reshape(-1, 1)).squeeze(1)
    rows = torch.nonzero((top != labels) & (p_label >= min_label_prob)).squeeze(1)
    y, k = labels[rows], top[rows]
    p_y, p_k = p[rows, y].clone(), p[rows, k].clone()
    p[rows, y] = p_k
    p[rows, k] = p_y
    return p


def gambler_loss(logits_m_plus_1: torch.Tensor, labels: torch.Tensor, o: float) -> torch.Tensor:
    """Deep gamblers loss (Liu et al. 2019; used for the abstaining student of Xu, Pu, Zhao):

        L = -1/N sum_i log(p_i[y_i] + p_i[m] / o),   p = softmax over the m + 1 outputs,

    output m (the last column) being the abstention ("reservation") option and 1 < o < m the payoff.
    Computed stably as logsumexp(z_y, z_m - log o) - logsumexp(z).
    """
    check_labels(logits_m_plus_1, labels)
    m = logits_m_plus_1.shape[1] - 1
    if not 1 < o < m:
        raise ValueError(f"payoff o must be in (1, m) = (1, {m}), got {o}")
    z = logits_m_plus_1
    z_y = true_class(z, labels)
    z_abstain = z[:, -1] - math.log(o)
    log_num = torch.logsumexp(torch.stack([z_y, z_abstain], dim=1), dim=1)
    return (torch.logsumexp(z, dim=1) - log_num).mean()


# --------------------------------------------------------------------------- methods


@register("ka")
class KnowledgeAdjustment(KDMethod):
    """Hinton KD from an adjusted teacher: where the teacher's argmax is not the label, its probability
    of the label and its maximum probability are swapped (``probability_shift``).
    As in the paper ("instead of learning a combination of both teachers and ground truth, we apply
    knowledge adjustment"), the student learns from the adjusted teacher alone by default;
    ``distill.ka.alpha`` > 0 adds alpha * CE(labels) as in Hinton KD. Reads the temperature from
    ``distill.kd``, everything else from ``distill.ka``."""

    tasks = CLS
    options = {**KDMethod.options, "ka": KAConfig}
    ka: KAConfig

    @property
    def alpha(self) -> float:
        return self.ka.alpha

    def _shifted_kd(self, student_logits, y_teacher, labels):
        p_t = probability_shift(torch.softmax(y_teacher / self.T, dim=1), labels, self.ka.min_label_prob)
        log_q = F.log_softmax(student_logits / self.T, dim=1)
        return (p_t * (p_t.clamp_min(1e-12).log() - log_q)).sum(dim=1).mean() * self.T ** 2

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        labels = as_labels(y)
        a = self.alpha
        return a * F.cross_entropy(label_out, labels) + (1 - a) * self._shifted_kd(label_out, y_teacher, labels)

    def describe(self):
        return {**super().describe(), "alpha": self.alpha, "temperature": self.T}


@register("ka_gambler")
class KnowledgeAdjustmentGambler(KnowledgeAdjustment):
    """m + 1 outputs, the last one 'abstain': alpha * gambler loss -log(p_y + p_abstain / o) +
    (1 - alpha) * adjusted KD on the m real classes, alpha = ``distill.ka.gambler_alpha`` (not ka.alpha:
    the hard term here is the gambler loss, which trains the abstain output). Selective prediction
    abstains on the largest p_abstain."""

    @classmethod
    def n_extra(cls, d_out: int) -> int:
        return 1  # the abstain output

    @property
    def alpha(self) -> float:
        return self.ka.gambler_alpha

    def payoff(self, m: int) -> float:
        o = self.ka.payoff or (1 + m) / 2
        if not 1 < o < m:
            raise ValueError(f"distill.ka.payoff must be in (1, {m}) for {m} classes, got {o}")
        return o

    _epochs_done = 0

    def epoch_end(self) -> None:
        super().epoch_end()
        self._epochs_done += 1

    def loss(self, label_out, teacher_out, y, y_teacher, idx=None):
        labels = as_labels(y)
        m = label_out.shape[1] - 1
        if torch.is_grad_enabled() and self._epochs_done < self.ka.pretrain_epochs:
            # warm-up: plain cross-entropy over the m classes (validation still scores the gambler loss,
            # so early stopping compares like with like)
            hard = F.cross_entropy(label_out[:, :m], labels)
        else:
            hard = gambler_loss(label_out, labels, self.payoff(m))
        return self.alpha * hard + (1 - self.alpha) * self._shifted_kd(label_out[:, :m], y_teacher, labels)

    def describe(self):
        m = self.train_set.teacher.shape[1] if self.train_set is not None else None
        return {**super().describe(), "alpha": self.alpha, "payoff": self.payoff(m) if m else self.ka.payoff,
                "abstain_output": True}
