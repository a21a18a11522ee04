"""Stage ``data``: make the data set (or read yours), inject label noise, write ``data.npz``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.config import Config
from pipeline.data import OUTPUT_MEANING, Splits, make_dataset
from pipeline.data.preprocessing import build_spec
from pipeline.io import atomic_write_json, sha256_file
from pipeline.metrics import regression_metrics, require_finite
from pipeline.runner import Context


def stage_data(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = make_dataset(cfg.data, cfg.seed)
    check_splits_finite(splits)
    if splits.preprocessing is None:  # a built-in data set: numeric inputs x (x0, x1, ...) or images
        splits.preprocessing = build_spec(splits)
    splits.save(ctx.path("data.npz"))
    summary = {
        "dataset": cfg.data.name,
        "function": (f"y = {cfg.data.amplitude} * sin({cfg.data.frequency} * x + {cfg.data.phase})"
                     if cfg.data.name == "sinusoid" else splits.description or OUTPUT_MEANING[cfg.data.name]),
        "output_names": splits.output_names,
        "input_shape": list(splits.x["train"].shape[1:]),
        "sizes": {s: int(v.shape[0]) for s, v in splits.x.items()},
        "task": splits.task,
        "outliers": {s: int(v.sum()) for s, v in splits.outlier.items()},
        **({"noisy_label_rmse_vs_clean": {
            s: regression_metrics(splits.y[s], splits.y_clean[s])["rmse"] for s in ("train", "val")}}
           if splits.task == "regression" else
           {"n_classes": splits.n_classes, "label_noise": cfg.data.noise.label_noise,
            "label_noise_type": cfg.data.noise.label_noise_type,
            "flipped_share": {s: float(splits.outlier[s].mean()) for s in ("train", "val")}}),
        "x_mean": splits.x_mean, "x_std": splits.x_std,
        "preprocessing": splits.preprocessing,
        # built-in sets know their clean test labels and their outliers; your data's labels are as given,
        # and only outliers injected here (data.noise) are known
        "test_labels": "as given" if cfg.data.name == "source" else "clean",
        "outliers_known": cfg.data.name != "source" or bool(
            cfg.data.noise.outlier_fraction > 0 or cfg.data.noise.label_noise > 0),
        **({"out_of_range_inputs": out_of_range(splits)} if splits.x_raw["train"].ndim == 2 else {}),
    }
    atomic_write_json(ctx.path("data.json"), summary)
    return ["data.npz", "data.json"]


def out_of_range(splits: Splits) -> dict:
    """Rows per split with a numeric feature outside the training range (one-hot columns are 0/1 by
    construction): predictions there are extrapolations."""
    numeric = [f["input_index"] for f in (splits.preprocessing or {}).get("features", []) if f["type"] == "numeric"]
    if not numeric:
        return {}
    train = splits.x_raw["train"][:, numeric]
    lo, hi = train.min(axis=0), train.max(axis=0)
    return {s: int(((splits.x_raw[s][:, numeric] < lo) | (splits.x_raw[s][:, numeric] > hi)).any(axis=1).sum())
            for s in ("val", "test")}


def check_splits_finite(splits: Splits) -> None:
    """Inputs (raw and standardised) and labels of every split are finite: a value that overflows
    float32 (|x| > 3.4e38) or a standardisation that does (huge but finite values) stops here."""
    for s in ("train", "val", "test"):
        require_finite(splits.x_raw[s], f"data: raw inputs of the {s} split", "values must fit float32 (|x| < 3.4e38)")
        require_finite(splits.x[s], f"data: standardised inputs of the {s} split",
                       "the inputs are too large to standardise in float32; rescale them")
        for name, arr in (("labels", splits.y[s]), ("clean labels", splits.y_clean[s])):
            require_finite(arr, f"data: {name} of the {s} split", "values must fit float32 (|y| < 3.4e38)")


def data_environment(cfg: Config) -> str:
    """What the data stage reads outside the run directory: the user's data files (their sha256; for
    folders of images or .mat files, every file's name, size and modification time)."""
    src = cfg.data.source
    if src is None:
        return ""

    if src.kind in ("csv", "npz"):
        p = Path(src.path)
        return sha256_file(p) if p.is_file() else "missing"
    root = Path(src.root)
    files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else []
    listing = "\n".join(f"{q.relative_to(root)}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files)
    return hashlib.sha256(listing.encode()).hexdigest()
