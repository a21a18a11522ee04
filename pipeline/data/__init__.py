"""Data: the data sets, your own data, and the annotation error injected into the labels.

- ``table``: the data sets as one table of rows (name, task, input shape, outputs with their meaning
  and unit, builder); ``make_dataset``, ``task_of``, ``input_shape``, ``n_outputs`` and
  ``OUTPUT_MEANING`` read it, and ``DataConfig`` (the ``data`` config section) allows its names.
- ``options``: the keys of the ``data`` section (``DataOptions``, ``NoiseConfig``, ``PoseConfig``),
  what builders read. ``pipeline.config`` imports this package, never the reverse.
- ``splits``: ``Splits``, what every builder returns, and what builders share: noise injection
  (``inject_noise``, ``inject_label_noise``) and standardisation with the training statistics.
- one module per built-in family: ``sinusoid``, ``digits`` (digits_rotation, digits), ``pose``
  (``make_pose``, ``render``, ``load_faces``: the renderer, usable on its own).
- ``user`` (``data.name: source``) over ``sources/``: one module per source kind (csv, npz,
  image_folder, mpiigaze), ``load_source`` dispatching through the ``KINDS`` registry.

A builder is ``make(cfg: DataOptions, seed: int) -> Splits``. Noisy labels are what training sees;
the clean labels are kept for evaluation only, and the test split is always clean.
"""

from pipeline.data.options import DataOptions, NoiseConfig, PoseConfig
from pipeline.data.sinusoid import sinusoid_target
from pipeline.data.sources import (
    KINDS,
    CsvSource,
    DataError,
    ImageFolderSource,
    MPIIGazeSource,
    NpzSource,
    SourceConfig,
    SourceData,
    angular_error_deg,
    load_source,
    pitchyaw_from_vector,
    vector_from_pitchyaw,
)
from pipeline.data.splits import SPLITS, Splits, inject_label_noise, inject_noise
from pipeline.data.table import (
    BUILTIN,
    DATASETS,
    OUTPUT_MEANING,
    DataConfig,
    DataSet,
    Output,
    input_shape,
    make_dataset,
    n_outputs,
    task_of,
)

__all__ = ["BUILTIN", "DATASETS", "KINDS", "OUTPUT_MEANING", "SPLITS", "CsvSource", "DataConfig", "DataError",
           "DataOptions", "DataSet", "ImageFolderSource", "MPIIGazeSource", "NoiseConfig", "NpzSource", "Output",
           "PoseConfig", "SourceConfig", "SourceData", "Splits", "angular_error_deg", "inject_label_noise",
           "inject_noise", "input_shape", "load_source", "make_dataset", "n_outputs", "pitchyaw_from_vector",
           "sinusoid_target", "task_of", "vector_from_pitchyaw"]
