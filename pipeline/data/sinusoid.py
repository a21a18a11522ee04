"""The toy of the TOR paper: one input x, one output y = A * sin(f * x + phase)."""

from __future__ import annotations

import numpy as np

from pipeline.data.options import DataOptions
from pipeline.data.splits import SPLITS, Splits, normalised, noisy_train_val


def sinusoid_target(x: np.ndarray, cfg: DataOptions) -> np.ndarray:
    """The toy of the TOR paper: y = A * sin(f * x + phase)."""
    return (cfg.amplitude * np.sin(cfg.frequency * x + cfg.phase)).astype(np.float32)


def make_sinusoid(cfg: DataOptions, seed: int) -> Splits:
    # Separate streams for inputs and for noise: changing the noise settings never moves the
    # inputs, so an "oracle" run with noise switched off sees exactly the same x.
    rng_x = np.random.default_rng([seed, 0])
    rng_noise = np.random.default_rng([seed, 1])
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    x_raw = {s: rng_x.uniform(cfg.x_min, cfg.x_max, size=(n, 1)).astype(np.float32) for s, n in sizes.items()}
    y_clean = {s: sinusoid_target(x_raw[s], cfg) for s in SPLITS}
    y, outlier = noisy_train_val(y_clean, cfg.noise, rng_noise)
    return normalised(x_raw, y, y_clean, outlier)
