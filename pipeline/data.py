"""Data sets and annotation-error (label noise) injection.

A data set is a function ``make(cfg: DataConfig, seed: int) -> Splits`` registered in
``DATASETS``. Noisy labels are what training sees; the clean labels are kept for evaluation
only, and the test split is always clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import DataConfig, NoiseConfig
from pipeline.io import atomic_write

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    """Inputs are already normalised with the training statistics ``x_mean``/``x_std``."""

    x: dict[str, np.ndarray]  # split -> (n, d) float32, normalised
    y: dict[str, np.ndarray]  # split -> (n, k) float32, labels as training sees them (test: clean)
    y_clean: dict[str, np.ndarray]  # split -> (n, k) float32, noise-free labels
    outlier: dict[str, np.ndarray]  # split -> (n,) bool, which labels were replaced by outliers
    x_mean: np.ndarray  # (d,)
    x_std: np.ndarray  # (d,)
    x_raw: dict[str, np.ndarray]  # split -> (n, d) float32, before normalisation (for plots)

    def save(self, path: Path) -> None:
        arrays = {"x_mean": self.x_mean, "x_std": self.x_std}
        for s in SPLITS:
            arrays.update(
                {
                    f"x_{s}": self.x[s],
                    f"y_{s}": self.y[s],
                    f"y_clean_{s}": self.y_clean[s],
                    f"outlier_{s}": self.outlier[s],
                    f"x_raw_{s}": self.x_raw[s],
                }
            )
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path) -> Splits:
        with np.load(path) as z:
            pick = lambda k: {s: z[f"{k}_{s}"] for s in SPLITS}  # noqa: E731
            return cls(
                x=pick("x"),
                y=pick("y"),
                y_clean=pick("y_clean"),
                outlier=pick("outlier"),
                x_mean=z["x_mean"],
                x_std=z["x_std"],
                x_raw=pick("x_raw"),
            )


def inject_noise(y_clean: np.ndarray, noise: NoiseConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise of std ``sigma`` on every label, then exactly round(p*n) labels replaced by
    outliers drawn uniformly from [outlier_low, outlier_high]. Returns (noisy labels, outlier mask)."""
    n = y_clean.shape[0]
    y = y_clean + rng.normal(0.0, noise.sigma, size=y_clean.shape) if noise.sigma > 0 else y_clean.copy()
    n_out = int(round(noise.outlier_fraction * n))
    mask = np.zeros(n, dtype=bool)
    if n_out:
        idx = rng.choice(n, size=n_out, replace=False)
        mask[idx] = True
        y[idx] = rng.uniform(noise.outlier_low, noise.outlier_high, size=(n_out,) + y_clean.shape[1:])
    return y.astype(np.float32), mask


def sinusoid_target(x: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The toy of the TOR paper: y = A * sin(f * x + phase)."""
    return (cfg.amplitude * np.sin(cfg.frequency * x + cfg.phase)).astype(np.float32)


def make_sinusoid(cfg: DataConfig, seed: int) -> Splits:
    # Separate streams for inputs and for noise: changing the noise settings never moves the
    # inputs, so an "oracle" run with noise switched off sees exactly the same x.
    rng_x = np.random.default_rng([seed, 0])
    rng_noise = np.random.default_rng([seed, 1])
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    x_raw = {s: rng_x.uniform(cfg.x_min, cfg.x_max, size=(n, 1)).astype(np.float32) for s, n in sizes.items()}
    y_clean = {s: sinusoid_target(x_raw[s], cfg) for s in SPLITS}
    y, outlier = {}, {}
    for s in ("train", "val"):
        y[s], outlier[s] = inject_noise(y_clean[s], cfg.noise, rng_noise)
    y["test"], outlier["test"] = y_clean["test"].copy(), np.zeros(cfg.n_test, dtype=bool)
    return _normalised(x_raw, y, y_clean, outlier)


def _normalised(x_raw, y, y_clean, outlier) -> Splits:
    """Standardise with training statistics: per feature for vectors, per channel for (C, H, W) images."""
    train = x_raw["train"]
    axes = (0,) if train.ndim == 2 else (0, *range(2, train.ndim))
    mean = train.mean(axis=axes)
    std = train.std(axis=axes)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    shape = (1, -1) + (1,) * (train.ndim - 2)
    x = {s: ((v - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32) for s, v in x_raw.items()}
    return Splits(x=x, y=y, y_clean=y_clean, outlier=outlier, x_mean=mean.astype(np.float32), x_std=std, x_raw=x_raw)


def make_digits_rotation(cfg: DataConfig, seed: int) -> Splits:
    """Real images: scikit-learn's bundled 8x8 handwritten digits, resized to ``image_size``, each
    sample rotated by an angle drawn from [-max_angle, max_angle]; the target is that angle in degrees.

    The 1,797 digit images are split 60/15/25 % into train/val/test *by image* (a digit never appears
    rotated in two splits); each split then draws ``n_*`` (image, angle) samples. Inputs are
    (N, 1, image_size, image_size) float32 (NCHW), pixel values scaled to [0, 1] before standardising.
    """
    from scipy import ndimage
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8), ships inside scikit-learn
    zoom = cfg.image_size / 8.0
    images = np.stack([ndimage.zoom(im, zoom, order=1) for im in images]).clip(0, 1)
    rng_x = np.random.default_rng([seed, 0])
    rng_noise = np.random.default_rng([seed, 1])
    order = rng_x.permutation(len(images))
    n_tr, n_va = int(0.6 * len(images)), int(0.15 * len(images))
    pools = {"train": order[:n_tr], "val": order[n_tr : n_tr + n_va], "test": order[n_tr + n_va :]}
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    x_raw, y_clean = {}, {}
    for s in SPLITS:
        idx = rng_x.choice(pools[s], size=sizes[s], replace=True)
        angles = rng_x.uniform(-cfg.max_angle, cfg.max_angle, size=sizes[s]).astype(np.float32)
        rotated = [ndimage.rotate(images[i], a, reshape=False, order=1, mode="constant") for i, a in zip(idx, angles)]
        x_raw[s] = np.stack(rotated)[:, None].astype(np.float32).clip(0, 1)
        y_clean[s] = angles.reshape(-1, 1)
    y, outlier = {}, {}
    for s in ("train", "val"):
        y[s], outlier[s] = inject_noise(y_clean[s], cfg.noise, rng_noise)
    y["test"], outlier["test"] = y_clean["test"].copy(), np.zeros(cfg.n_test, dtype=bool)
    return _normalised(x_raw, y, y_clean, outlier)


DATASETS: dict[str, Callable[[DataConfig, int], Splits]] = {
    "sinusoid": make_sinusoid,
    "digits_rotation": make_digits_rotation,
}

INPUT_SHAPES: dict[str, Callable[[DataConfig], tuple[int, ...]]] = {
    "sinusoid": lambda cfg: (1,),
    "digits_rotation": lambda cfg: (1, cfg.image_size, cfg.image_size),
}

# what one output means, for the report and the Android bundle's metadata
OUTPUT_MEANING: dict[str, str] = {
    "sinusoid": "y = A*sin(f*x + phase), label units",
    "digits_rotation": "in-plane rotation angle of the digit, degrees (counter-clockwise)",
}


def make_dataset(cfg: DataConfig, seed: int) -> Splits:
    return DATASETS[cfg.name](cfg, seed)


def input_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one input (without the batch axis), known before any data is made."""
    return INPUT_SHAPES[cfg.name](cfg)
