"""pocketkd's model files: networks built from the ``teacher`` / ``student`` config sections, and the
checkpoints (``teacher.pt``, ``student_mt.pt``, ``student.pt``) that record what to rebuild."""

from __future__ import annotations

from pathlib import Path

import torch

from models import SingleHeadNet, TwoHeadStudent, build_backbone, drop_teacher_head
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.io import atomic_write

Shape = tuple[int, ...]


def _backbone(section, input_shape: Shape):
    return build_backbone(section.backbone, input_shape, section.hidden, section.activation, section.channels,
                          width_mult=section.width_mult)


def build_teacher(cfg: Config, input_shape: Shape, out_features: int) -> SingleHeadNet:
    return SingleHeadNet(_backbone(cfg.teacher, input_shape), out_features)


def build_student(cfg: Config, input_shape: Shape, out_features: int, label_features: int | None = None
                  ) -> TwoHeadStudent:
    return TwoHeadStudent(_backbone(cfg.student, input_shape), out_features, label_features)


def build_deployed(cfg: Config, input_shape: Shape, out_features: int, label_features: int | None = None
                   ) -> SingleHeadNet:
    return drop_teacher_head(build_student(cfg, input_shape, out_features, label_features), cfg.student.keep_head)


def save_model(path: Path, model: torch.nn.Module, kind: str, input_shape: Shape, out_features: int,
               label_features: int | None = None) -> None:
    payload = {"kind": kind, "input_shape": list(input_shape), "out_features": out_features,
               "label_features": label_features, "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, cfg: Config) -> torch.nn.Module:
    """A model file written by ``save_model``; a missing, truncated or foreign file is a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        kind, shape, out = payload["kind"], tuple(payload["input_shape"]), payload["out_features"]
        if kind == "teacher":
            model = build_teacher(cfg, shape, out)
        elif kind == "student":
            model = build_student(cfg, shape, out, payload.get("label_features"))
        else:  # deployed: one head, out_features wide
            model = build_deployed(cfg, shape, out)
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"model file {path} is damaged or does not match the config: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return model.eval()
