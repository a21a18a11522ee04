"""User data sources: a CSV table, NumPy arrays (.npz), a folder of images, or MPIIGaze.

One module per kind (``csv``, ``npz``, ``image_folder``, ``mpiigaze``), each holding its options
class and its loader, registered in ``KINDS`` below: ``SourceConfig`` (the ``data.source`` section)
and ``load_source`` are built from that table. ``common`` holds what the kinds share.

``load_source(cfg, seed, base_dir)`` reads one source, validates it and returns train/val/test
splits as float32 arrays (``SourceData``), not yet standardised. Every problem a user can fix
raises ``DataError`` (a ``UserError``: one line, exit code 2) whose message names the file, the
row and column where that applies, and what is allowed. docs/DATA.md is the user's guide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Union

import numpy as np
from pydantic import BaseModel, Field

from pipeline.data.sources.common import SPLIT_NAMES, DataError, SourceData
from pipeline.data.sources.csv import CsvSource, load_csv
from pipeline.data.sources.gaze import angular_error_deg, pitchyaw_from_vector, vector_from_pitchyaw
from pipeline.data.sources.image_folder import ImageFolderSource, load_image_folder
from pipeline.data.sources.mpiigaze import MPIIGazeSource, load_mpiigaze
from pipeline.data.sources.npz import NpzSource, load_npz

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """One source kind: its options (a strict pydantic model whose ``kind`` field is a Literal of the
    name) and its loader ``load(options, seed, base_dir) -> SourceData``."""

    options: type[BaseModel]
    load: Callable[[Any, int, Path | None], SourceData]


# Adding a kind: one module (options class + loader), one row here, a section in docs/DATA.md.
KINDS: dict[str, Kind] = {
    "csv": Kind(CsvSource, load_csv),
    "npz": Kind(NpzSource, load_npz),
    "image_folder": Kind(ImageFolderSource, load_image_folder),
    "mpiigaze": Kind(MPIIGazeSource, load_mpiigaze),
}

# the data.source section: one of the kinds' options, chosen by its ``kind`` key
SourceConfig = Annotated[Union[tuple(k.options for k in KINDS.values())], Field(discriminator="kind")]  # noqa: UP007

__all__ = ["KINDS", "SPLIT_NAMES", "CsvSource", "DataError", "ImageFolderSource", "Kind", "MPIIGazeSource",
           "NpzSource", "SourceConfig", "SourceData", "angular_error_deg", "load_source", "pitchyaw_from_vector",
           "vector_from_pitchyaw"]


def load_source(cfg: SourceConfig, seed: int, base_dir: Path | None = None) -> SourceData:
    """Read, validate and split one source. Relative paths resolve against ``base_dir`` (else the cwd)."""
    base = Path(base_dir) if base_dir is not None else None
    data = KINDS[cfg.kind].load(cfg, seed, base)
    for s in SPLIT_NAMES:
        if len(data.x[s]) == 0:
            raise DataError(f"{data.description}: the {s} split is empty; every split needs >= 1 sample")
        assert data.x[s].dtype == np.float32 and data.y[s].dtype == np.float32
        assert len(data.x[s]) == len(data.y[s]) and data.y[s].ndim == 2
    _check_variance(data)
    return data


def _check_variance(data: SourceData) -> None:
    """A label that never varies cannot be learned (error); a feature that never varies carries no
    information (warning, the run goes on: standardisation leaves it at 0)."""
    y = np.concatenate([data.y[s] for s in SPLIT_NAMES]).astype(np.float64)
    for j, name in enumerate(data.output_names):
        if np.all(y[:, j] == y[0, j]):
            raise DataError(f"{data.description.split(':')[0]}: label '{name}' has the same value ({y[0, j]:g}) in "
                            f"all {len(y)} samples (zero variance); a constant label cannot be learned, labels must vary")
    x = data.x["train"]
    if x.ndim == 2 and len(x) > 1:
        const = [data.feature_names[j] if j < len(data.feature_names) else f"x{j}"
                 for j in np.flatnonzero(np.all(x == x[:1], axis=0))]
        if const:
            log.warning("warning: %s: feature%s %s %s the same value in every training sample (zero variance); "
                        "%s no information", data.description.split(":")[0], "s" * (len(const) > 1),
                        ", ".join(const[:5]) + (f" and {len(const) - 5} more" if len(const) > 5 else ""),
                        "have" if len(const) > 1 else "has", "they carry" if len(const) > 1 else "it carries")
