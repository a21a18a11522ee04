"""Real images: scikit-learn's 1,797 bundled 8x8 handwritten digits, as a regression (the angle each
image was rotated by: ``digits_rotation``) and as a 10-class classification (``digits``)."""

from __future__ import annotations

import numpy as np

from pipeline.data.options import DataOptions
from pipeline.data.splits import SPLITS, Splits, inject_label_noise, normalised, noisy_train_val

N_CLASSES = 10  # the digits 0..9


def make_digits_rotation(cfg: DataOptions, seed: int) -> Splits:
    """Real images: scikit-learn's bundled 8x8 handwritten digits, resized to ``image_size``, each
    sample rotated by an angle drawn from [-max_angle, max_angle]; the target is that angle in degrees.

    The 1,797 digit images are split 60/15/25 % into train/val/test *by image* (a digit never appears
    rotated in two splits); each split then draws ``n_*`` (image, angle) samples. Inputs are
    (N, 1, image_size, image_size) float32 (NCHW), pixel values scaled to [0, 1] before standardising.
    """
    # deferred: scipy.ndimage and scikit-learn take about a second to import, only these data sets need them
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
    y, outlier = noisy_train_val(y_clean, cfg.noise, rng_noise)
    return normalised(x_raw, y, y_clean, outlier)


def _digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    # deferred: scipy.ndimage and scikit-learn take about a second to import, only these data sets need them
    from scipy import ndimage
    from sklearn.datasets import load_digits

    d = load_digits()  # 1,797 real 8x8 images; ships inside scikit-learn
    images = d.images.astype(np.float32) / 16.0
    if size != 8:
        images = np.stack([ndimage.zoom(im, size / 8.0, order=1) for im in images]).clip(0, 1)
    return images.astype(np.float32), d.target.astype(np.int64)


def make_digits(cfg: DataOptions, seed: int) -> Splits:
    """Classification of scikit-learn's 1,797 real 8x8 digit images (10 classes), resized to
    ``image_size``. Every image is used once: a stratified 60/15/25 % train/val/test split (``n_train``
    etc. do not apply). Train and val labels are flipped at rate ``noise.label_noise``; test stays clean."""
    from sklearn.model_selection import train_test_split  # deferred: scikit-learn is slow to import

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
        y[s], flipped[s] = inject_label_noise(y_clean[s], cfg.noise.label_noise, cfg.noise.label_noise_type,
                                              N_CLASSES, rng_noise)
    y["test"], flipped["test"] = y_clean["test"].copy(), np.zeros(len(te), dtype=bool)
    return normalised(x_raw, y, y_clean, flipped, n_classes=N_CLASSES)
