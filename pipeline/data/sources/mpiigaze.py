"""``kind: mpiigaze``: MPIIGaze's normalised eye patches (Data/Normalized/pNN/dayNN.mat), gaze as
(pitch, yaw) radians, leave-one-person-out splits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.data.sources.common import DataError, SourceData, need_dir, one_line, resolve_path, split_sizes
from pipeline.data.sources.gaze import pitchyaw_from_vector
from pipeline.options import Strict


class MPIIGazeSource(Strict):
    """MPIIGaze normalised eye patches; leave-one-person-out splits."""

    kind: Literal["mpiigaze"] = Field(description="source type")
    root: str = Field(description="directory holding Data/Normalized/pNN/dayNN.mat, or Normalized/ itself")
    test_person: str = Field("p14", description="person held out for test")
    val_person: str = Field("p13", description="person held out for validation")
    eyes: Literal["left", "right", "both"] = Field("both", description="which eye patches (both: right ones mirrored)")
    max_per_person: int | None = Field(
        None,
        ge=1,
        description="random subsample of at most this many patches per person; null: all",
    )


_PERSON = re.compile(r"^p\d+$")


def _persons_dir(root: Path, shown: str) -> Path:
    need_dir(root, f"mpiigaze root {shown}")
    tried = [root, root / "Normalized", root / "Data" / "Normalized"]
    for d in tried:
        if d.is_dir() and any(c.is_dir() and _PERSON.match(c.name) for c in d.iterdir()):
            return d
    raise DataError(
        f"mpiigaze root {shown}: no person directories p00, p01, ... found (looked in "
        f"{', '.join(str(d) for d in tried)}); point root at MPIIGaze/ or MPIIGaze/Data/Normalized"
    )


def _mat_eye(data: Any, eye: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    side = getattr(data, eye, None)
    missing = (
        [f"data.{eye}"]
        if side is None
        else [f"data.{eye}.{f}" for f in ("image", "gaze", "pose") if not hasattr(side, f)]
    )
    if missing:
        raise DataError(
            f"{what}: missing field {', '.join(missing)}; expected a struct data with fields left and right, each "
            f"holding image (N, H, W), gaze (N, 3) and pose (N, 3) (the MPIIGaze Data/Normalized layout)"
        )
    image, gaze = np.asarray(side.image), np.asarray(side.gaze, dtype=np.float64)
    if gaze.ndim == 1 and gaze.size == 3:  # squeeze_me drops the sample axis when N == 1
        gaze = gaze[None]
        image = image[None] if image.ndim == 2 else image
    if gaze.size == 0 and image.size == 0:
        return np.zeros((0, 1, 1), np.uint8), np.zeros((0, 3))
    if image.ndim != 3 or gaze.ndim != 2 or gaze.shape[1] != 3 or len(image) != len(gaze):
        raise DataError(
            f"{what}: data.{eye}.image has shape {image.shape} and data.{eye}.gaze {gaze.shape}; expected "
            f"(N, H, W) and (N, 3) with the same N"
        )
    if image.dtype.kind not in "biuf":
        raise DataError(f"{what}: data.{eye}.image has dtype {image.dtype}; expected uint8 grayscale pixels")
    norms = np.linalg.norm(gaze, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise DataError(
            f"{what}: data.{eye}.gaze sample {bad[0]} (0-based) is zero or not finite ({len(bad)} such samples); "
            f"gaze must be a non-zero 3-D direction"
        )
    return image, gaze


def _load_person(pdir: Path, cfg: MPIIGazeSource, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All eye patches of one person as (n, 1, H, W) float32 in [0, 1] and (n, 2) pitch/yaw."""
    # deferred: scipy.io takes over half a second to import, only this kind needs it
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    mats = sorted(pdir.glob("*.mat"))
    if not mats:
        raise DataError(f"mpiigaze {pdir}: no .mat files (expected day01.mat, day02.mat, ...)")
    images, pys = [], []
    for m in mats:
        what = f"mpiigaze {pdir.name}/{m.name}"
        try:
            mat = loadmat(str(m), struct_as_record=False, squeeze_me=True)
        except NotImplementedError:
            raise DataError(f"{what}: MATLAB v7.3 (HDF5) files are not supported; save as -v7 or older") from None
        except (MatReadError, ValueError, OSError, TypeError) as e:
            raise DataError(f"{what}: cannot be read as a MATLAB .mat file ({one_line(e)})") from None
        if "data" not in mat:
            found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
            raise DataError(
                f"{what}: no variable 'data' (variables found: {found}); expected the MPIIGaze struct "
                f"data.left/right.image/gaze/pose"
            )
        eyes = ["left", "right"] if cfg.eyes == "both" else [cfg.eyes]
        for eye in eyes:
            image, gaze = _mat_eye(mat["data"], eye, what)
            if not len(image):
                continue
            py = pitchyaw_from_vector(gaze)
            if eye == "right" and cfg.eyes == "both":
                image = image[:, :, ::-1]  # mirror the right eye so it looks like a left eye ...
                py = py * np.array([1.0, -1.0])  # ... and mirror its gaze: g_x -> -g_x negates yaw
            images.append(image)
            pys.append(py)
    shapes = {im.shape[1:] for im in images}
    if len(shapes) > 1:
        raise DataError(f"mpiigaze {pdir.name}: eye patches of different sizes {sorted(shapes)}; expected one size")
    if not images:
        raise DataError(f"mpiigaze {pdir.name}: the .mat files hold no samples")
    image = np.concatenate(images)
    py = np.concatenate(pys)
    if cfg.max_per_person is not None and len(image) > cfg.max_per_person:
        keep = np.sort(rng.choice(len(image), size=cfg.max_per_person, replace=False))
        image, py = image[keep], py[keep]
    x = image.astype(np.float32)
    if image.dtype.kind in "biu" or x.max() > 1.0:
        x /= 255.0
    return np.clip(x, 0.0, 1.0)[:, None], py.astype(np.float32)


def load_mpiigaze(cfg: MPIIGazeSource, seed: int, base: Path | None) -> SourceData:
    pdir = _persons_dir(resolve_path(cfg.root, base), cfg.root)
    persons = sorted(c.name for c in pdir.iterdir() if c.is_dir() and _PERSON.match(c.name))
    what = f"mpiigaze {cfg.root}"
    for key in ("test_person", "val_person"):
        if getattr(cfg, key) not in persons:
            raise DataError(f"{what}: {key} '{getattr(cfg, key)}' not found; persons found: {', '.join(persons)}")
    if cfg.test_person == cfg.val_person:
        raise DataError(f"{what}: test_person and val_person are both '{cfg.test_person}'; they must differ")
    train_persons = [p for p in persons if p not in (cfg.test_person, cfg.val_person)]
    if not train_persons:
        raise DataError(f"{what}: only persons {', '.join(persons)}; no person is left for training")
    loaded = {}
    for p in persons:
        # One stream per person: which persons exist never changes another person's subsample.
        loaded[p] = _load_person(pdir / p, cfg, np.random.default_rng([seed, int(p[1:])]))
    if len({v[0].shape[2:] for v in loaded.values()}) > 1:
        sizes = {p: v[0].shape[2:] for p, v in loaded.items()}
        raise DataError(f"{what}: persons have eye patches of different sizes {sizes}; expected one size")
    groups = {
        "train": train_persons,
        "val": [cfg.val_person],
        "test": [cfg.test_person],
    }
    x = {s: np.concatenate([loaded[p][0] for p in ps]) for s, ps in groups.items()}
    y = {s: np.concatenate([loaded[p][1] for p in ps]) for s, ps in groups.items()}
    eyes = "left and mirrored right eyes" if cfg.eyes == "both" else f"{cfg.eyes} eyes"
    return SourceData(
        x=x,
        y=y,
        output_names=["pitch", "yaw"],
        standardise=None,
        angles=True,
        description=(
            f"mpiigaze {cfg.root}: {len(persons)} persons, {eyes}, test {cfg.test_person}, val {cfg.val_person}, "
            f"train {len(train_persons)} persons, {split_sizes(x)}"
        ),
        feature_names=[],
    )
