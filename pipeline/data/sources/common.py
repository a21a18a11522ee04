"""What every source kind shares: the error type, the base of the options, the result (``SourceData``),
path checks, and the train/val/test split (random with the run's seed, or given in the file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from pipeline.errors import UserError
from pipeline.options import Strict

SPLIT_NAMES = ("train", "val", "test")

# Values are trained in float32, where squares (variance, MSE) overflow beyond sqrt(3.4e38) ~ 1.8e19:
# larger magnitudes would turn into inf and then NaN on the way, so they are refused where they enter.
FLOAT32_MAX = float(np.sqrt(np.finfo(np.float32).max))


class DataError(UserError):
    """A data file that cannot be used as given; the message says where and what is allowed."""


def fraction_field(default: float, split: str) -> Any:
    """The ``val_fraction`` / ``test_fraction`` option of a kind that may split at random."""
    return Field(default, gt=0, lt=1, description=f"random split: fraction of samples for {split}")


class RandomSplit(Strict):
    """Options of a kind that may split at random: ``val_fraction`` + ``test_fraction`` leave some train."""

    @model_validator(mode="after")
    def _fractions(self) -> Any:
        total = self.val_fraction + self.test_fraction  # type: ignore[attr-defined]
        if total >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (got {total:g}); the rest is train")
        return self


def duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


@dataclass
class SourceData:
    x: dict[str, np.ndarray]  # split -> float32 (n, d) features or (n, C, H, W) images in [0, 1]; not standardised
    y: dict[str, np.ndarray]  # split -> float32 (n, k) labels as in the file
    output_names: list[str]  # k names
    standardise: np.ndarray | None  # (d,) bool: True numeric, False one-hot; None for images
    angles: bool  # outputs are (pitch, yaw) in radians
    description: str  # one line for the report
    feature_names: list[str]  # d names for vectors, [] for images
    # a table's raw columns in input order: {"column", "type": "numeric"} or {"column", "type":
    # "categorical", "categories": [...]} (pipeline.data.preprocessing); [] for one numeric input per name
    columns: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done for the user (logged by the data stage)


def resolve_path(path: str, base: Path | None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base if base is not None else Path.cwd()) / p
    return p


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def real_path(p: Path, what: str) -> Path:
    """``p`` with every symlink and '..' resolved; a symlink loop is a DataError."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # RuntimeError: symlink loop before Python 3.13
        raise DataError(f"{what}: {p} is a symlink loop; give a real file or directory") from None


def is_inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def need_file(p: Path, what: str) -> None:
    if p.is_symlink() and not p.exists():
        raise DataError(f"{what}: {p} is a dangling symlink or a symlink loop; give a real file")
    if not p.exists():
        raise DataError(f"{what}: file not found (looked for {p})")
    if not p.is_file():
        raise DataError(f"{what}: {p} is a directory, expected a file")


def need_dir(p: Path, what: str) -> None:
    if p.is_symlink() and not p.exists():
        raise DataError(f"{what}: {p} is a dangling symlink or a symlink loop; give a real directory")
    if not p.exists():
        raise DataError(f"{what}: directory not found (looked for {p})")
    if not p.is_dir():
        raise DataError(f"{what}: {p} is a file, expected a directory")


def random_split(n: int, val_fraction: float, test_fraction: float, seed: int, what: str) -> dict[str, np.ndarray]:
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


def parse_split_values(values: list[Any], where: list[str], what: str, allowed: str) -> np.ndarray:
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


def split_indices(codes: np.ndarray, what: str, column: str, val_fraction: float | None = None,
                  test_fraction: float | None = None, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """Indices per split from codes 0/1/2, and a note on what was done ('' when nothing was). The
    codes may hold any subset of the splits that includes train: a missing val (test) split is carved
    at random (``seed``) from the train rows, ``val_fraction`` (``test_fraction``) of them; without a
    fraction (None) a missing split is an error."""
    out = {s: np.flatnonzero(codes == i) for i, s in enumerate(SPLIT_NAMES)}
    counts = ", ".join(f"{t} {len(out[t])}" for t in SPLIT_NAMES)
    fractions = {"val": val_fraction, "test": test_fraction}
    missing = [s for s in SPLIT_NAMES if len(out[s]) == 0]
    if "train" in missing or any(fractions[s] is None for s in missing):
        s = missing[0] if "train" not in missing else "train"
        raise DataError(f"{what}: {column} leaves the {s} split empty ({counts}); every split needs >= 1 sample"
                        + (" (a missing val or test split is carved from train; train cannot be)" if s == "train"
                           and fractions["val"] is not None else ""))
    if not missing:
        return out, ""
    train = out["train"]
    sizes = {s: round(len(train) * fractions[s]) for s in missing}
    if any(k < 1 for k in sizes.values()) or len(train) - sum(sizes.values()) < 1:
        asked = ", ".join(f"{s}_fraction={fractions[s]:g}" for s in missing)
        raise DataError(f"{what}: {column} has no {' and no '.join(missing)} rows and its {len(train)} train rows "
                        f"with {asked} leave a split empty; add rows or raise the fraction (every split needs "
                        ">= 1 sample)")
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    start = 0
    for s in missing:
        out[s] = np.sort(train[order[start:start + sizes[s]]])
        start += sizes[s]
    out["train"] = np.sort(train[order[start:]])
    carved = " and ".join(f"{sizes[s]} {s} rows ({s}_fraction={fractions[s]:g})" for s in missing)
    note = (f"{column} holds no {' or '.join(missing)} rows: {carved} carved at random (seed {seed}) from its "
            f"{len(train)} train rows")
    return out, note


def split_sizes(x: dict[str, np.ndarray]) -> str:
    return "/".join(str(len(x[s])) for s in SPLIT_NAMES) + " train/val/test"

