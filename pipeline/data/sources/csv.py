"""``kind: csv``: a table with a header row; numeric feature and label columns, optional categorical
ones one-hot encoded, a random split or a split column."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.data.sources.common import (
    DataError,
    RandomSplit,
    SourceData,
    duplicates,
    fraction_field,
    parse_split_values,
    random_split,
    resolve_path,
    split_indices,
    split_sizes,
)
from pipeline.data.sources.csv_reader import Table, numeric_block, read_table

# names that say "row number" (case-insensitive): R's write.csv, pandas' to_csv/read_csv, databases
INDEX_NAMES = {"rownames", "row.names", "row_names", "rowname", "index", "idx", "id", "row", "row_id", "rowid",
               "row_number", "unnamed: 0"}
_INT = re.compile(r"^[+-]?\d+$")


class CsvSource(RandomSplit):
    """A table with a header row; numeric feature and label columns, optional categorical ones."""

    kind: Literal["csv"] = Field(description="source type")
    path: str = Field(description="CSV file (comma-separated, UTF-8, header row)")
    labels: list[str] = Field(min_length=1, description="label (target) columns, numeric")
    features: list[str] | None = Field(
        None,
        min_length=1,
        description="feature columns (categorical ones included); null: every column that is not a label or "
        "split_column, leaving out columns that look like a row index",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="feature columns one-hot encoded (categories from the train split)",
    )
    split_column: str | None = Field(
        None, description="column with train/val/test per row (any subset holding train; a missing val or test "
        "split is carved from train with val_fraction / test_fraction); null: random split")
    val_fraction: float = fraction_field(0.15, "validation (of the train rows, when split_column has no val)")
    test_fraction: float = fraction_field(0.2, "test (of the train rows, when split_column has no test)")
    min_rows: int = Field(20, ge=3, description="fewer data rows than this is an error")

    @model_validator(mode="after")
    def _columns(self) -> CsvSource:
        for key in ("labels", "categorical"):
            if dup := duplicates(getattr(self, key)):
                raise ValueError(f"{key} lists {dup} more than once")
        if self.features is not None and (dup := duplicates(self.features)):
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


def load_csv(cfg: CsvSource, seed: int, base: Path | None) -> SourceData:
    what = f"csv {cfg.path}"
    table = read_table(resolve_path(cfg.path, base), what)
    for c in cfg.labels:
        table.column(c, "label")
    if cfg.split_column is not None:
        table.column(cfg.split_column, "split")
    skip = set(cfg.labels) | ({cfg.split_column} if cfg.split_column else set())
    notes: list[str] = []
    features = cfg.features if cfg.features is not None else default_features(table, skip, cfg.categorical, notes)
    if not features:
        raise DataError(f"{what}: no feature columns left; the columns are {', '.join(table.header)}, all labels")
    for c in features + cfg.categorical:
        table.column(c, "feature")
    n = len(table.rows)
    if n < cfg.min_rows:
        raise DataError(f"{what}: {n} data rows; at least min_rows={cfg.min_rows} are needed")

    numeric = [c for c in features if c not in cfg.categorical]
    block = numeric_block(table, numeric + cfg.labels, "feature and label")
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
        codes = parse_split_values(values, where, what, "train, val, test")
        idx, note = split_indices(codes, what, f"split_column '{cfg.split_column}'", cfg.val_fraction,
                                  cfg.test_fraction, seed)
        if note:
            notes.append(f"{what}: {note}")
    else:
        idx, note = random_split(n, cfg.val_fraction, cfg.test_fraction, seed, what), ""

    # Assemble columns in feature order; categories come from the train split only.
    blocks: list[np.ndarray] = []
    names: list[str] = []
    mask: list[bool] = []
    columns: list[dict] = []
    for c in features:
        if c in cfg.categorical:
            cells = np.asarray(cats[c], dtype=object)
            levels = sorted(set(cells[idx["train"]].tolist()))
            blocks.append(np.stack([cells == v for v in levels], axis=1).astype(np.float64))
            names += [f"{c}={v}" for v in levels]
            mask += [False] * len(levels)
            columns.append({"column": c, "type": "categorical", "categories": levels})
        else:
            blocks.append(x_num[:, [numeric.index(c)]])
            names.append(c)
            mask.append(True)
            columns.append({"column": c, "type": "numeric"})
    x_all = np.concatenate(blocks, axis=1).astype(np.float32)
    x = {s: x_all[i] for s, i in idx.items()}
    ys = {s: y[i].astype(np.float32) for s, i in idx.items()}
    split_how = f"split by column '{cfg.split_column}'" if cfg.split_column else "random split"
    if note:
        split_how += f" ({note.split(': ', 1)[1]})"
    return SourceData(
        x=x,
        y=ys,
        output_names=list(cfg.labels),
        standardise=np.asarray(mask, dtype=bool),
        angles=False,
        description=(
            f"csv {cfg.path}: {n} rows, {len(names)} features, labels [{', '.join(cfg.labels)}], "
            f"{split_how} {split_sizes(x)}"
        ),
        feature_names=names,
        columns=columns,
        notes=notes,
    )


def default_features(table: Table, skip: set[str], categorical: list[str], notes: list[str]) -> list[str]:
    """``features: null``: every column that is not a label or the split column, leaving out (with a
    line saying so) numeric columns that look like a row index: unique integers that either count
    0, 1, 2, ... or 1, 2, 3, ... in file order, or sit in a column named like an index (rownames, index,
    id, Unnamed: 0)."""
    out = []
    for c in table.header:
        if c in skip:
            continue
        if c not in categorical and (why := _index_like(c, table.column(c, "feature"))):
            notes.append(f"{table.what}: column '{c}' left out of the features: {why}, so it looks like a row index "
                         "(list it under features to use it)")
            continue
        out.append(c)
    return out


def _index_like(name: str, cells: list[str]) -> str:
    """Why the column looks like a row index, or ''."""
    if len(cells) < 2 or not all(_INT.match(v) for v in cells):
        return ""
    values = np.array([int(v) for v in cells], dtype=object)
    if len(set(values.tolist())) != len(values):
        return ""
    if name.strip().lower() in INDEX_NAMES:
        return f"its name '{name}' and unique integers"
    if values[0] in (0, 1) and all(b - a == 1 for a, b in zip(values[:-1], values[1:])):
        return f"its values count {values[0]}, {values[1]}, ... {values[-1]} in file order"
    return ""
