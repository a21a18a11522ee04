"""Selective prediction with a classifier that may abstain, on torch tensors: the abstention scores of a
gambler student (m + 1 outputs, the last = abstain) and of a plain one (softmax confidence), and the
selective risk at given coverages. The pipeline's metrics on NumPy arrays (``pipeline.metrics``) use the
same sample-keeping rule, ``kept_by_coverage``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from pipeline.metrics import kept_by_coverage


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
    wrong = (pred.reshape(-1) != labels.reshape(-1)).to(torch.float64)
    return {c: float(wrong[torch.as_tensor(kept)].mean())
            for c, kept in kept_by_coverage(abstain_score.detach().reshape(-1).cpu().numpy(), coverages)}
