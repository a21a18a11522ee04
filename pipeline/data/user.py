"""``data.name: source``: your own data (``data.source``, docs/DATA.md), read and validated by
``pipeline.data.sources``, as ``Splits`` like every built-in data set."""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.data.options import DataOptions
from pipeline.data.preprocessing import build_spec
from pipeline.data.sources import SourceData, load_source
from pipeline.data.splits import Splits, learn_standardised, noisy_train_val, normalised

log = logging.getLogger(__name__)

_SOURCE_CACHE: dict[str, tuple[int, SourceData]] = {}


def read_source(cfg: DataOptions, seed: int | None = None) -> SourceData:
    """One read of a source per process: the CLI probes its shape (any split will do, ``seed=None``)
    before the data stage reads it with the run's seed."""
    key = json.dumps(cfg.source.model_dump(mode="json"), sort_keys=True)
    cached = _SOURCE_CACHE.get(key)
    if cached is None or (seed is not None and cached[0] != seed):
        _SOURCE_CACHE.clear()
        _SOURCE_CACHE[key] = cached = (seed or 0, load_source(cfg.source, seed or 0))
    return cached[1]


def source_shape(cfg: DataOptions) -> tuple[int, ...]:
    """Shape of one input of your data, without the batch axis."""
    return tuple(read_source(cfg).x["train"].shape[1:])


def source_outputs(cfg: DataOptions) -> list[tuple[str, str]]:
    """(name, unit) of each label of your data; the unit is whatever the file holds."""
    return [(name, "as in your data") for name in read_source(cfg).output_names]


def make_source(cfg: DataOptions, seed: int) -> Splits:
    """Your own data: annotation error is injected into train/val labels only if ``data.noise`` is set;
    labels are learned standardised."""
    src = read_source(cfg, seed)
    for note in src.notes:  # columns left out, splits carved: said once, by the data stage
        log.info("%s", note)
    rng_noise = np.random.default_rng([seed, 1])
    y, outlier = noisy_train_val(src.y, cfg.noise, rng_noise)
    splits = normalised(src.x, y, src.y, outlier, standardise=src.standardise)
    splits.output_names, splits.angles, splits.description = list(src.output_names), bool(src.angles), src.description
    splits = learn_standardised(splits)
    names = src.feature_names or None
    splits.preprocessing = build_spec(splits, src.columns or ([{"column": n, "type": "numeric"} for n in names]
                                                             if names else None))
    return splits
