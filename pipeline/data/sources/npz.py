"""``kind: npz``: arrays X and y written by numpy.savez (optionally a split array), or X_train, y_train,
X_val, y_val, X_test, y_test; X holds feature vectors or images."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.data.sources.common import (
    FLOAT32_MAX,
    SPLIT_NAMES,
    DataError,
    RandomSplit,
    SourceData,
    fraction_field,
    need_file,
    one_line,
    parse_split_values,
    random_split,
    resolve_path,
    split_indices,
    split_sizes,
)


class NpzSource(RandomSplit):
    """Arrays X and y (optionally split), or X_train, y_train, X_val, y_val, X_test, y_test."""

    kind: Literal["npz"] = Field(description="source type")
    path: str = Field(description=".npz file written by numpy.savez")
    val_fraction: float = fraction_field(0.15, "validation (of the train samples, when 'split' has no val)")
    test_fraction: float = fraction_field(0.2, "test (of the train samples, when 'split' has no test)")


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
        raise DataError(f"{what}: array '{name}' cannot be read: {one_line(e)}") from None


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


def load_npz(cfg: NpzSource, seed: int, base: Path | None) -> SourceData:
    what = f"npz {cfg.path}"
    p = resolve_path(cfg.path, base)
    need_file(p, what)
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what}: not a readable .npz archive (numpy.savez): {one_line(e)}") from None
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
            split_how, notes = "split from the file", []
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
                codes = parse_split_values(values, where, what, "strings train, val, test or integers 0, 1, 2")
                idx, note = split_indices(codes, what, "array 'split'", cfg.val_fraction, cfg.test_fraction, seed)
                split_how = "split from the file" + (f" ({note.split(': ', 1)[1]})" if note else "")
                notes = [f"{what}: {note}"] if note else []
            else:
                idx = random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what)
                split_how, notes = "random split", []
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
            + f", {k} outputs, {split_how} {split_sizes(x)}"
        ),
        feature_names=[] if image else [f"x{j}" for j in range(d)],
        notes=notes,
    )
