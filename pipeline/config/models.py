"""Config sections ``teacher`` and ``student``: backbones, widths, losses, given teachers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.methods.self_regulation import SRLConfig
from pipeline.options import Strict, TrainConfig

BackboneName = Literal["mlp", "cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
                       "mobilenet_v3_large", "efficientnet_b0"]


class TeacherConfig(Strict):
    backbone: BackboneName = Field("mlp", description="backbone family (registry: models.BACKBONES)")
    width_mult: float = Field(1.0, gt=0, le=4, description="width multiplier of resnet / mobilenet / efficientnet")
    hidden: list[int] = Field([512, 512, 512], description="widths of the fully connected layers (after the pooled "
                              "features for resnet / mobilenet / efficientnet; may be empty for those)")
    channels: list[int] = Field([32, 64, 128], description="conv channels per block (cnn backbone only)")
    activation: Literal["relu", "gelu", "tanh", "silu"] = Field("relu", description="hidden activation")
    loss: Literal["mse", "l1", "huber"] = Field(
        "l1", description="regression loss on the (noisy) labels (classification always uses cross-entropy); l1 "
        "and huber are robust to outlier labels, and early stopping uses the same loss on the validation split. "
        "l1 by measurement (docs/BENCHMARKS.md 'Teacher loss'): better students than mse on every setting tried"
    )
    huber_delta: float | None = Field(
        None, gt=0, description="loss=huber: where the loss turns linear, in standardised label units; null: "
        "1.345 x the MAD scale (1.4826 x median absolute deviation) of each standardised training label"
    )
    srl: SRLConfig = Field(default_factory=SRLConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    onnx: str | None = Field(
        None, description="a teacher you already have, as ONNX (any framework): its outputs are the soft targets, "
        "no teacher is trained"
    )
    onnx_input: Literal["raw", "normalized"] = Field(
        "raw", description="teacher.onnx expects raw inputs (as in your data) or pocketkd's standardised ones"
    )
    checkpoint: str | None = Field(
        None, description="a PyTorch state_dict of the architecture above (backbone, hidden, channels), loaded "
        "with weights_only=True; no teacher is trained"
    )

    @model_validator(mode="after")
    def _widths(self) -> TeacherConfig:
        if any(w < 1 for w in self.hidden + self.channels):
            raise ValueError(f"hidden widths and channels must be >= 1, got {self.hidden} / {self.channels}")
        if self.backbone in ("mlp", "cnn") and not self.hidden:
            raise ValueError(f"hidden must hold at least one width for the {self.backbone} backbone")
        if self.onnx and self.checkpoint:
            raise ValueError("give either teacher.onnx or teacher.checkpoint, not both")
        for key in ("onnx", "checkpoint"):
            path = getattr(self, key)
            if path and not Path(path).expanduser().is_file():
                raise ValueError(f"teacher.{key} file {path} does not exist")
        return self


class StudentConfig(Strict):
    backbone: BackboneName = Field("mlp", description="backbone family of the shared student backbone")
    width_mult: float = Field(1.0, gt=0, le=4, description="width multiplier of resnet / mobilenet / efficientnet")
    hidden: list[int] = Field([128, 128], description="widths of the shared fully connected layers (may be empty for "
                              "resnet / mobilenet / efficientnet: their pooled features feed the heads)")
    channels: list[int] = Field([8, 16], description="conv channels per block (cnn backbone only)")
    activation: Literal["relu", "gelu", "tanh", "silu"] = Field("relu", description="hidden activation")
    keep_head: Literal["label", "teacher"] = Field(
        "label", description="head kept by drop_teacher_head() for deployment"
    )
    max_param_ratio: float = Field(
        0.05, gt=0, le=1, description="the student may have at most this fraction of the teacher's parameters"
    )

    @model_validator(mode="after")
    def _widths(self) -> StudentConfig:
        if any(w < 1 for w in self.hidden + self.channels):
            raise ValueError(f"hidden widths and channels must be >= 1, got {self.hidden} / {self.channels}")
        if self.backbone in ("mlp", "cnn") and not self.hidden:
            raise ValueError(f"hidden must hold at least one width for the {self.backbone} backbone")
        return self
