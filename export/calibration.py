"""The int8 calibration sample: which training rows every int8 format (ORT static / dynamic
preparation, TFLite full-integer, quantization-aware fine-tuning) sees.

Taking the first N rows in file order lets a table sorted by a column (date, id, price, the label
itself) calibrate on one end of its range only; ranges outside it then clip. Instead the rows are
a seeded sample over the whole split: stratified over the label range when labels are given (each
of ``strata`` label quantile bins contributes in proportion to its size), else uniform.
"""

from __future__ import annotations

import numpy as np


def calibration_indices(n_rows: int, n_samples: int, seed: int, y: np.ndarray | None = None,
                        strata: int = 10) -> np.ndarray:
    """Sorted row indices of the calibration sample (all rows when ``n_samples >= n_rows``)."""
    if n_samples >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    if y is None or len(y) != n_rows:
        return np.sort(rng.choice(n_rows, n_samples, replace=False))
    key = np.asarray(y, dtype=np.float64).reshape(n_rows, -1)[:, 0]
    order = np.argsort(key, kind="stable")  # rows by label; equal-count bins along that order
    bins = np.array_split(order, min(strata, n_samples))
    quota = _proportional([len(b) for b in bins], n_samples)
    picked = [rng.choice(b, q, replace=False) for b, q in zip(bins, quota) if q]
    return np.sort(np.concatenate(picked))


def _proportional(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over bins in proportion to ``sizes`` (largest remainders get the rest)."""
    sizes_a = np.asarray(sizes, dtype=np.float64)
    exact = sizes_a / sizes_a.sum() * total
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota), kind="stable")[: total - int(quota.sum())]:
        quota[i] += 1
    return np.minimum(quota, np.asarray(sizes)).tolist()


def describe(n_rows: int, n_samples: int, seed: int, stratified: bool) -> str:
    n = min(n_rows, n_samples)
    if n == n_rows:
        return f"all {n_rows} training rows"
    how = "stratified over 10 label-quantile bins" if stratified else "uniform"
    return f"{n} of {n_rows} training rows, seeded random sample (seed {seed}, {how})"
