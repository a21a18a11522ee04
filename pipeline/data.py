"""Data sets and annotation-error (label noise) injection.

A data set is a function ``make(cfg: DataConfig, seed: int) -> Splits`` registered in
``DATASETS``. Noisy labels are what training sees; the clean labels are kept for evaluation
only, and the test split is always clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    n_classes: int = 0  # 0: regression, y (n, k) float32; m > 0: classification, y (n,) int64 class indices
    output_names: list[str] = field(default_factory=list)  # k names of the regression outputs
    angles: bool = False  # the outputs are (pitch, yaw) gaze angles in radians: angular error is reported
    description: str = ""  # where the data came from, one line
    # Regression labels are learned in standardised units, (y - y_mean) / y_std, and the output layers
    # are rescaled afterwards, so deployed models predict in label units. Identity for the built-in sets.
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None

    @property
    def task(self) -> str:
        return "classification" if self.n_classes else "regression"

    @property
    def out_features(self) -> int:
        """Outputs of a model on this data: m logits, or k regression targets."""
        return self.n_classes or int(self.y["train"].shape[1])

    def save(self, path: Path) -> None:
        arrays = {"x_mean": self.x_mean, "x_std": self.x_std, "n_classes": np.array(self.n_classes),
                  "output_names": np.array(self.output_names, dtype=str), "angles": np.array(self.angles),
                  "description": np.array(self.description)}
        if self.y_mean is not None:
            arrays.update(y_mean=self.y_mean, y_std=self.y_std)
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
                n_classes=int(z["n_classes"]) if "n_classes" in z.files else 0,
                output_names=[str(v) for v in z["output_names"]] if "output_names" in z.files else [],
                angles=bool(z["angles"]) if "angles" in z.files else False,
                description=str(z["description"]) if "description" in z.files else "",
                y_mean=z["y_mean"] if "y_mean" in z.files else None,
                y_std=z["y_std"] if "y_std" in z.files else None,
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


def inject_label_noise(labels: np.ndarray, rate: float, kind: str, n_classes: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly round(rate * n) labels: ``symmetric`` to a uniformly drawn *other* class, ``pair`` from
    class c to c + 1 (mod m). Returns (noisy labels, flipped mask)."""
    y = labels.astype(np.int64).copy()
    n = len(y)
    mask = np.zeros(n, dtype=bool)
    k = int(round(rate * n))
    if k:
        idx = rng.choice(n, size=k, replace=False)
        mask[idx] = True
        if kind == "pair":
            y[idx] = (y[idx] + 1) % n_classes
        elif kind == "symmetric":
            y[idx] = (y[idx] + rng.integers(1, n_classes, size=k)) % n_classes  # never the true class
        else:
            raise ValueError(f"unknown label noise {kind!r}; allowed: symmetric, pair")
    return y, mask


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


def _normalised(x_raw, y, y_clean, outlier, n_classes: int = 0, standardise: np.ndarray | None = None) -> Splits:
    """Standardise with training statistics: per feature for vectors, per channel for (C, H, W) images.
    ``standardise`` (vectors) marks the columns to standardise; the others (one-hot) are left as they are."""
    train = x_raw["train"]
    axes = (0,) if train.ndim == 2 else (0, *range(2, train.ndim))
    mean = train.mean(axis=axes)
    std = train.std(axis=axes)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    if standardise is not None:
        mean = np.where(standardise, mean, 0.0)
        std = np.where(standardise, std, 1.0).astype(np.float32)
    shape = (1, -1) + (1,) * (train.ndim - 2)
    x = {s: ((v - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32) for s, v in x_raw.items()}
    return Splits(x=x, y=y, y_clean=y_clean, outlier=outlier, x_mean=mean.astype(np.float32), x_std=std, x_raw=x_raw,
                  n_classes=n_classes)


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


def _digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()  # 1,797 real 8x8 images; ships inside scikit-learn
    images = d.images.astype(np.float32) / 16.0
    if size != 8:
        images = np.stack([ndimage.zoom(im, size / 8.0, order=1) for im in images]).clip(0, 1)
    return images.astype(np.float32), d.target.astype(np.int64)


def make_digits(cfg: DataConfig, seed: int) -> Splits:
    """Classification of scikit-learn's 1,797 real 8x8 digit images (10 classes), resized to
    ``image_size``. Every image is used once: a stratified 60/15/25 % train/val/test split (``n_train``
    etc. do not apply). Train and val labels are flipped at rate ``noise.label_noise``; test stays clean."""
    from sklearn.model_selection import train_test_split

    images, labels = _digit_images(cfg.image_size)
    idx = np.arange(len(labels))
    tr, rest = train_test_split(idx, train_size=0.6, stratify=labels, random_state=seed)
    va, te = train_test_split(rest, train_size=0.375, stratify=labels[rest], random_state=seed)
    pools = {"train": tr, "val": va, "test": te}
    rng_noise = np.random.default_rng([seed, 1])
    x_raw = {s: images[p][:, None] for s, p in pools.items()}
    y_clean = {s: labels[p] for s, p in pools.items()}
    y, flipped = {}, {}
    for s in ("train", "val"):
        y[s], flipped[s] = inject_label_noise(y_clean[s], cfg.noise.label_noise, cfg.noise.label_noise_type, 10,
                                              rng_noise)
    y["test"], flipped["test"] = y_clean["test"].copy(), np.zeros(len(te), dtype=bool)
    return _normalised(x_raw, y, y_clean, flipped, n_classes=10)


def make_source(cfg: DataConfig, seed: int) -> Splits:
    """Your own data (``data.source``, docs/DATA.md): read and validated by ``pipeline.sources``; annotation
    error is injected into train/val labels only if ``data.noise`` is set; labels are learned standardised."""
    src = _load_source(cfg, seed)
    rng_noise = np.random.default_rng([seed, 1])
    y, outlier = {}, {}
    for s in ("train", "val"):
        y[s], outlier[s] = inject_noise(src.y[s], cfg.noise, rng_noise)
    y["test"], outlier["test"] = src.y["test"].copy(), np.zeros(len(src.y["test"]), dtype=bool)
    splits = _normalised(src.x, y, src.y, outlier, standardise=src.standardise)
    splits.output_names, splits.angles, splits.description = list(src.output_names), bool(src.angles), src.description
    y_std = y["train"].std(axis=0)
    splits.y_mean = y["train"].mean(axis=0).astype(np.float32)
    splits.y_std = np.where(y_std > 0, y_std, 1.0).astype(np.float32)
    return splits


def make_pose(cfg: DataConfig, seed: int) -> Splits:
    """Roll (deg) and log2-scale of real photographs (``pipeline.pose_data``), split by source image.
    ``data.noise`` is in units of each output's clean training-label std (the outputs have different
    units); labels are learned standardised and every exported file predicts in label units."""
    from pipeline.pose_data import make_pose as render

    p = cfg.pose
    d = render(cfg.n_train, cfg.n_val, cfg.n_test, size=cfg.image_size, seed=seed, source=p.source,
               channels=p.channels, max_roll=p.max_roll, max_log2_scale=p.max_log2_scale, max_shift=p.max_shift)
    x_raw = {s: d[f"x_{s}"].astype(np.float32) for s in SPLITS}
    y_clean = {s: d[f"y_{s}"].astype(np.float32) for s in SPLITS}
    spread = y_clean["train"].std(axis=0)
    spread = np.where(spread > 0, spread, 1.0).astype(np.float32)
    rng_noise = np.random.default_rng([seed, 1])
    y, outlier = {}, {}
    for s in ("train", "val"):
        noisy, outlier[s] = inject_noise(y_clean[s] / spread, cfg.noise, rng_noise)
        y[s] = (noisy * spread).astype(np.float32)
    y["test"], outlier["test"] = y_clean["test"].copy(), np.zeros(cfg.n_test, dtype=bool)
    splits = _normalised(x_raw, y, y_clean, outlier)
    splits.output_names = [f"{n} ({u})" for n, u in zip(d["output_names"], d["units"])]
    splits.description = d["description"]
    y_std = y["train"].std(axis=0)
    splits.y_mean = y["train"].mean(axis=0).astype(np.float32)
    splits.y_std = np.where(y_std > 0, y_std, 1.0).astype(np.float32)
    return splits


_SOURCE_CACHE: dict[str, tuple[int, object]] = {}


def _load_source(cfg: DataConfig, seed: int | None = None):
    """One read of a source per process: the CLI probes its shape (any split will do, ``seed=None``)
    before the data stage reads it with the run's seed."""
    import json

    from pipeline.sources import load_source

    key = json.dumps(cfg.source.model_dump(mode="json"), sort_keys=True)
    cached = _SOURCE_CACHE.get(key)
    if cached is None or (seed is not None and cached[0] != seed):
        _SOURCE_CACHE.clear()
        _SOURCE_CACHE[key] = cached = (seed or 0, load_source(cfg.source, seed or 0))
    return cached[1]


def _source_shape(cfg: DataConfig) -> tuple[int, ...]:
    return tuple(_load_source(cfg).x["train"].shape[1:])


DATASETS: dict[str, Callable[[DataConfig, int], Splits]] = {
    "sinusoid": make_sinusoid,
    "digits_rotation": make_digits_rotation,
    "digits": make_digits,
    "pose": make_pose,
    "source": make_source,
}

INPUT_SHAPES: dict[str, Callable[[DataConfig], tuple[int, ...]]] = {
    "sinusoid": lambda cfg: (1,),
    "digits_rotation": lambda cfg: (1, cfg.image_size, cfg.image_size),
    "digits": lambda cfg: (1, cfg.image_size, cfg.image_size),
    "pose": lambda cfg: (cfg.pose.channels, cfg.image_size, cfg.image_size),
    "source": _source_shape,
}

# classification data sets and their number of classes; every other data set is a regression
N_CLASSES: dict[str, int] = {"digits": 10}

# what one output means, for the report and the Android bundle's metadata
OUTPUT_MEANING: dict[str, str] = {
    "sinusoid": "y = A*sin(f*x + phase), label units",
    "digits_rotation": "in-plane rotation angle of the digit, degrees (counter-clockwise)",
    "digits": "logits of the 10 digit classes 0..9 (softmax for probabilities)",
    "pose": "in-plane roll of the crop (degrees, counter-clockwise) and its log2 scale (then shift x, y in px "
            "when data.pose.max_shift > 0)",
    "source": "the label columns of your data, in their own units",
}


def task_of(cfg: DataConfig) -> str:
    return "classification" if N_CLASSES.get(cfg.name) else "regression"


def n_outputs(cfg: DataConfig) -> int:
    """Outputs of a model on this data, known before training (m logits, or k regression targets)."""
    if cfg.name == "source":
        return int(_load_source(cfg).y["train"].shape[1])
    if cfg.name == "pose":
        return 2 + (2 if cfg.pose.max_shift > 0 else 0)
    return N_CLASSES.get(cfg.name, 1)


def make_dataset(cfg: DataConfig, seed: int) -> Splits:
    return DATASETS[cfg.name](cfg, seed)


def input_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one input (without the batch axis), known before any data is made."""
    return INPUT_SHAPES[cfg.name](cfg)
