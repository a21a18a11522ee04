"""Loss terms for the classification distillation methods (issue 5), plus two regression analogues.

Pure PyTorch, no training loop and no registry entries yet: each function maps tensors to tensors.
Conventions: logits and probabilities are (N, m) float tensors, labels are (N,) int64 class indices,
masks are (N,) bool. Teacher outputs are treated as constants (detached) wherever they enter a loss.

Methods and papers:
  * Hinton KD ............ Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015).
  * Label revision (LR) and data selection (DS) .... Lan, Cheung, Xu, Liu, Hu, Li, Chen, "Improve
    Knowledge Distillation via Label Revision and Data Selection" (arXiv 2404.03693; IEEE TCDS 2025).
  * Knowledge adjustment (probability shift) and deep-gambler abstention .... Xu, Pu, Zhao, "Knowledge
    distillation with a precise teacher and prediction with abstention"; the gambler loss itself is from
    Liu et al., "Deep Gamblers: Learning to Abstain with Portfolio Theory" (NeurIPS 2019).
  * Self-regulated learning (SRL) and significance-weighted KD .... Mishra, Sundaram, "Self Regulated
    Learning Mechanism for Data Efficient Knowledge Distillation".
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from pipeline.methods import residual_norm

_TINY = 1e-12


def _check_labels(x: torch.Tensor, labels: torch.Tensor) -> None:
    if x.dim() != 2 or labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"expected (N, m) scores and (N,) labels, got {tuple(x.shape)} and {tuple(labels.shape)}")


def _true_class(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p[i, labels[i]] as an (N,) tensor."""
    return p.gather(1, labels.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------- Hinton KD


def _hinton_per_sample(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, T: float, alpha: float
) -> torch.Tensor:
    """Per-sample alpha * CE(s_i, y_i) + (1 - alpha) * T^2 * KL(softmax(t_i/T) || softmax(s_i/T))."""
    _check_labels(student_logits, labels)
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
    return _hinton_per_sample(student_logits, teacher_logits, labels, T, alpha).mean()


# --------------------------------------------------------------------------- label revision + data selection


def soft_target_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets, mean over the batch: L = -1/N sum_i sum_j t_ij log softmax(s_i)_j."""
    return -(targets.detach() * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


def revise_labels(p_teacher: torch.Tensor, labels: torch.Tensor, eta: float) -> torch.Tensor:
    """Label revision (Lan et al., "Improve KD via Label Revision and Data Selection"), per sample:

        p = beta * p_t + (1 - beta) * onehot(y),   beta = eta / (p_t_max - p_t_y + 1),   0 < eta < 1.

    Applied to every sample (for a teacher that is already right, p_t_max = p_t_y and beta = eta).
    ``p_teacher`` are the teacher's probabilities (at whatever temperature the caller distils at).

    Why argmax(p) = y always: with d = p_t_max - p_t_y >= 0 and any j != y,
    p_y - p_j = beta * (p_t_y - p_t_j) + 1 - beta >= -beta * d + 1 - beta = 1 - beta * (1 + d) = 1 - eta > 0.
    """
    _check_labels(p_teacher, labels)
    if not 0 < eta < 1:
        raise ValueError(f"eta must be in (0, 1), got {eta}")
    p_t = p_teacher.detach()
    gap = p_t.max(dim=1).values - _true_class(p_t, labels)
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
    _check_labels(p_teacher, labels)
    return _true_class(p_teacher.detach(), labels).clamp_min(_TINY).log()


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
    _check_labels(student_logits, labels)
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    revised = revise_labels(p_teacher, labels, eta)
    ce = F.cross_entropy(student_logits, labels, reduction="none")
    soft = -(revised * F.log_softmax(student_logits / T, dim=1)).sum(dim=1)
    distil = alpha * ce + (1 - alpha) * T**2 * soft
    return torch.where(mask.to(torch.bool), distil, ce).mean()


# --------------------------------------------------------------------------- knowledge adjustment + abstention


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
    _check_labels(p_teacher, labels)
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
    _check_labels(logits_m_plus_1, labels)
    m = logits_m_plus_1.shape[1] - 1
    if not 1 < o < m:
        raise ValueError(f"payoff o must be in (1, m) = (1, {m}), got {o}")
    z = logits_m_plus_1
    z_y = _true_class(z, labels)
    z_abstain = z[:, -1] - math.log(o)
    log_num = torch.logsumexp(torch.stack([z_y, z_abstain], dim=1), dim=1)
    return (torch.logsumexp(z, dim=1) - log_num).mean()


def abstain_scores(logits_m_plus_1: torch.Tensor) -> torch.Tensor:
    """Gambler abstention score p[m]: softmax probability of the last (abstain) output; higher = abstain first."""
    return F.softmax(logits_m_plus_1, dim=1)[:, -1]


def gambler_predictions(logits_m_plus_1: torch.Tensor) -> torch.Tensor:
    """Predicted class of a gambler model: argmax over the m real classes (the abstain output excluded)."""
    return logits_m_plus_1[:, :-1].argmax(dim=1)


def softmax_confidence_abstention(logits: torch.Tensor) -> torch.Tensor:
    """Baseline abstention score 1 - max_j softmax(z)_j over the m real classes of an (N, m) classifier.

    For a gambler model pass ``logits[:, :-1]`` (softmax renormalised over the real classes)."""
    return 1 - F.softmax(logits, dim=1).max(dim=1).values


def selective_risk(
    pred: torch.Tensor,
    labels: torch.Tensor,
    abstain_score: torch.Tensor,
    coverages: Sequence[float] = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5),
) -> dict[float, float]:
    """Error rate on the kept samples at each coverage c: keep the n = max(1, round(c * N)) samples with
    the LOWEST abstention score (ties: lower index first) and return mean(pred != y) over them.

    ``pred`` are predicted class indices (N,). At c = 1 this is the plain error rate. c must be in (0, 1].
    """
    from pipeline.metrics import kept_by_coverage

    wrong = (pred.reshape(-1) != labels.reshape(-1)).to(torch.float64)
    return {c: float(wrong[torch.as_tensor(kept)].mean())
            for c, kept in kept_by_coverage(abstain_score.detach().reshape(-1).cpu().numpy(), coverages)}


# --------------------------------------------------------------------------- self-regulated learning


def self_regulated_mask(logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Samples that take part in the backward pass under SRL (Mishra & Sundaram): those the model gets
    wrong OR whose true-class confidence is below tau:  (argmax z_i != y_i) or (softmax(z_i)[y_i] < tau).
    Confidently right samples (right and p_y >= tau) are skipped."""
    _check_labels(logits, labels)
    z = logits.detach()
    p_y = _true_class(F.softmax(z, dim=1), labels)
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
    per = _hinton_per_sample(student_logits, teacher_logits, labels, T, alpha)
    return (weights.detach().to(per.dtype).reshape(-1) * per).mean()


# --------------------------------------------------------------------------- regression analogues


def revise_regression_targets(y: torch.Tensor, y_teacher: torch.Tensor, scale: float) -> torch.Tensor:
    """Regression analogue of label revision: a target between y_teacher and y that moves to y as the
    teacher's residual grows,

        w_i = exp(-|r_i| / scale),   target_i = w_i * y_teacher_i + (1 - w_i) * y_i,   r_i = y_teacher_i - y_i,

    |r_i| being the Euclidean norm over outputs (as ``methods.residual_norm``), scale > 0. A teacher that
    agrees with the label gives target = y_teacher = y; a far-off teacher is ignored (target -> y).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    w = torch.exp(-residual_norm(y, y_teacher) / scale).reshape(-1, *([1] * (y.dim() - 1)))
    return w * y_teacher + (1 - w) * y


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood of a mean / log-variance student, constant dropped:

        L = mean over all elements of 0.5 * (log_var + (y - mean)^2 * exp(-log_var)).

    Equals torch.nn.GaussianNLLLoss(full=False, reduction="mean") with var = exp(log_var) (for var above
    its eps clamp, 1e-6); parametrising by log-variance keeps the variance positive without a clamp.
    """
    return (0.5 * (log_var + (y - mean) ** 2 * torch.exp(-log_var))).mean()
