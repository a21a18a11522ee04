"""Reading a CSV file into stripped cells with row and line numbers (``Table``), and numeric columns out
of it (``numeric_block``): shared by the csv and image_folder kinds.

Row numbers in messages: "row N" is the N-th data row (the first row after the header is row 1) and
"line L" is the physical line in the file (the header is line 1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.sources.common import FLOAT32_MAX, DataError, duplicates, need_file, one_line


@dataclass
class Table:
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


def read_table(p: Path, what: str) -> Table:
    need_file(p, what)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{what}: not UTF-8 text (byte {e.start}); save the file as UTF-8 CSV") from None
    except OSError as e:
        raise DataError(f"{what}: cannot be read: {one_line(e.strerror or e)}") from None
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
                if dup := duplicates(header):
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
        raise DataError(f"{what}: invalid CSV at line {reader.line_num}: {one_line(e)}") from None
    if header is None:
        raise DataError(f"{what}: the file is empty; expected a header row and data rows")
    return Table(what, header, rows, lines)


def numeric_block(table: Table, columns: list[str], role: str) -> np.ndarray:
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
