"""The ``pose`` data set: a real multi-output image regression task in the box, in-plane pose (roll,
scale) of real photographs.

Like head-pose estimation from a face crop (the setting of the paper behind TOR: a ResNet teacher
distilled into a MobileNet student on Multi-PIE head pose), but with labels that are exact by
construction: each sample is a real image crop, rotated by a known in-plane angle (roll, degrees,
U[-max_roll, max_roll]) and scaled by a known factor 2**log2_scale (U[-max_log2_scale,
max_log2_scale]), optionally shifted by a known translation (pixels), rendered at ``size`` x ``size``
with one ``scipy.ndimage.affine_transform`` (bilinear).

Sources, all shipping inside scikit-image (nothing is downloaded):

- ``faces``: the 100 real face crops (25x25, grey) of Labeled Faces in the Wild in
  ``skimage.data.lfw_subset()`` (its first 100 images; the other 100 are non-face patches).
  Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007. Each face is one source image.
- ``photos``: scikit-image's bundled colour photographs (astronaut, chelsea, coffee, hubble deep field,
  immunohistochemistry, motorcycle stereo pair -- one source --, retina, rocket); crops are drawn at
  random positions, far enough from the border that the rotated/scaled view stays inside.

The split is *by source image*: a seeded permutation assigns each source to train, val or test, so
no test photograph (or face) is ever seen in training. Grey sources are replicated to RGB when
``channels=3``; colour sources are converted to luminance when ``channels=1``.

``make_pose`` renders the clean data set (plain arrays, usable on its own); ``make_pose_dataset`` is
its row in the data set table: ``data.pose`` options in, ``Splits`` with annotation error out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage import data as skimage_data  # light: scikit-image loads its submodules on first use

from pipeline.data.options import DataOptions
from pipeline.data.splits import SPLITS, Splits, inject_noise, learn_standardised, normalised

FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
# (output name, unit)
ROLL = ("roll", "deg")
SCALE = ("log2_scale", "log2")
SHIFTS = (("shift_x", "px"), ("shift_y", "px"))
# scikit-image's bundled colour photographs: source name -> data functions (one scene may have two files)
PHOTOS = {
    "astronaut": ("astronaut",),
    "chelsea": ("chelsea",),
    "coffee": ("coffee",),
    "hubble_deep_field": ("hubble_deep_field",),
    "immunohistochemistry": ("immunohistochemistry",),
    "motorcycle": ("stereo_motorcycle",),
    "retina": ("retina",),
    "rocket": ("rocket",),
}
N_FACES = 100
LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # skimage.color.rgb2gray's weights
PHOTO_SIDE_IN_WINDOWS = 6  # photographs are resized so their shorter side is 6 crop windows


@dataclass
class Source:
    """One source image group: its images (H, W, 3) float32 in [0, 1] and the crop window side."""

    name: str
    kind: str  # "face" or "photo"
    images: list[np.ndarray]
    window: float  # side of the unrotated, unscaled view, in source pixels


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def load_faces() -> list[Source]:
    faces = skimage_data.lfw_subset()[:N_FACES]  # (100, 25, 25) float64 in [0, 1]
    return [Source(f"lfw_{i:03d}", "face", [_as_rgb(f)], float(f.shape[0])) for i, f in enumerate(faces)]


def load_photos(size: int) -> list[Source]:
    from scipy import ndimage  # deferred: scipy.ndimage takes half a second to import

    sources = []
    for name, fns in PHOTOS.items():
        images = []
        for fn in fns:
            out = getattr(skimage_data, fn)()
            for im in out[:2] if fn == "stereo_motorcycle" else [out]:  # (left, right, disparity)
                im = _as_rgb(im)
                factor = PHOTO_SIDE_IN_WINDOWS * size / min(im.shape[:2])
                if factor < 1:  # anti-aliased downsizing
                    im = ndimage.gaussian_filter(im, sigma=(0.5 / factor, 0.5 / factor, 0))
                images.append(ndimage.zoom(im, (factor, factor, 1), order=1).clip(0, 1))
        sources.append(Source(name, "photo", images, float(size)))
    return sources


def load_sources(source: str, size: int) -> list[Source]:
    if source == "faces":
        return load_faces()
    if source == "photos":
        return load_photos(size)
    if source == "both":
        return load_faces() + load_photos(size)
    raise ValueError(f"source must be 'faces', 'photos' or 'both', got {source!r}")


def render(image: np.ndarray, centre: tuple[float, float], window: float, size: int, roll_deg: float,
           log2_scale: float, shift: tuple[float, float] = (0.0, 0.0), mode: str = "reflect") -> np.ndarray:
    """The ``window``-pixel view of ``image`` (H, W, C) around ``centre`` (row, col), rotated
    counter-clockwise (as displayed) by ``roll_deg``, magnified by ``2**log2_scale`` and moved by
    ``shift`` = (right, down) output pixels, at ``size`` x ``size``: (C, size, size) float32.

    The rotation has the sign of ``scipy.ndimage.rotate``: ``ndimage.rotate(out, -roll_deg)`` undoes it."""
    from scipy import ndimage  # deferred: scipy.ndimage takes half a second to import

    theta = math.radians(roll_deg)
    f = window / size / 2.0 ** log2_scale  # source pixels per output pixel
    c, s = math.cos(theta), math.sin(theta)
    matrix = f * np.array([[c, s], [-s, c]])
    mid = (size - 1) / 2.0
    out_centre = np.array([mid + shift[1], mid + shift[0]])
    offset = np.asarray(centre, dtype=np.float64) - matrix @ out_centre
    channels = [ndimage.affine_transform(image[:, :, k], matrix, offset, output_shape=(size, size), order=1,
                                         mode=mode) for k in range(image.shape[2])]
    return np.stack(channels).astype(np.float32).clip(0, 1)


def _split_sources(sources: list[Source], rng: np.random.Generator) -> dict[str, list[int]]:
    """Each kind (faces, photos) is split 60/15/25 % by source, at least one source per split."""
    pools: dict[str, list[int]] = {s: [] for s in SPLITS}
    for kind in ("face", "photo"):
        idx = [i for i, src in enumerate(sources) if src.kind == kind]
        if not idx:
            continue
        order = [idx[j] for j in rng.permutation(len(idx))]
        n_val = max(1, round(FRACTIONS["val"] * len(order)))
        n_test = max(1, round(FRACTIONS["test"] * len(order)))
        pools["val"] += order[:n_val]
        pools["test"] += order[n_val: n_val + n_test]
        pools["train"] += order[n_val + n_test:]
    return {s: sorted(v) for s, v in pools.items()}


def _margin(window: float, max_log2_scale: float, max_shift: float, size: int) -> float:
    """Half the side of the source region any sample may look at: rotated, zoomed-out, shifted view."""
    return window / 2 * math.sqrt(2) * 2 ** max_log2_scale + max_shift * window / size * 2 ** max_log2_scale + 1


def _textured_centre(image: np.ndarray, margin: float, window: float, rng: np.random.Generator,
                     min_std: float = 0.05, tries: int = 20) -> tuple[float, float]:
    """A random crop centre at least ``margin`` from the border whose window is not flat (sky, blank
    background: no pose to see); the last draw if ``tries`` draws all are."""
    h, w = image.shape[:2]
    half = int(window // 2)
    for _ in range(tries):
        r, c = rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin)
        patch = image[int(r) - half: int(r) + half, int(c) - half: int(c) + half]
        if (patch @ LUMA).std() >= min_std:  # luminance texture, not colour
            break
    return r, c


def pose_outputs(max_shift: float) -> list[tuple[str, str]]:
    """(name, unit) of each output, in order: roll, log2 scale, then shift x, y when ``max_shift > 0``."""
    return [ROLL, SCALE] + (list(SHIFTS) if max_shift > 0 else [])


def make_pose(n_train: int, n_val: int, n_test: int, size: int = 32, seed: int = 0, *, source: str = "faces",
              channels: int = 1, max_roll: float = 30.0, max_log2_scale: float = 0.5,
              max_shift: float = 0.0) -> dict:
    """The pose data set: clean labels (the annotation-error model is applied by the caller).

    Returns ``x_{split}`` (n, channels, size, size) float32 in [0, 1] (NCHW), ``y_{split}`` (n, k)
    float32 clean labels (roll in degrees, log2 scale; with ``max_shift > 0`` also shift_x, shift_y in
    output pixels), ``source_{split}`` (n,) int source index, ``sources`` (names), ``output_names``,
    ``units``, ``source_split`` (split -> source names) and ``description``. Deterministic per seed;
    the sources of a split and its samples do not depend on the other splits' sizes."""
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    sources = load_sources(source, size)
    pools = _split_sources(sources, np.random.default_rng([seed, 0]))
    result: dict = {
        "output_names": [name for name, _ in pose_outputs(max_shift)],
        "units": [unit for _, unit in pose_outputs(max_shift)],
        "sources": [src.name for src in sources],
        "source_split": {s: [sources[i].name for i in pools[s]] for s in SPLITS},
        "description": (f"{source} from scikit-image's bundled data, rolled U[-{max_roll:g}, {max_roll:g}] deg, "
                        f"scaled 2**U[-{max_log2_scale:g}, {max_log2_scale:g}]"
                        + (f", shifted U[-{max_shift:g}, {max_shift:g}] px" if max_shift > 0 else "")
                        + f", {channels}x{size}x{size}, split by source image"),
    }
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test))):
        rng = np.random.default_rng([seed, 1 + k])
        which = rng.choice(pools[split], size=n, replace=True) if n else np.zeros(0, dtype=int)
        roll = rng.uniform(-max_roll, max_roll, n)
        scale = rng.uniform(-max_log2_scale, max_log2_scale, n)
        shift = rng.uniform(-max_shift, max_shift, (n, 2)) if max_shift > 0 else np.zeros((n, 2))
        x = np.empty((n, channels, size, size), dtype=np.float32)
        for j, i in enumerate(which):
            src = sources[i]
            image = src.images[rng.integers(len(src.images))]
            h, w = image.shape[:2]
            if src.kind == "face":
                centre = ((h - 1) / 2, (w - 1) / 2)
            else:
                centre = _textured_centre(image, _margin(src.window, max_log2_scale, max_shift, size),
                                          src.window, rng)
            view = render(image, centre, src.window, size, roll[j], scale[j], tuple(shift[j]))
            x[j] = view if channels == 3 else np.tensordot(LUMA, view, axes=1)[None]
        cols = [roll, scale] + ([shift[:, 0], shift[:, 1]] if max_shift > 0 else [])
        result[f"x_{split}"] = x
        result[f"y_{split}"] = np.stack(cols, axis=1).astype(np.float32)
        result[f"source_{split}"] = np.asarray(which, dtype=np.int64)
    return result


def make_pose_dataset(cfg: DataOptions, seed: int) -> Splits:
    """Roll (deg) and log2-scale of real photographs (``make_pose``), split by source image.
    ``data.noise`` is in units of each output's clean training-label std (the outputs have different
    units); labels are learned standardised and every exported file predicts in label units."""
    p = cfg.pose
    d = make_pose(cfg.n_train, cfg.n_val, cfg.n_test, size=cfg.image_size, seed=seed, source=p.source,
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
    splits = normalised(x_raw, y, y_clean, outlier)
    splits.output_names = [f"{n} ({u})" for n, u in zip(d["output_names"], d["units"])]
    splits.description = d["description"]
    return learn_standardised(splits)
