"""The pose data set (pipeline/data/pose.py): real crops from scikit-image's bundled data, rolled and
scaled by known amounts; shapes, determinism, split by source image, labels that match the pixels."""

import numpy as np
import pytest
from scipy import ndimage

from pipeline.data.pose import SPLITS, load_faces, make_pose, render

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    return make_pose(60, 20, 40, SIZE, seed=0)


@pytest.fixture(scope="module")
def both():
    return make_pose(40, 10, 30, 48, seed=1, source="both", channels=3, max_shift=2.0)


def test_shapes_ranges_names_and_units(faces, both):
    for split, n in zip(SPLITS, (60, 20, 40)):
        x, y = faces[f"x_{split}"], faces[f"y_{split}"]
        assert x.shape == (n, 1, SIZE, SIZE) and x.dtype == np.float32
        assert y.shape == (n, 2) and y.dtype == np.float32
        assert faces[f"source_{split}"].shape == (n,)
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05
        assert np.abs(y[:, 0]).max() <= 30.0 and np.abs(y[:, 1]).max() <= 0.5
    assert faces["output_names"] == ["roll", "log2_scale"] and faces["units"] == ["deg", "log2"]
    assert both["x_train"].shape == (40, 3, 48, 48)
    assert both["output_names"] == ["roll", "log2_scale", "shift_x", "shift_y"]
    assert both["units"] == ["deg", "log2", "px", "px"]
    assert np.abs(both["y_test"][:, 2:]).max() <= 2.0
    # photographs are rendered in colour, faces (grey sources) as equal RGB channels
    is_photo = np.array([not n.startswith("lfw_") for n in both["sources"]])[both["source_train"]]
    colour = np.abs(both["x_train"][:, 0] - both["x_train"][:, 1]).mean(axis=(1, 2)) > 1e-3
    assert is_photo.any() and (colour == is_photo).all()
    with pytest.raises(ValueError, match="at least 32"):
        make_pose(1, 1, 1, size=16)


def test_deterministic_per_seed(faces):
    again = make_pose(60, 20, 40, SIZE, seed=0)
    for key in ("x_train", "y_train", "x_test", "y_test", "source_test"):
        np.testing.assert_array_equal(faces[key], again[key])
    other = make_pose(60, 20, 40, SIZE, seed=1)
    assert not np.array_equal(faces["y_train"], other["y_train"])
    # the test split does not depend on the size of the other splits
    bigger = make_pose(80, 5, 40, SIZE, seed=0)
    np.testing.assert_array_equal(faces["x_test"], bigger["x_test"])


@pytest.mark.parametrize("name", ["faces", "both"])
def test_split_by_source_image(name, faces, both):
    data = {"faces": faces, "both": both}[name]
    split_sources = {s: set(data["source_split"][s]) for s in SPLITS}
    assert not split_sources["train"] & split_sources["test"]
    assert not split_sources["train"] & split_sources["val"]
    assert not split_sources["val"] & split_sources["test"]
    assert set().union(*split_sources.values()) == set(data["sources"])
    for s in SPLITS:  # every sample comes from a source of its own split
        used = {data["sources"][i] for i in data[f"source_{s}"]}
        assert used <= split_sources[s]
    if name == "both":  # photographs are split too: a test photograph is never in training
        photos = {s: {n for n in split_sources[s] if not n.startswith("lfw_")} for s in SPLITS}
        assert photos["train"] and photos["test"] and not photos["train"] & photos["test"]


def _corr(a, b, m=slice(8, 24)):
    return float(np.corrcoef(a[m, m].ravel(), b[m, m].ravel())[0, 1])


def _unscale(image, log2_scale):
    """Undo a magnification by 2**log2_scale about the image centre (independently of render())."""
    k, mid = 2.0 ** log2_scale, (image.shape[0] - 1) / 2
    return ndimage.affine_transform(image, k * np.eye(2), offset=mid - k * mid, order=1, mode="nearest")


def test_labels_match_the_transform(faces):
    """Undoing the labelled roll (scipy.ndimage.rotate) and scale brings each test crop back to its
    unrotated, unscaled view; a wrong angle or scale does not."""
    sources = load_faces()
    right, wrong_angle, right_s, wrong_scale = [], [], [], []
    for x, (roll, scale), i in zip(faces["x_test"][:, 0], faces["y_test"], faces["source_test"]):
        face = sources[i].images[0]
        canonical = render(face, (12.0, 12.0), 25.0, SIZE, 0.0, 0.0)[0]
        unrotated = ndimage.rotate(x, -roll, reshape=False, order=1, mode="nearest")
        restored = _unscale(unrotated, scale)
        if abs(roll) > 10:
            right.append(_corr(restored, canonical))
            wrong_angle.append(_corr(_unscale(ndimage.rotate(x, roll, reshape=False, order=1, mode="nearest"),
                                              scale), canonical))
        if abs(scale) > 0.25:
            right_s.append(_corr(restored, canonical))
            wrong_scale.append(_corr(_unscale(unrotated, -scale), canonical))
    assert len(right) >= 10 and len(right_s) >= 5
    assert np.median(right) > 0.95 and np.median(right_s) > 0.95
    assert np.mean(right) > np.mean(wrong_angle) + 0.3
    assert np.mean(right_s) > np.mean(wrong_scale) + 0.1
    assert (np.array(right) > np.array(wrong_angle)).all()


def test_shift_label_moves_the_content():
    face = load_faces()[0].images[0]
    base = render(face, (12.0, 12.0), 25.0, SIZE, 10.0, 0.2).mean(axis=0)
    moved = render(face, (12.0, 12.0), 25.0, SIZE, 10.0, 0.2, shift=(3.0, -2.0)).mean(axis=0)
    # content moved 3 px right and 2 px up: shifting back restores it
    np.testing.assert_allclose(ndimage.shift(moved, (2.0, -3.0), order=1)[6:26, 6:26], base[6:26, 6:26], atol=1e-4)
