"""The keys of config section ``data``: which data set, its size, and the annotation error injected into it.

``DataOptions`` holds every key and is what a data set builder reads; ``DataConfig``
(``pipeline/data/table.py``) is the section itself, ``DataOptions`` with ``name`` narrowed to the data set
table's names: the table imports the builders, the builders import these options. ``data.source`` is one
of the source kinds' options. ``pipeline.config`` imports the data package, never the reverse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.data.sources import KINDS, SourceConfig
from pipeline.options import Strict


class NoiseConfig(Strict):
    """Annotation error injected into train and validation labels (test labels stay clean)."""

    sigma: float = Field(0.1, ge=0, description="std of Gaussian noise added to every noisy label")
    outlier_fraction: float = Field(
        0.2, ge=0, le=1, description="fraction p of train/val labels replaced by outliers"
    )
    outlier_low: float = Field(-5.0, description="outlier labels are drawn uniformly from [outlier_low, outlier_high]")
    outlier_high: float = Field(5.0, description="upper end of the outlier range")
    label_noise: float = Field(
        0.0, ge=0, lt=1, description="classification: fraction of train/val labels flipped to a wrong class"
    )
    label_noise_type: Literal["symmetric", "pair"] = Field(
        "symmetric", description="classification: flip to a uniformly drawn other class, or class c -> c+1 (mod m)"
    )

    @model_validator(mode="after")
    def _range(self) -> NoiseConfig:
        if self.outlier_high <= self.outlier_low:
            raise ValueError(
                f"outlier_high ({self.outlier_high}) must be greater than outlier_low ({self.outlier_low})"
            )
        return self


class PoseConfig(Strict):
    """data.name=pose: real photographs from scikit-image, rolled and scaled by known amounts."""

    source: Literal["faces", "photos", "both"] = Field(
        "faces", description="LFW face crops (grey), scikit-image's colour photographs, or both")
    channels: Literal[1, 3] = Field(1, description="1: grey; 3: RGB (grey sources replicated)")
    max_roll: float = Field(30.0, gt=0, le=90, description="roll angles (deg) drawn from [-max_roll, max_roll]")
    max_log2_scale: float = Field(0.5, gt=0, le=1, description="log2 scales drawn from [-x, x]")
    max_shift: float = Field(0.0, ge=0, le=8, description="shifts (px) drawn from [-x, x]; 0: no shift outputs")


class DataOptions(Strict):
    """Every key of the data section (``DataConfig`` narrows ``name`` to the data set table's names)."""

    name: str = Field("sinusoid", description="data set: a name in pipeline.data.DATASETS")
    pose: PoseConfig = Field(default_factory=PoseConfig)
    source: SourceConfig | None = Field(
        None, description=f"data.name=source: kind {' | '.join(KINDS)} and its keys (docs/DATA.md)"
    )
    n_train: int = Field(2000, ge=16, description="training samples")
    n_val: int = Field(500, ge=8, description="validation samples (noisy labels, used for early stopping)")
    n_test: int = Field(1000, ge=8, description="test samples (always clean labels)")
    x_min: float = Field(-3.141592653589793, description="inputs are drawn uniformly from [x_min, x_max]")
    x_max: float = Field(3.141592653589793, description="upper end of the input interval")
    amplitude: float = Field(1.0, gt=0, description="A in y = A*sin(f*x + phase)")
    frequency: float = Field(2.0, gt=0, description="f in y = A*sin(f*x + phase)")
    phase: float = Field(0.0, description="phase in y = A*sin(f*x + phase)")
    image_size: int = Field(16, ge=8, le=224, description="digits_rotation / digits: 8x8 digits are resized to this "
                            "size; pose: the rendered crop size (>= 32)")
    max_angle: float = Field(
        45.0, gt=0, le=180, description="digits_rotation: rotation angles (degrees) drawn from [-max_angle, max_angle]"
    )
    noise: NoiseConfig = Field(default_factory=NoiseConfig)

    @model_validator(mode="after")
    def _interval(self) -> DataOptions:
        if self.x_max <= self.x_min:
            raise ValueError(f"x_max ({self.x_max}) must be greater than x_min ({self.x_min})")
        if self.name == "source" and self.source is None:
            raise ValueError("data.name is 'source' but data.source is missing; e.g. "
                             "source: {kind: csv, path: data.csv, labels: [y]} (see docs/DATA.md)")
        if self.name != "source" and self.source is not None:
            raise ValueError(f"data.source is given but data.name is {self.name!r}; set data.name: source")
        if self.name == "pose" and self.image_size < 32:
            raise ValueError(f"data.image_size is {self.image_size}; the pose data set needs >= 32")
        if self.name == "source" and "noise" not in self.model_fields_set:
            # your own labels are used as they are unless you ask for injected annotation error
            self.noise = NoiseConfig(sigma=0.0, outlier_fraction=0.0)
        return self
