"""Data: the sinusoid toy, annotation-error injection, and the data set table."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data import (
    BUILTIN,
    DATASETS,
    KINDS,
    DataConfig,
    Splits,
    inject_noise,
    input_shape,
    make_dataset,
    n_outputs,
    sinusoid_target,
    task_of,
)
from pipeline.errors import UserError
from tests.conftest import ROOT


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


SMALL = ["data.n_train=20", "data.n_val=8", "data.n_test=8"]


@pytest.mark.parametrize("name, sets", [
    ("sinusoid", []),
    ("digits_rotation", ["data.image_size=8"]),
    ("digits", ["data.image_size=8", "distill.method=kd", "distill.baselines=[]"]),
    ("pose", ["data.image_size=32", "data.pose.channels=3", "data.pose.max_shift=1"]),
    ("source", []),
])
def test_the_table_row_describes_what_its_builder_makes(name, sets, tmp_path):
    if name == "source":
        rows = "\n".join(f"{i},{i % 3},{0.5 * i},{-i}" for i in range(30))
        (tmp_path / "d.csv").write_text(f"a,b,y1,y2\n{rows}\n")
        sets = [f"data.source={{kind: csv, path: {tmp_path / 'd.csv'}, labels: [y1, y2]}}"]
    cfg = load_config(None, [f"data.name={name}", *SMALL, *sets]).data
    s = make_dataset(cfg, seed=0)
    row = DATASETS[name]
    assert s.x["train"].shape[1:] == input_shape(cfg) == row.input_shape(cfg)
    assert s.out_features == n_outputs(cfg) == len(row.outputs(cfg))
    assert s.task == task_of(cfg) == row.task
    assert all(o.name and o.unit and o.meaning for o in row.outputs(cfg)) and row.summary
    if s.output_names:  # pose, source: the names in Splits are the table's
        assert [n.split(" (")[0] for n in s.output_names] == [o.name for o in row.outputs(cfg)]


def test_data_name_allows_exactly_the_table_names_and_says_which():
    names = tuple(row.name for row in BUILTIN) + ("source",)
    assert tuple(DATASETS) == names
    assert DataConfig.model_fields["name"].annotation.__args__ == names
    with pytest.raises(UserError) as info:
        load_config(None, ["data.name=mnist"])
    msg = str(info.value)
    assert "\n" not in msg and "data.name" in msg and all(repr(n) in msg for n in names)


def test_data_md_documents_every_data_set_and_source_kind():
    text = (ROOT / "docs" / "DATA.md").read_text()
    assert all(f"| `{name}` |" in text for name in DATASETS)
    assert all(f"(`kind: {kind}`)" in text for kind in KINDS)
