"""What every data set builder returns (``Splits``), and what they share: annotation-error (label
noise) injection and standardisation with the training statistics.

Noisy labels are what training sees; the clean labels are kept for evaluation only, and the test
split is always clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import json

import numpy as np

from pipeline.data.options import NoiseConfig
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
    # what an app repeats to build an input from a raw record (pipeline/data/preprocessing.py)
    preprocessing: dict | None = None

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
        if self.preprocessing is not None:
            arrays.update(preprocessing=np.array(json.dumps(self.preprocessing, sort_keys=True)))
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
                preprocessing=json.loads(str(z["preprocessing"])) if "preprocessing" in z.files else None,
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


def noisy_train_val(y_clean: dict[str, np.ndarray], noise: NoiseConfig,
                    rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Regression labels as training sees them: ``inject_noise`` on train, then on val (one stream, in
    that order); test labels stay clean. Returns (labels, outlier masks) per split."""
    y, outlier = {}, {}
    for s in ("train", "val"):
        y[s], outlier[s] = inject_noise(y_clean[s], noise, rng)
    y["test"], outlier["test"] = y_clean["test"].copy(), np.zeros(len(y_clean["test"]), dtype=bool)
    return y, outlier


def normalised(x_raw, y, y_clean, outlier, n_classes: int = 0, standardise: np.ndarray | None = None) -> Splits:
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


def learn_standardised(splits: Splits) -> Splits:
    """Labels are learned standardised with the (noisy) training labels' mean and std (a zero std is 1)."""
    y_std = splits.y["train"].std(axis=0)
    splits.y_mean = splits.y["train"].mean(axis=0).astype(np.float32)
    splits.y_std = np.where(y_std > 0, y_std, 1.0).astype(np.float32)
    return splits
