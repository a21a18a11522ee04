"""Loading a user's local torchvision weights file into pocketkd's own architecture definitions.

Nothing is ever downloaded: torchvision's hub names (``"IMAGENET1K_V1"``, ``"DEFAULT"``, ...) are
refused with one ``ValueError`` that asks for a local file. A file saved from torchvision
(``torch.save(model.state_dict(), path)``) is read with ``torch.load(..., weights_only=True)``;
tensors whose name or shape does not fit (e.g. the 1000-class classifier under a different head) are
skipped and named in the returned report and in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)



def check_weights_arg(weights: str | os.PathLike | None) -> Path | None:
    """``None`` (random initialisation) or the path of an existing local file; anything else raises."""
    if weights is None:
        return None
    path = Path(weights)
    if path.is_file():
        return path
    raise ValueError(
        f"weights={str(weights)!r}: pocketkd never downloads weights (no hub, no network); pass the path "
        "of a local state-dict file saved with torch.save(model.state_dict(), path) instead")


def _prefix(model_keys: list[str], file_keys: list[str]) -> str:
    """The prefix under which the file's keys sit in ``model`` (e.g. ``backbone.net.`` in a student)."""
    model_set = set(model_keys)
    for key in file_keys:
        if key in model_set:
            return ""
        for mk in model_keys:
            if mk.endswith("." + key):
                return mk[: -len(key)]
    return ""


def load_torchvision_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load the tensors of a local torchvision state-dict file that fit ``model`` (by name and shape).

    ``model`` may be the network itself or any module holding it (a pocketkd backbone or student):
    the prefix is found from the key names. Returns ``{"loaded": [...], "skipped": [...],
    "missing": [...]}`` -- file keys loaded, file keys skipped (absent from the model or of another
    shape), and model keys the file did not provide -- and logs the skipped and missing names."""
    path = check_weights_arg(path)
    if path is None:
        raise ValueError("load_torchvision_weights needs a local file path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    own = model.state_dict()
    prefix = _prefix(list(own), list(state))
    kept, skipped = {}, []
    for key, tensor in state.items():
        target = own.get(prefix + key)
        if target is not None and tuple(target.shape) == tuple(tensor.shape):
            kept[prefix + key] = tensor
        else:
            skipped.append(key)
    missing = [k for k in own if k not in kept]
    model.load_state_dict(kept, strict=False)
    if skipped:
        log.warning("%s: skipped %d tensor(s) that do not fit the model: %s", path, len(skipped), ", ".join(skipped))
    if missing:
        log.warning("%s: %d model tensor(s) keep their initialisation: %s", path, len(missing), ", ".join(missing))
    return {"loaded": [k[len(prefix):] for k in kept], "skipped": skipped, "missing": missing}


def apply_weights(model: nn.Module, weights: str | os.PathLike | None) -> nn.Module:
    """What the architecture constructors do with their ``weights`` argument."""
    if check_weights_arg(weights) is not None:
        load_torchvision_weights(model, weights)
    return model
