"""Data: the sinusoid toy and annotation-error injection."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data import Splits, inject_noise, make_dataset, sinusoid_target


def _cfg(*sets):
    return load_config(None, ["data.n_train=4000", "data.n_val=1000", "data.n_test=500", *sets]).data


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.4])
def test_outlier_fraction_is_exact_and_outliers_are_in_range(p):
    cfg = _cfg(f"data.noise.outlier_fraction={p}")
    s = make_dataset(cfg, seed=0)
    for split, n in (("train", 4000), ("val", 1000)):
        assert s.outlier[split].sum() == round(p * n)
        o = s.y[split][s.outlier[split]]
        assert np.all((o >= cfg.noise.outlier_low) & (o <= cfg.noise.outlier_high))
    assert not s.outlier["test"].any()


def test_gaussian_noise_has_the_configured_sigma_and_test_is_clean():
    cfg = _cfg("data.noise.outlier_fraction=0", "data.noise.sigma=0.2")
    s = make_dataset(cfg, seed=1)
    resid = (s.y["train"] - s.y_clean["train"]).ravel()
    assert abs(resid.std() - 0.2) < 0.01
    assert abs(resid.mean()) < 0.01
    np.testing.assert_array_equal(s.y["test"], s.y_clean["test"])


def test_clean_labels_follow_the_documented_function():
    cfg = _cfg("data.amplitude=2", "data.frequency=3", "data.phase=0.5")
    s = make_dataset(cfg, seed=0)
    np.testing.assert_allclose(s.y_clean["test"], 2 * np.sin(3 * s.x_raw["test"] + 0.5), atol=1e-6)
    np.testing.assert_allclose(sinusoid_target(np.array([[0.0]]), cfg), [[2 * np.sin(0.5)]], atol=1e-6)


def test_inputs_do_not_depend_on_noise_settings_and_are_normalised_with_train_stats():
    a = make_dataset(_cfg("data.noise.outlier_fraction=0.0", "data.noise.sigma=0"), seed=5)
    b = make_dataset(_cfg("data.noise.outlier_fraction=0.4"), seed=5)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.x[split], b.x[split])
    np.testing.assert_array_equal(a.y["train"], a.y_clean["train"])  # the oracle sees clean labels
    assert abs(a.x["train"].mean()) < 1e-5 and abs(a.x["train"].std() - 1) < 1e-4
    np.testing.assert_allclose(a.x["test"] * a.x_std + a.x_mean, a.x_raw["test"], atol=1e-5)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = (make_dataset(_cfg(), seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.y["train"], b.y["train"])
    assert not np.array_equal(a.y["train"], c.y["train"])


def test_inject_noise_replaces_exactly_round_p_n():
    rng = np.random.default_rng(0)
    cfg = load_config(None, ["data.noise.outlier_fraction=0.33", "data.noise.sigma=0"]).data.noise
    y, mask = inject_noise(np.zeros((10, 1), np.float32), cfg, rng)
    assert mask.sum() == 3
    assert np.all(y[~mask] == 0) and np.all(y[mask] != 0)


def test_splits_roundtrip(tmp_path):
    s = make_dataset(_cfg(), seed=0)
    s.save(tmp_path / "d.npz")
    t = Splits.load(tmp_path / "d.npz")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(s.y[split], t.y[split])
        np.testing.assert_array_equal(s.outlier[split], t.outlier[split])
