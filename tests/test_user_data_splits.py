"""Splits as users have them (issue 19, item 3): a split column holding any subset of train/val/test
(the missing splits carved from train, seeded), and ``features: null`` leaving out row-index columns."""

import numpy as np
import pytest

from pipeline.data.sources import CsvSource, DataError, NpzSource, load_source


def write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(c) for c in r) for r in rows]) + "\n")


def rows_with_split(n, part):
    """rownames (1..n shuffled: the table was sorted by y), a, b (categorical), y = 3a, split."""
    perm = np.random.default_rng(0).permutation(n) + 1
    return [[int(perm[i]), 0.5 * i, "pq"[i % 2], 1.5 * i, part(i)] for i in range(n)]


HEADER = ["rownames", "a", "b", "y", "part"]


def load(tmp_path, rows, seed=0, header=HEADER, **kw):
    write(tmp_path / "d.csv", header, rows)
    kw.setdefault("categorical", ["b"])
    return load_source(CsvSource(kind="csv", path="d.csv", labels=["y"], **kw), seed, base_dir=tmp_path)


def a_values(d, s):
    return sorted((d.x[s][:, 0] / 0.5).round().astype(int).tolist())  # row i has a = 0.5 i


def test_train_test_column_carves_val_from_train_with_val_fraction_seeded(tmp_path):
    rows = rows_with_split(200, lambda i: "test" if i % 4 == 0 else "train")
    d = load(tmp_path, rows, seed=3, split_column="part", val_fraction=0.2)
    train_rows = [i for i in range(200) if i % 4]
    assert a_values(d, "test") == list(range(0, 200, 4))  # the given test split is untouched
    assert len(d.x["val"]) == round(150 * 0.2) == 30 and len(d.x["train"]) == 120
    assert sorted(a_values(d, "train") + a_values(d, "val")) == train_rows  # carved from train, nothing lost
    assert np.array_equal(d.y["val"][:, 0], d.x["val"][:, 0] * 3)  # rows keep their labels
    assert np.all(np.diff(d.x["val"][:, 0]) > 0)  # each split keeps file order
    note = "split_column 'part' holds no val rows: 30 val rows (val_fraction=0.2) carved at random (seed 3)"
    assert d.notes[-1] == f"csv d.csv: {note} from its 150 train rows"  # the data stage logs them
    assert "30 val rows (val_fraction=0.2) carved at random" in d.description
    same = load(tmp_path, rows, seed=3, split_column="part", val_fraction=0.2)
    other = load(tmp_path, rows, seed=4, split_column="part", val_fraction=0.2)
    assert a_values(same, "val") == a_values(d, "val") != a_values(other, "val")


def test_train_only_column_carves_val_and_test_and_train_val_carves_test(tmp_path):
    d = load(tmp_path, rows_with_split(100, lambda i: "TRAIN"), split_column="part", val_fraction=0.1,
             test_fraction=0.25)
    assert [len(d.x[s]) for s in ("train", "val", "test")] == [65, 10, 25]
    assert sorted(sum((a_values(d, s) for s in ("train", "val", "test")), [])) == list(range(100))
    d = load(tmp_path, rows_with_split(100, lambda i: "val" if i < 20 else "train"), split_column="part",
             test_fraction=0.25)
    assert a_values(d, "val") == list(range(20)) and len(d.x["test"]) == 20 and len(d.x["train"]) == 60


def test_npz_split_array_with_train_and_test_only(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(30, 2)
    np.savez(tmp_path / "d.npz", X=x, y=x[:, 0], split=np.array([0] * 20 + [2] * 10))
    d = load_source(NpzSource(kind="npz", path="d.npz", val_fraction=0.25), 0, tmp_path)
    assert [len(d.x[s]) for s in ("train", "val", "test")] == [15, 5, 10]
    assert "5 val rows (val_fraction=0.25) carved" in d.description


@pytest.mark.parametrize("part, kw, expect", [
    (lambda i: "val" if i % 2 else "test", {}, "leaves the train split empty (train 0, val 10, test 10)"),
    (lambda i: "test" if i < 10 else "train", {"val_fraction": 0.01},
     "split_column 'part' has no val rows and its 10 train rows with val_fraction=0.01 leave a split empty"),
])
def test_splits_that_cannot_be_completed_are_one_line_errors(tmp_path, part, kw, expect):
    with pytest.raises(DataError) as info:
        load(tmp_path, rows_with_split(20, part), split_column="part", **kw)
    assert expect in str(info.value) and "\n" not in str(info.value)


def test_features_null_leaves_out_row_index_columns_with_a_line(tmp_path):
    n = 40
    perm = np.random.default_rng(1).permutation(n)
    header = ["Unnamed: 0", "rownames", "n", "id", "index", "a", "count", "b", "y"]
    rows = [[i, int(perm[i]) + 1, i + 1, i % 5, f"{i}.5", 0.5 * i, 20 + i, "pq"[i % 2], 1.5 * i] for i in range(n)]
    d = load(tmp_path, rows, header=header)
    # left out: counts 0.. (and named Unnamed: 0), a named index of unique integers in any order, counts 1..;
    # kept: 'id' that repeats, 'index' that is not integer, 'count' = 20, 21, ... (not a row number)
    assert d.feature_names == ["id", "index", "a", "count", "b=p", "b=q"]
    lines = [n for n in d.notes if "left out of the features" in n]
    assert len(lines) == 3
    assert "column 'rownames' left out of the features: its name 'rownames' and unique integers" in lines[1]
    assert "column 'n' left out of the features: its values count 1, 2, ... 40 in file order" in lines[2]
    # listed explicitly, an index column is a feature like any other; categorical columns are never left out
    d = load(tmp_path, rows, header=header, features=["rownames", "a", "b"])
    assert d.feature_names == ["rownames", "a", "b=p", "b=q"]
    d = load(tmp_path, rows, header=header, categorical=["rownames", "b"], features=None)
    assert any(f.startswith("rownames=") for f in d.feature_names) and "Unnamed: 0" not in d.feature_names


def test_pipeline_config_shows_only_the_data_keys_of_the_chosen_data_set(tmp_path):
    import yaml

    from tests.conftest import ROOT, run_cli

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"name": "source", "source": {
        "kind": "csv", "path": "d.csv", "labels": ["y"]}}}))
    shown = {}
    for name, args in (("source", ["--config", tmp_path / "c.yaml"]), ("sinusoid", []),
                       ("digits", ["--config", ROOT / "configs" / "digits.yaml"])):
        proc = run_cli("config", *args)
        assert proc.returncode == 0, proc.stderr
        shown[name] = yaml.safe_load(proc.stdout)["data"]
    assert set(shown["source"]) == {"name", "source", "noise"}  # no n_train, amplitude, image_size, ...
    assert shown["source"]["source"]["split_column"] is None
    assert {"n_train", "amplitude", "x_min"} <= set(shown["sinusoid"]) and "source" not in shown["sinusoid"]
    assert set(shown["digits"]) == {"name", "noise", "image_size"}
