"""Model families: backbones (registry ``BACKBONES``), the two-head student and head dropping."""

from models.mlp import BACKBONES, MLP, build_backbone, count_parameters
from models.student import SingleHead, TwoHeadStudent, drop_teacher_head

__all__ = [
    "BACKBONES",
    "MLP",
    "SingleHead",
    "TwoHeadStudent",
    "build_backbone",
    "count_parameters",
    "drop_teacher_head",
]
