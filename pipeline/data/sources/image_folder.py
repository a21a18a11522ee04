"""``kind: image_folder``: image files listed in a CSV with their labels, decoded by Pillow and resized."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from pipeline.data.sources.common import (
    DataError,
    RandomSplit,
    SourceData,
    duplicates,
    fraction_field,
    is_inside,
    need_dir,
    one_line,
    random_split,
    real_path,
    resolve_path,
    split_sizes,
)
from pipeline.data.sources.csv_reader import numeric_block, read_table


class ImageFolderSource(RandomSplit):
    """Image files listed in a CSV with their labels."""

    kind: Literal["image_folder"] = Field(description="source type")
    root: str = Field(description="directory holding the images")
    labels_csv: str = Field(description="CSV with a file column and label columns (relative to root unless absolute)")
    file_column: str = Field("file", description="CSV column with the image path (relative to root)")
    labels: list[str] = Field(min_length=1, description="label (target) columns, numeric")
    color: Literal["grayscale", "rgb"] = Field("grayscale", description="1 or 3 input channels")
    size: int = Field(32, ge=4, le=512, description="images are resized to size x size")
    allow_outside_root: bool = Field(
        False, description="let labels_csv name images outside root (absolute paths, '..', symlinks leading out)"
    )
    val_fraction: float = fraction_field(0.15, "validation")
    test_fraction: float = fraction_field(0.2, "test")

    @model_validator(mode="after")
    def _columns(self) -> ImageFolderSource:
        if dup := duplicates(self.labels):
            raise ValueError(f"labels lists {dup} more than once")
        if self.file_column in self.labels:
            raise ValueError(f"file_column '{self.file_column}' cannot also be a label")
        return self


def load_image_folder(cfg: ImageFolderSource, seed: int, base: Path | None) -> SourceData:
    root = resolve_path(cfg.root, base)
    need_dir(root, f"image_folder root {cfg.root}")
    csv_path = resolve_path(cfg.labels_csv, root)
    what = f"labels_csv {cfg.labels_csv}"
    table = read_table(csv_path, what)
    files = table.column(cfg.file_column, "file")
    y = numeric_block(table, cfg.labels, "label")
    n = len(files)
    if n == 0:
        raise DataError(f"{what}: no data rows; list one image per row")
    paths: list[Path] = []
    missing: list[int] = []
    real_root = real_path(root, f"image_folder root {cfg.root}")
    for i, f in enumerate(files):
        if not f:
            raise DataError(f"{what}: {table.where(i)}, column '{cfg.file_column}': empty cell; give an image path")
        paths.append(resolve_path(f, root))
        if not cfg.allow_outside_root and not is_inside(real_path(paths[-1], f"{what}: {table.where(i)}"), real_root):
            raise DataError(
                f"{what}: {table.where(i)}, column '{cfg.file_column}': image '{f}' is outside root {cfg.root}; "
                "image paths must stay inside root (set data.source.allow_outside_root: true to allow it)"
            )
        if not paths[-1].is_file():
            missing.append(i)
    if missing:
        i = missing[0]
        raise DataError(
            f"{what}: {table.where(i)}, column '{cfg.file_column}': image '{files[i]}' not found (looked for "
            f"{paths[i]}; {len(missing)} of {n} listed images are missing); paths are relative to root {cfg.root}"
        )
    mode = "L" if cfg.color == "grayscale" else "RGB"
    x_all = np.empty((n, 1 if mode == "L" else 3, cfg.size, cfg.size), dtype=np.float32)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im.load()
                im = im.convert(mode)
                if im.size != (cfg.size, cfg.size):
                    im = im.resize((cfg.size, cfg.size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(
                f"{what}: {table.where(i)}, column '{cfg.file_column}': image '{files[i]}' cannot be decoded "
                f"({one_line(e)}); use PNG, JPEG or another format Pillow reads"
            ) from None
        x_all[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    idx = random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what)
    x = {s: x_all[i] for s, i in idx.items()}
    return SourceData(
        x=x,
        y={s: y[i].astype(np.float32) for s, i in idx.items()},
        output_names=list(cfg.labels),
        standardise=None,
        angles=False,
        description=(
            f"image_folder {cfg.root}: {n} {cfg.color} images resized to {cfg.size}x{cfg.size}, labels "
            f"[{', '.join(cfg.labels)}], random split {split_sizes(x)}"
        ),
        feature_names=[],
    )
