"""User data sources: a CSV table, NumPy arrays (.npz), a folder of images, or MPIIGaze.

``load_source(cfg, seed, base_dir)`` reads one source, validates it and returns train/val/test
splits as float32 arrays (``SourceData``), not yet standardised. Every problem a user can fix
raises ``DataError`` (a ``UserError``: one line, exit code 2) whose message names the file, the
row and column where that applies, and what is allowed. docs/DATA.md is the user's guide.

Row numbers in CSV messages: "row N" is the N-th data row (the first row after the header is
row 1) and "line L" is the physical line in the file (the header is line 1).
"""

from __future__ import annotations

import csv
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import UserError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


class DataError(UserError):
    """A data file that cannot be used as given; the message says where and what is allowed."""


# Defined here (the data source owns its options); pipeline/config/data.py imports it.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _val_fraction() -> Any:
    return Field(0.15, gt=0, lt=1, description="random split: fraction of samples for validation")


def _test_fraction() -> Any:
    return Field(0.2, gt=0, lt=1, description="random split: fraction of samples for test")


class _RandomSplit(_Strict):
    @model_validator(mode="after")
    def _fractions(self) -> Any:
        total = self.val_fraction + self.test_fraction  # type: ignore[attr-defined]
        if total >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (got {total:g}); the rest is train")
        return self


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


class CsvSource(_RandomSplit):
    """A table with a header row; numeric feature and label columns, optional categorical ones."""

    kind: Literal["csv"] = Field(description="source type")
    path: str = Field(description="CSV file (comma-separated, UTF-8, header row)")
    labels: list[str] = Field(min_length=1, description="label (target) columns, numeric")
    features: list[str] | None = Field(
        None,
        min_length=1,
        description="feature columns; null: every column that is not a label or split_column",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="feature columns one-hot encoded (categories from the train split)",
    )
    split_column: str | None = Field(None, description="column with train/val/test per row; null: random split")
    val_fraction: float = _val_fraction()
    test_fraction: float = _test_fraction()
    min_rows: int = Field(20, ge=3, description="fewer data rows than this is an error")

    @model_validator(mode="after")
    def _columns(self) -> CsvSource:
        for key in ("labels", "categorical"):
            if dup := _duplicates(getattr(self, key)):
                raise ValueError(f"{key} lists {dup} more than once")
        if self.features is not None and (dup := _duplicates(self.features)):
            raise ValueError(f"features lists {dup} more than once")
        if both := sorted(set(self.labels) & set(self.features or [])):
            raise ValueError(f"columns {both} are both labels and features")
        if both := sorted(set(self.labels) & set(self.categorical)):
            raise ValueError(f"columns {both} are labels and categorical; labels must be numeric")
        if self.features is not None and (extra := [c for c in self.categorical if c not in self.features]):
            raise ValueError(f"categorical columns {extra} are not in features {self.features}")
        if self.split_column is not None and self.split_column in set(self.labels) | set(self.features or []):
            raise ValueError(f"split_column '{self.split_column}' cannot also be a label or feature")
        return self


class NpzSource(_RandomSplit):
    """Arrays X and y (optionally split), or X_train, y_train, X_val, y_val, X_test, y_test."""

    kind: Literal["npz"] = Field(description="source type")
    path: str = Field(description=".npz file written by numpy.savez")
    val_fraction: float = _val_fraction()
    test_fraction: float = _test_fraction()


class ImageFolderSource(_RandomSplit):
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
    val_fraction: float = _val_fraction()
    test_fraction: float = _test_fraction()

    @model_validator(mode="after")
    def _columns(self) -> ImageFolderSource:
        if dup := _duplicates(self.labels):
            raise ValueError(f"labels lists {dup} more than once")
        if self.file_column in self.labels:
            raise ValueError(f"file_column '{self.file_column}' cannot also be a label")
        return self


class MPIIGazeSource(_Strict):
    """MPIIGaze normalised eye patches; leave-one-person-out splits."""

    kind: Literal["mpiigaze"] = Field(description="source type")
    root: str = Field(description="directory holding Data/Normalized/pNN/dayNN.mat, or Normalized/ itself")
    test_person: str = Field("p14", description="person held out for test")
    val_person: str = Field("p13", description="person held out for validation")
    eyes: Literal["left", "right", "both"] = Field("both", description="which eye patches (both: right ones mirrored)")
    max_per_person: int | None = Field(
        None,
        ge=1,
        description="random subsample of at most this many patches per person; null: all",
    )


SourceConfig = Annotated[
    CsvSource | NpzSource | ImageFolderSource | MPIIGazeSource,
    Field(discriminator="kind"),
]


@dataclass
class SourceData:
    x: dict[str, np.ndarray]  # split -> float32 (n, d) features or (n, C, H, W) images in [0, 1]; not standardised
    y: dict[str, np.ndarray]  # split -> float32 (n, k) labels as in the file
    output_names: list[str]  # k names
    standardise: np.ndarray | None  # (d,) bool: True numeric, False one-hot; None for images
    angles: bool  # outputs are (pitch, yaw) in radians
    description: str  # one line for the report
    feature_names: list[str]  # d names for vectors, [] for images


# ---------------------------------------------------------------------------------------------
# gaze geometry


def pitchyaw_from_vector(g: np.ndarray) -> np.ndarray:
    """(n, 3) gaze vectors -> (n, 2) [pitch, yaw] radians: pitch = arcsin(-g_y), yaw = arctan2(-g_x, -g_z)."""
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 3:
        raise ValueError(f"expected gaze vectors of shape (n, 3), got {g.shape}")
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        raise ValueError("gaze vectors must be finite and non-zero")
    g = g / norm
    pitch = np.arcsin(np.clip(-g[:, 1], -1.0, 1.0))
    yaw = np.arctan2(-g[:, 0], -g[:, 2])
    return np.stack([pitch, yaw], axis=1)


def vector_from_pitchyaw(py: np.ndarray) -> np.ndarray:
    """(n, 2) [pitch, yaw] radians -> (n, 3) unit vectors; inverse of ``pitchyaw_from_vector``."""
    py = np.asarray(py, dtype=np.float64)
    if py.ndim != 2 or py.shape[1] != 2:
        raise ValueError(f"expected (pitch, yaw) of shape (n, 2), got {py.shape}")
    p, y = py[:, 0], py[:, 1]
    return np.stack([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)], axis=1)


def angular_error_deg(pred_py: np.ndarray, true_py: np.ndarray) -> np.ndarray:
    """(n,) angle in degrees between the 3-D gaze directions of two (n, 2) [pitch, yaw] arrays."""
    a, b = vector_from_pitchyaw(pred_py), vector_from_pitchyaw(true_py)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# ---------------------------------------------------------------------------------------------
# shared helpers


def _resolve(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base if base is not None else Path.cwd()) / p
    return p


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _real(p: Path, what: str) -> Path:
    """``p`` with every symlink and '..' resolved; a symlink loop is a DataError."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # RuntimeError: symlink loop before Python 3.13
        raise DataError(f"{what}: {p} is a symlink loop; give a real file or directory") from None


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def _need_file(p: Path, what: str) -> None:
    if p.is_symlink() and not p.exists():
        raise DataError(f"{what}: {p} is a dangling symlink or a symlink loop; give a real file")
    if not p.exists():
        raise DataError(f"{what}: file not found (looked for {p})")
    if not p.is_file():
        raise DataError(f"{what}: {p} is a directory, expected a file")


def _need_dir(p: Path, what: str) -> None:
    if p.is_symlink() and not p.exists():
        raise DataError(f"{what}: {p} is a dangling symlink or a symlink loop; give a real directory")
    if not p.exists():
        raise DataError(f"{what}: directory not found (looked for {p})")
    if not p.is_dir():
        raise DataError(f"{what}: {p} is a file, expected a directory")


def _random_split(n: int, val_fraction: float, test_fraction: float, seed: int, what: str) -> dict[str, np.ndarray]:
    """Indices per split; each split keeps file order. Same seed -> same split."""
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    sizes = {"train": n - n_test - n_val, "val": n_val, "test": n_test}
    for s, k in sizes.items():
        if k < 1:
            raise DataError(
                f"{what}: {n} samples with val_fraction={val_fraction:g}, test_fraction={test_fraction:g} "
                f"leave the {s} split empty; add samples or raise the fraction (every split needs >= 1 sample)"
            )
    order = np.random.default_rng(seed).permutation(n)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def _parse_split_values(values: list[Any], where: list[str], what: str, allowed: str) -> np.ndarray:
    """Split labels ('train'/'val'/'test', any case) -> codes 0/1/2; ``where[i]`` locates value i."""
    codes = np.empty(len(values), dtype=np.int64)
    lookup = {s: i for i, s in enumerate(SPLIT_NAMES)}
    bad = []
    for i, v in enumerate(values):
        key = (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip().lower()
        if key not in lookup:
            bad.append(i)
        else:
            codes[i] = lookup[key]
    if bad:
        i = bad[0]
        raise DataError(
            f"{what}: {where[i]}: split value {str(values[i])!r} is not allowed ({len(bad)} bad split values "
            f"in total); allowed: {allowed}"
        )
    return codes


def _split_indices(codes: np.ndarray, what: str, column: str) -> dict[str, np.ndarray]:
    out = {s: np.flatnonzero(codes == i) for i, s in enumerate(SPLIT_NAMES)}
    for s, idx in out.items():
        if len(idx) == 0:
            counts = ", ".join(f"{t} {len(out[t])}" for t in SPLIT_NAMES)
            raise DataError(f"{what}: {column} leaves the {s} split empty ({counts}); every split needs >= 1 sample")
    return out


def _sizes(x: dict[str, np.ndarray]) -> str:
    return "/".join(str(len(x[s])) for s in SPLIT_NAMES) + " train/val/test"


# ---------------------------------------------------------------------------------------------
# CSV


@dataclass
class _Table:
    what: str  # "csv data.csv" -- prefix of every message
    header: list[str]
    rows: list[list[str]]  # stripped cells, one list per data row
    lines: list[int]  # physical line where each data row starts

    def where(self, i: int) -> str:
        return f"row {i + 1} (line {self.lines[i]})"

    def column(self, name: str, role: str) -> list[str]:
        if name not in self.header:
            raise DataError(
                f"{self.what}: {role} column '{name}' not found; the columns are: {', '.join(self.header)}"
                + _delimiter_hint(self.header)
            )
        j = self.header.index(name)
        return [r[j] for r in self.rows]


def _delimiter_hint(header: list[str]) -> str:
    if len(header) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab")):
            if sep in header[0]:
                return f" (the file looks {name}-separated; only comma-separated files are read)"
    return ""


def _read_table(p: Path, what: str) -> _Table:
    _need_file(p, what)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: not UTF-8 text (byte {e.start}); save the file as UTF-8 CSV") from None
    except OSError as e:
        raise DataError(f"{what}: cannot be read: {_one_line(e.strerror or e)}") from None
    if "\0" in text:
        raise DataError(f"{what}: contains NUL bytes; this is not a text CSV file")
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    last = 0
    try:
        for record in reader:
            start, last = last + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            cells = [c.strip() for c in record]
            if header is None:
                header = cells
                for j, name in enumerate(header):
                    if not name:
                        raise DataError(
                            f"{what}: header (line {start}) column {j + 1} has no name; every column needs a name"
                        )
                if dup := _duplicates(header):
                    raise DataError(f"{what}: header (line {start}) repeats column names {dup}; names must be unique")
                continue
            if len(cells) != len(header):
                raise DataError(
                    f"{what}: row {len(rows) + 1} (line {start}) has {len(cells)} fields but the header has "
                    f"{len(header)} columns; every row needs one value per column"
                )
            rows.append(cells)
            lines.append(start)
    except csv.Error as e:
        raise DataError(f"{what}: invalid CSV at line {reader.line_num}: {_one_line(e)}") from None
    if header is None:
        raise DataError(f"{what}: the file is empty; expected a header row and data rows")
    return _Table(what, header, rows, lines)


# Values are trained in float32, where squares (variance, MSE) overflow beyond sqrt(3.4e38) ~ 1.8e19:
# larger magnitudes would turn into inf and then NaN on the way, so they are refused where they enter.
FLOAT32_MAX = float(np.sqrt(np.finfo(np.float32).max))


def _numeric_block(table: _Table, columns: list[str], role: str) -> np.ndarray:
    """The named columns as float64 (n, len(columns)); any empty, NaN, infinite or non-numeric cell is an error."""
    n = len(table.rows)
    out = np.empty((n, len(columns)), dtype=np.float64)
    cols = [table.column(c, role) for c in columns]  # all names checked before any value
    bad_text: list[tuple[int, int]] = []
    for j, cells in enumerate(cols):
        try:
            out[:, j] = np.asarray(cells, dtype=np.float64) if n else 0
        except ValueError:
            for i, c in enumerate(cells):
                if not c:
                    out[i, j] = np.nan  # reported below with NaN/inf
                    continue
                try:
                    out[i, j] = float(c)
                except ValueError:
                    bad_text.append((i, j))
    if bad_text:
        i, j = min(bad_text)
        raise DataError(
            f"{table.what}: {table.where(i)}, column '{columns[j]}': {cols[j][i]!r} is not a number "
            f"({len(bad_text)} non-numeric cells in total); {role} columns must hold numbers such as 1.5 or -2e3"
            + (" (list text feature columns under categorical)" if "feature" in role else "")
        )
    nonfinite = [(int(i), int(j)) for i, j in zip(*np.nonzero(~np.isfinite(out)))]
    if nonfinite:
        i, j = min(nonfinite)
        cell = "empty cell" if not cols[j][i] else f"value {cols[j][i]!r} is not finite"
        raise DataError(
            f"{table.what}: {table.where(i)}, column '{columns[j]}': {cell} ({len(nonfinite)} empty, NaN or "
            f"infinite cells in total in the {role} columns); every {role} cell must hold a finite number"
        )
    big = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.abs(out) > FLOAT32_MAX))]
    if big:
        i, j = min(big)
        raise DataError(
            f"{table.what}: {table.where(i)}, column '{columns[j]}': value {cols[j][i]!r} is too large for float32 "
            f"training ({len(big)} such cells in total); every {role} value must lie within +-1.8e19, where its "
            "square still fits float32 (rescale the column)"
        )
    return out


def _load_csv(cfg: CsvSource, seed: int, base: Path | None) -> SourceData:
    what = f"csv {cfg.path}"
    table = _read_table(_resolve(cfg.path, base), what)
    for c in cfg.labels:
        table.column(c, "label")
    if cfg.split_column is not None:
        table.column(cfg.split_column, "split")
    skip = set(cfg.labels) | ({cfg.split_column} if cfg.split_column else set())
    features = cfg.features if cfg.features is not None else [c for c in table.header if c not in skip]
    if not features:
        raise DataError(f"{what}: no feature columns left; the columns are {', '.join(table.header)}, all labels")
    for c in features + cfg.categorical:
        table.column(c, "feature")
    n = len(table.rows)
    if n < cfg.min_rows:
        raise DataError(f"{what}: {n} data rows; at least min_rows={cfg.min_rows} are needed")

    numeric = [c for c in features if c not in cfg.categorical]
    block = _numeric_block(table, numeric + cfg.labels, "feature and label")
    x_num, y = block[:, : len(numeric)], block[:, len(numeric) :]
    cats = {c: table.column(c, "feature") for c in cfg.categorical}
    for c, cells in cats.items():
        empty = [i for i, v in enumerate(cells) if not v]
        if empty:
            raise DataError(
                f"{what}: {table.where(empty[0])}, column '{c}': empty cell ({len(empty)} empty cells in total "
                f"in this categorical column); every categorical cell needs a value"
            )

    if cfg.split_column is not None:
        values = table.column(cfg.split_column, "split")
        where = [f"{table.where(i)}, column '{cfg.split_column}'" for i in range(n)]
        codes = _parse_split_values(values, where, what, "train, val, test")
        idx = _split_indices(codes, what, f"split_column '{cfg.split_column}'")
    else:
        idx = _random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what)

    # Assemble columns in feature order; categories come from the train split only.
    blocks: list[np.ndarray] = []
    names: list[str] = []
    mask: list[bool] = []
    for c in features:
        if c in cfg.categorical:
            cells = np.asarray(cats[c], dtype=object)
            levels = sorted(set(cells[idx["train"]].tolist()))
            blocks.append(np.stack([cells == v for v in levels], axis=1).astype(np.float64))
            names += [f"{c}={v}" for v in levels]
            mask += [False] * len(levels)
        else:
            blocks.append(x_num[:, [numeric.index(c)]])
            names.append(c)
            mask.append(True)
    x_all = np.concatenate(blocks, axis=1).astype(np.float32)
    x = {s: x_all[i] for s, i in idx.items()}
    ys = {s: y[i].astype(np.float32) for s, i in idx.items()}
    split_how = f"split by column '{cfg.split_column}'" if cfg.split_column else "random split"
    return SourceData(
        x=x,
        y=ys,
        output_names=list(cfg.labels),
        standardise=np.asarray(mask, dtype=bool),
        angles=False,
        description=(
            f"csv {cfg.path}: {n} rows, {len(names)} features, labels [{', '.join(cfg.labels)}], "
            f"{split_how} {_sizes(x)}"
        ),
        feature_names=names,
    )


# ---------------------------------------------------------------------------------------------
# NPZ

_PRESPLIT = [f"{a}_{s}" for s in SPLIT_NAMES for a in ("X", "y")]


def _npz_array(z: Any, name: str, what: str) -> np.ndarray:
    try:
        return np.asarray(z[name])
    except ValueError:
        raise DataError(
            f"{what}: array '{name}' holds Python objects; save plain numeric arrays (strings as "
            f"np.array([...], dtype=str))"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what}: array '{name}' cannot be read: {_one_line(e)}") from None


def _npz_numeric(a: np.ndarray, name: str, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what}: array '{name}' has dtype {a.dtype}; it must be numeric (int, float or bool)")
    if a.ndim == 0 or a.shape[0] == 0:
        raise DataError(f"{what}: array '{name}' has shape {a.shape}; it needs at least one sample along axis 0")
    a = a.astype(np.float64) if a.dtype.kind != "f" else a
    finite = np.isfinite(a.reshape(len(a), -1))
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise DataError(
            f"{what}: array '{name}' sample {rows[0]} (0-based index) holds NaN or infinite values "
            f"({int((~finite).sum())} such values in {len(rows)} samples); every value must be finite"
        )
    big = np.abs(a.reshape(len(a), -1)) > FLOAT32_MAX
    if big.any():
        rows = np.flatnonzero(big.any(axis=1))
        raise DataError(
            f"{what}: array '{name}' sample {rows[0]} (0-based index) holds values too large for float32 "
            f"training ({int(big.sum())} such values in {len(rows)} samples); every value must lie within +-1.8e19, "
            "where its square still fits float32 (rescale it)"
        )
    return a


def _npz_x(a: np.ndarray, name: str, what: str) -> np.ndarray:
    integer = a.dtype.kind in "biu"
    a = _npz_numeric(a, name, what)
    if a.ndim == 1:
        return a.reshape(-1, 1).astype(np.float32)
    if a.ndim == 2:
        return a.astype(np.float32)
    if a.ndim > 4:
        raise DataError(
            f"{what}: array '{name}' has shape {a.shape}; allowed: (n, d) features, (n, H, W) or (n, C, H, W) images"
        )
    if a.ndim == 3:
        a = a[:, None]
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        raise DataError(
            f"{what}: array '{name}' has shape {a.shape}, which looks channels-last; images must be "
            f"(n, C, H, W) -- transpose with X.transpose(0, 3, 1, 2)"
        )
    if integer:
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"{what}: integer images in '{name}' must hold 0..255, found {a.min():g}..{a.max():g}")
        a = a / 255.0
    elif a.min() < 0 or a.max() > 1:
        raise DataError(
            f"{what}: float images in '{name}' must be in [0, 1], found {a.min():g}..{a.max():g}; "
            f"store uint8 0..255 or scale to [0, 1]"
        )
    return a.astype(np.float32)


def _npz_y(a: np.ndarray, name: str, what: str) -> np.ndarray:
    a = _npz_numeric(a, name, what)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise DataError(f"{what}: array '{name}' has shape {a.shape}; labels must be 1-D (n,) or 2-D (n, k)")
    return a.astype(np.float32)


def _load_npz(cfg: NpzSource, seed: int, base: Path | None) -> SourceData:
    what = f"npz {cfg.path}"
    p = _resolve(cfg.path, base)
    _need_file(p, what)
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what}: not a readable .npz archive (numpy.savez): {_one_line(e)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(
            f"{what}: holds a single array, not an .npz archive; write it with numpy.savez(path, X=..., y=...)"
        )
    with z:
        present = sorted(z.files)
        listing = ", ".join(present) or "none"
        if any(k in present for k in _PRESPLIT):
            if missing := [k for k in _PRESPLIT if k not in present]:
                raise DataError(
                    f"{what}: pre-split arrays are incomplete, missing {', '.join(missing)} (arrays present: "
                    f"{listing}); give all of {', '.join(_PRESPLIT)}, or X and y"
                )
            x, y = {}, {}
            for s in SPLIT_NAMES:
                x[s] = _npz_x(_npz_array(z, f"X_{s}", what), f"X_{s}", what)
                y[s] = _npz_y(_npz_array(z, f"y_{s}", what), f"y_{s}", what)
                if len(x[s]) != len(y[s]):
                    raise DataError(f"{what}: X_{s} has {len(x[s])} rows but y_{s} has {len(y[s])}; they must match")
            for s in ("val", "test"):
                if x[s].shape[1:] != x["train"].shape[1:] or y[s].shape[1] != y["train"].shape[1]:
                    raise DataError(
                        f"{what}: X_{s}/y_{s} have sample shapes {x[s].shape[1:]}/{y[s].shape[1:]} but "
                        f"X_train/y_train have {x['train'].shape[1:]}/{y['train'].shape[1:]}; they must match"
                    )
            split_how = "split from the file"
        else:
            if missing := [k for k in ("X", "y") if k not in present]:
                raise DataError(
                    f"{what}: missing array {', '.join(missing)} (arrays present: {listing}); expected X and y "
                    f"(optional split), or {', '.join(_PRESPLIT)}"
                )
            x_all = _npz_x(_npz_array(z, "X", what), "X", what)
            y_all = _npz_y(_npz_array(z, "y", what), "y", what)
            n = len(x_all)
            if len(y_all) != n:
                raise DataError(
                    f"{what}: X has {n} rows but y has {len(y_all)}; they must match (shapes "
                    f"X {x_all.shape}, y {y_all.shape})"
                )
            if "split" in present:
                sp = _npz_array(z, "split", what)
                if sp.shape != (n,) or sp.dtype.kind not in "iuUS":
                    raise DataError(
                        f"{what}: array 'split' has shape {sp.shape} and dtype {sp.dtype}; it must be ({n},) "
                        f"strings train/val/test or integers 0/1/2"
                    )
                values = (
                    sp.tolist()
                    if sp.dtype.kind in "US"
                    else [{0: "train", 1: "val", 2: "test"}.get(int(v), str(v)) for v in sp]
                )
                where = [f"split[{i}]" for i in range(n)]
                codes = _parse_split_values(values, where, what, "strings train, val, test or integers 0, 1, 2")
                idx = _split_indices(codes, what, "array 'split'")
                split_how = "split from the file"
            else:
                idx = _random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what)
                split_how = "random split"
            x = {s: x_all[i] for s, i in idx.items()}
            y = {s: y_all[i] for s, i in idx.items()}
    image = x["train"].ndim == 4
    k = y["train"].shape[1]
    d = x["train"].shape[1]
    n_total = sum(len(v) for v in x.values())
    return SourceData(
        x=x,
        y=y,
        output_names=["y"] if k == 1 else [f"y{j}" for j in range(k)],
        standardise=None if image else np.ones(d, dtype=bool),
        angles=False,
        description=(
            f"npz {cfg.path}: {n_total} samples, "
            + (f"images {tuple(x['train'].shape[1:])}" if image else f"{d} features")
            + f", {k} outputs, {split_how} {_sizes(x)}"
        ),
        feature_names=[] if image else [f"x{j}" for j in range(d)],
    )


# ---------------------------------------------------------------------------------------------
# image folder


def _load_image_folder(cfg: ImageFolderSource, seed: int, base: Path | None) -> SourceData:
    from PIL import Image

    root = _resolve(cfg.root, base)
    _need_dir(root, f"image_folder root {cfg.root}")
    csv_path = _resolve(cfg.labels_csv, root)
    what = f"labels_csv {cfg.labels_csv}"
    table = _read_table(csv_path, what)
    files = table.column(cfg.file_column, "file")
    y = _numeric_block(table, cfg.labels, "label")
    n = len(files)
    if n == 0:
        raise DataError(f"{what}: no data rows; list one image per row")
    paths: list[Path] = []
    missing: list[int] = []
    real_root = _real(root, f"image_folder root {cfg.root}")
    for i, f in enumerate(files):
        if not f:
            raise DataError(f"{what}: {table.where(i)}, column '{cfg.file_column}': empty cell; give an image path")
        paths.append(_resolve(f, root))
        if not cfg.allow_outside_root and not _inside(_real(paths[-1], f"{what}: {table.where(i)}"), real_root):
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
                f"({_one_line(e)}); use PNG, JPEG or another format Pillow reads"
            ) from None
        x_all[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    idx = _random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what)
    x = {s: x_all[i] for s, i in idx.items()}
    return SourceData(
        x=x,
        y={s: y[i].astype(np.float32) for s, i in idx.items()},
        output_names=list(cfg.labels),
        standardise=None,
        angles=False,
        description=(
            f"image_folder {cfg.root}: {n} {cfg.color} images resized to {cfg.size}x{cfg.size}, labels "
            f"[{', '.join(cfg.labels)}], random split {_sizes(x)}"
        ),
        feature_names=[],
    )


# ---------------------------------------------------------------------------------------------
# MPIIGaze

_PERSON = re.compile(r"^p\d+$")


def _persons_dir(root: Path, shown: str) -> Path:
    _need_dir(root, f"mpiigaze root {shown}")
    tried = [root, root / "Normalized", root / "Data" / "Normalized"]
    for d in tried:
        if d.is_dir() and any(c.is_dir() and _PERSON.match(c.name) for c in d.iterdir()):
            return d
    raise DataError(
        f"mpiigaze root {shown}: no person directories p00, p01, ... found (looked in "
        f"{', '.join(str(d) for d in tried)}); point root at MPIIGaze/ or MPIIGaze/Data/Normalized"
    )


def _mat_eye(data: Any, eye: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    side = getattr(data, eye, None)
    missing = (
        [f"data.{eye}"]
        if side is None
        else [f"data.{eye}.{f}" for f in ("image", "gaze", "pose") if not hasattr(side, f)]
    )
    if missing:
        raise DataError(
            f"{what}: missing field {', '.join(missing)}; expected a struct data with fields left and right, each "
            f"holding image (N, H, W), gaze (N, 3) and pose (N, 3) (the MPIIGaze Data/Normalized layout)"
        )
    image, gaze = np.asarray(side.image), np.asarray(side.gaze, dtype=np.float64)
    if gaze.ndim == 1 and gaze.size == 3:  # squeeze_me drops the sample axis when N == 1
        gaze = gaze[None]
        image = image[None] if image.ndim == 2 else image
    if gaze.size == 0 and image.size == 0:
        return np.zeros((0, 1, 1), np.uint8), np.zeros((0, 3))
    if image.ndim != 3 or gaze.ndim != 2 or gaze.shape[1] != 3 or len(image) != len(gaze):
        raise DataError(
            f"{what}: data.{eye}.image has shape {image.shape} and data.{eye}.gaze {gaze.shape}; expected "
            f"(N, H, W) and (N, 3) with the same N"
        )
    if image.dtype.kind not in "biuf":
        raise DataError(f"{what}: data.{eye}.image has dtype {image.dtype}; expected uint8 grayscale pixels")
    norms = np.linalg.norm(gaze, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise DataError(
            f"{what}: data.{eye}.gaze sample {bad[0]} (0-based) is zero or not finite ({len(bad)} such samples); "
            f"gaze must be a non-zero 3-D direction"
        )
    return image, gaze


def _load_person(pdir: Path, cfg: MPIIGazeSource, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All eye patches of one person as (n, 1, H, W) float32 in [0, 1] and (n, 2) pitch/yaw."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    mats = sorted(pdir.glob("*.mat"))
    if not mats:
        raise DataError(f"mpiigaze {pdir}: no .mat files (expected day01.mat, day02.mat, ...)")
    images, pys = [], []
    for m in mats:
        what = f"mpiigaze {pdir.name}/{m.name}"
        try:
            mat = loadmat(str(m), struct_as_record=False, squeeze_me=True)
        except NotImplementedError:
            raise DataError(f"{what}: MATLAB v7.3 (HDF5) files are not supported; save as -v7 or older") from None
        except (MatReadError, ValueError, OSError, TypeError) as e:
            raise DataError(f"{what}: cannot be read as a MATLAB .mat file ({_one_line(e)})") from None
        if "data" not in mat:
            found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
            raise DataError(
                f"{what}: no variable 'data' (variables found: {found}); expected the MPIIGaze struct "
                f"data.left/right.image/gaze/pose"
            )
        eyes = ["left", "right"] if cfg.eyes == "both" else [cfg.eyes]
        for eye in eyes:
            image, gaze = _mat_eye(mat["data"], eye, what)
            if not len(image):
                continue
            py = pitchyaw_from_vector(gaze)
            if eye == "right" and cfg.eyes == "both":
                image = image[:, :, ::-1]  # mirror the right eye so it looks like a left eye ...
                py = py * np.array([1.0, -1.0])  # ... and mirror its gaze: g_x -> -g_x negates yaw
            images.append(image)
            pys.append(py)
    shapes = {im.shape[1:] for im in images}
    if len(shapes) > 1:
        raise DataError(f"mpiigaze {pdir.name}: eye patches of different sizes {sorted(shapes)}; expected one size")
    if not images:
        raise DataError(f"mpiigaze {pdir.name}: the .mat files hold no samples")
    image = np.concatenate(images)
    py = np.concatenate(pys)
    if cfg.max_per_person is not None and len(image) > cfg.max_per_person:
        keep = np.sort(rng.choice(len(image), size=cfg.max_per_person, replace=False))
        image, py = image[keep], py[keep]
    x = image.astype(np.float32)
    if image.dtype.kind in "biu" or x.max() > 1.0:
        x /= 255.0
    return np.clip(x, 0.0, 1.0)[:, None], py.astype(np.float32)


def _load_mpiigaze(cfg: MPIIGazeSource, seed: int, base: Path | None) -> SourceData:
    pdir = _persons_dir(_resolve(cfg.root, base), cfg.root)
    persons = sorted(c.name for c in pdir.iterdir() if c.is_dir() and _PERSON.match(c.name))
    what = f"mpiigaze {cfg.root}"
    for key in ("test_person", "val_person"):
        if getattr(cfg, key) not in persons:
            raise DataError(f"{what}: {key} '{getattr(cfg, key)}' not found; persons found: {', '.join(persons)}")
    if cfg.test_person == cfg.val_person:
        raise DataError(f"{what}: test_person and val_person are both '{cfg.test_person}'; they must differ")
    train_persons = [p for p in persons if p not in (cfg.test_person, cfg.val_person)]
    if not train_persons:
        raise DataError(f"{what}: only persons {', '.join(persons)}; no person is left for training")
    loaded = {}
    for p in persons:
        # One stream per person: which persons exist never changes another person's subsample.
        loaded[p] = _load_person(pdir / p, cfg, np.random.default_rng([seed, int(p[1:])]))
    if len({v[0].shape[2:] for v in loaded.values()}) > 1:
        sizes = {p: v[0].shape[2:] for p, v in loaded.items()}
        raise DataError(f"{what}: persons have eye patches of different sizes {sizes}; expected one size")
    groups = {
        "train": train_persons,
        "val": [cfg.val_person],
        "test": [cfg.test_person],
    }
    x = {s: np.concatenate([loaded[p][0] for p in ps]) for s, ps in groups.items()}
    y = {s: np.concatenate([loaded[p][1] for p in ps]) for s, ps in groups.items()}
    eyes = "left and mirrored right eyes" if cfg.eyes == "both" else f"{cfg.eyes} eyes"
    return SourceData(
        x=x,
        y=y,
        output_names=["pitch", "yaw"],
        standardise=None,
        angles=True,
        description=(
            f"mpiigaze {cfg.root}: {len(persons)} persons, {eyes}, test {cfg.test_person}, val {cfg.val_person}, "
            f"train {len(train_persons)} persons, {_sizes(x)}"
        ),
        feature_names=[],
    )


# ---------------------------------------------------------------------------------------------


def load_source(cfg: SourceConfig, seed: int, base_dir: Path | None = None) -> SourceData:
    """Read, validate and split one source. Relative paths resolve against ``base_dir`` (else the cwd)."""
    base = Path(base_dir) if base_dir is not None else None
    loaders = {
        "csv": _load_csv,
        "npz": _load_npz,
        "image_folder": _load_image_folder,
        "mpiigaze": _load_mpiigaze,
    }
    data = loaders[cfg.kind](cfg, seed, base)  # type: ignore[operator]
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
