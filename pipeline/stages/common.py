"""What several stages share: the data's dimensions, label standardisation, and test metrics."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.checkpoints import Shape
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.methods import METHODS
from pipeline.metrics import task_metrics


EARLY_BEST_SHARE = 0.05  # a best epoch within the first 5 % of the epochs run (at least the first 2) is suspect


def early_best(hist) -> int | None:
    """The early-epoch limit when a run of at least 10 epochs had its best validation epoch within
    its first EARLY_BEST_SHARE of the epochs run (at least the first 2): it may have learned little."""
    early = max(2, int(EARLY_BEST_SHARE * hist.epochs_run))
    return early if hist.epochs_run >= 10 and hist.best_epoch + 1 <= early else None


DIVERGED = "training diverged or the inputs are extreme; lower the learning rate or check the data"


def dims(splits: Splits) -> tuple[Shape, int]:
    return tuple(splits.x["train"].shape[1:]), splits.out_features


def label_scale(splits: Splits) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of regression labels learned in standardised units, or None (identity)."""
    if splits.task != "regression" or splits.y_mean is None:
        return None
    return splits.y_mean.astype(np.float32), splits.y_std.astype(np.float32)


def scaled(arr: np.ndarray, scale) -> np.ndarray:
    return arr if scale is None else ((arr - scale[0]) / scale[1]).astype(np.float32)


@torch.no_grad()
def fold_scale(layer: torch.nn.Linear, scale) -> None:
    """Make an output layer trained on (y - mean) / std predict y: W <- std * W, b <- std * b + mean."""
    if scale is None:
        return
    mean, std = (torch.as_tensor(v, dtype=layer.weight.dtype) for v in scale)
    layer.weight.mul_(std.reshape(-1, 1))
    layer.bias.mul_(std).add_(mean)


def deployed_abstains(cfg: Config) -> bool:
    """True when the deployed student has an extra 'abstain' output (the gambler methods)."""
    return METHODS[cfg.distill.method].abstains()


def metrics_of(cfg: Config, splits: Splits, pred: np.ndarray, abstain: bool | None = None) -> dict:
    """The task's metrics of predictions on the clean test set."""
    return task_metrics(pred, splits.y_clean["test"], splits.task,
                        deployed_abstains(cfg) if abstain is None else abstain, splits.angles, splits.output_names)
