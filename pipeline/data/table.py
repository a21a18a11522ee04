"""The data sets as one table: a row per data set with its task, the shape of one input (from the
config where it depends on it), what each output means and in which unit, and the function that
builds it. ``data.name`` allows exactly these names (``DataConfig`` below); ``task_of``,
``input_shape``, ``n_outputs``, ``OUTPUT_MEANING`` and ``make_dataset`` only read the table.

Adding a data set: a module with a builder ``make(cfg: DataOptions, seed: int) -> Splits`` (the same
seed, the same arrays; annotation error from a stream of its own), one row in ``BUILTIN``, a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import Field

from pipeline.data.digits import N_CLASSES, make_digits, make_digits_rotation
from pipeline.data.options import DataOptions
from pipeline.data.pose import make_pose_dataset, pose_outputs
from pipeline.data.sinusoid import make_sinusoid
from pipeline.data.splits import Splits
from pipeline.data.user import make_source, source_outputs, source_shape


@dataclass(frozen=True)
class Output:
    """One output of a model on the data set."""

    name: str
    unit: str
    meaning: str


@dataclass(frozen=True)
class DataSet:
    name: str  # the value of data.name
    task: Literal["regression", "classification"]
    input_shape: Callable[[DataOptions], tuple[int, ...]]  # one input, without the batch axis (NCHW for images)
    outputs: Callable[[DataOptions], tuple[Output, ...]]  # the model's outputs in order (classification: logits)
    summary: str  # what the outputs mean, one line: the report and every exported file's metadata
    build: Callable[[DataOptions, int], Splits]  # (data config, seed) -> splits; the same seed, the same arrays
    keys: tuple[str, ...] = ()  # the data section's keys its builder reads, beyond name and noise (pipeline config)


def _image(cfg: DataOptions) -> tuple[int, ...]:
    return (1, cfg.image_size, cfg.image_size)


_POSE_MEANING = {"roll": "in-plane rotation of the crop, counter-clockwise", "log2_scale": "log2 of the crop's "
                 "magnification", "shift_x": "shift of the crop to the right", "shift_y": "shift of the crop down"}

BUILTIN: tuple[DataSet, ...] = (
    DataSet(
        name="sinusoid", task="regression",
        input_shape=lambda cfg: (1,),
        outputs=lambda cfg: (Output("y", "label units", "A*sin(f*x + phase) of the input x"),),
        summary="y = A*sin(f*x + phase), label units",
        build=make_sinusoid,
        keys=("n_train", "n_val", "n_test", "x_min", "x_max", "amplitude", "frequency", "phase"),
    ),
    DataSet(
        name="digits_rotation", task="regression",
        input_shape=_image,
        outputs=lambda cfg: (Output("angle", "deg", "in-plane rotation of the digit, counter-clockwise"),),
        summary="in-plane rotation angle of the digit, degrees (counter-clockwise)",
        build=make_digits_rotation,
        keys=("n_train", "n_val", "n_test", "image_size", "max_angle"),
    ),
    DataSet(
        name="digits", task="classification",
        input_shape=_image,
        outputs=lambda cfg: tuple(Output(f"logit_{k}", "logit", f"score of digit {k} (softmax for probabilities)")
                                  for k in range(N_CLASSES)),
        summary="logits of the 10 digit classes 0..9 (softmax for probabilities)",
        build=make_digits,
        keys=("image_size",),  # every image once, a fixed 60/15/25 % split
    ),
    DataSet(
        name="pose", task="regression",
        input_shape=lambda cfg: (cfg.pose.channels, cfg.image_size, cfg.image_size),
        outputs=lambda cfg: tuple(Output(name, unit, _POSE_MEANING[name])
                                  for name, unit in pose_outputs(cfg.pose.max_shift)),
        summary="in-plane roll of the crop (degrees, counter-clockwise) and its log2 scale (then shift x, y in px "
                "when data.pose.max_shift > 0)",
        build=make_pose_dataset,
        keys=("n_train", "n_val", "n_test", "image_size", "pose"),
    ),
)

# data.name=source: your own data; its shape and outputs are read from the files (data.source)
SOURCE = DataSet(
    name="source", task="regression",
    input_shape=source_shape,
    outputs=lambda cfg: tuple(Output(name, unit, f"label column {name}") for name, unit in source_outputs(cfg)),
    summary="the label columns of your data, in their own units",
    build=make_source,
    keys=("source",),
)

DATASETS: dict[str, DataSet] = {row.name: row for row in (*BUILTIN, SOURCE)}


class DataConfig(DataOptions):
    """The ``data`` config section: its keys (``DataOptions``), ``name`` one of the table's data sets."""

    name: Literal[tuple(DATASETS)] = Field(  # type: ignore[valid-type]
        "sinusoid",
        description="data set (registry: pipeline.data.DATASETS); digits is a classification task; "
        "pose: roll and scale of real photographs (several outputs; noise in units of each output's std); "
        "source: your own data, described under data.source (docs/DATA.md)",
    )


# what the outputs mean, one line per data set (the report and the exported files' metadata)
OUTPUT_MEANING: dict[str, str] = {name: row.summary for name, row in DATASETS.items()}


def task_of(cfg: DataConfig) -> str:
    return DATASETS[cfg.name].task


def input_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one input (without the batch axis), known before any data is made."""
    return DATASETS[cfg.name].input_shape(cfg)


def n_outputs(cfg: DataConfig) -> int:
    """Outputs of a model on this data, known before training (m logits, or k regression targets)."""
    return len(DATASETS[cfg.name].outputs(cfg))


def make_dataset(cfg: DataConfig, seed: int) -> Splits:
    return DATASETS[cfg.name].build(cfg, seed)


def applicable(data: dict) -> dict:
    """The data section (as a dict) with only the keys that apply to its data set: ``name``, ``noise``
    and the keys its builder reads (``pipeline config`` prints this)."""
    keep = {"name", "noise", *DATASETS[data["name"]].keys}
    return {k: v for k, v in data.items() if k in keep}
