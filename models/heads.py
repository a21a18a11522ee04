"""Heads on a backbone: ``SingleHeadNet`` (the teacher, and the deployed student), the multi-task
``TwoHeadStudent`` (label head + teacher head), and ``drop_teacher_head`` from one to the other."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

HEADS = ("label", "teacher")


class SingleHeadNet(nn.Module):
    """A backbone with one linear output layer, one output tensor: the teacher (regression or
    classification), and what a student becomes when deployed."""

    def __init__(self, backbone: nn.Module, out_features: int = 1):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TwoHeadStudent(nn.Module):
    """Shared backbone; ``label_head`` fits the (noisy) labels, ``teacher_head`` the teacher's outputs.

    ``forward`` returns both heads as a tuple (label, teacher), each (N, out_features); the label head
    may be wider (``label_features``, e.g. m classes + 1 abstain output).
    """

    def __init__(self, backbone: nn.Module, out_features: int = 1, label_features: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.label_head = nn.Linear(backbone.out_features, label_features or out_features)
        self.teacher_head = nn.Linear(backbone.out_features, out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.backbone(x)
        return self.label_head(z), self.teacher_head(z)




def drop_teacher_head(student: TwoHeadStudent, keep: Literal["label", "teacher"] = "label") -> SingleHeadNet:
    """A plain single-output module with a copy of the backbone and the kept head's weights."""
    if keep not in HEADS:
        raise ValueError(f"keep must be one of {HEADS}, got {keep!r}")
    head = student.label_head if keep == "label" else student.teacher_head
    out = SingleHeadNet(copy.deepcopy(student.backbone), head.out_features)
    out.head.load_state_dict(head.state_dict())
    return out.eval()
