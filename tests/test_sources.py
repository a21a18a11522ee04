"""User data sources: real files written to tmp_path, parsed, validated and split."""

import math

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from pipeline.errors import UserError
from pipeline.data.sources import (
    CsvSource,
    DataError,
    ImageFolderSource,
    MPIIGazeSource,
    NpzSource,
    SourceConfig,
    angular_error_deg,
    load_source,
    pitchyaw_from_vector,
    vector_from_pitchyaw,
)

# ---------------------------------------------------------------------------------------------
# helpers


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(c) for c in r) for r in rows]) + "\n")
    return path


def table_rows(n=30):
    """id, age (numeric), color (categorical), y1, y2 -- ids 0..n-1 let tests see which row went where."""
    colors = ["red", "green", "blue"]
    return [[i, 20 + i, colors[i % 3], 0.5 * i, -i] for i in range(n)]


HEADER = ["id", "age", "color", "y1", "y2"]


def load_csv(tmp_path, rows=None, header=HEADER, seed=0, **kw):
    write_csv(tmp_path / "data.csv", header, table_rows() if rows is None else rows)
    kw.setdefault("labels", ["y1", "y2"])
    return load_source(CsvSource(kind="csv", path="data.csv", **kw), seed, base_dir=tmp_path)


def data_error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# config schema


def test_source_config_is_a_discriminated_strict_union():
    ta = TypeAdapter(SourceConfig)
    assert isinstance(ta.validate_python({"kind": "npz", "path": "a.npz"}), NpzSource)
    assert isinstance(ta.validate_python({"kind": "mpiigaze", "root": "MPIIGaze"}), MPIIGazeSource)
    for bad in (
        {"kind": "csv", "path": "a.csv", "labels": ["y"], "colour": "x"},  # unknown key
        {"kind": "csv", "path": "a.csv", "labels": []},
        {"kind": "csv", "path": "a.csv", "labels": ["y"], "features": ["y", "a"]},
        {
            "kind": "csv",
            "path": "a.csv",
            "labels": ["y"],
            "features": ["a"],
            "categorical": ["b"],
        },
        {"kind": "npz", "path": "a.npz", "val_fraction": 0.5, "test_fraction": 0.5},
        {"kind": "excel", "path": "a.xlsx"},
    ):
        with pytest.raises(ValidationError):
            ta.validate_python(bad)
    assert issubclass(DataError, UserError)


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_categorical_and_several_labels(tmp_path):
    rows = table_rows()
    # put every row in a known split; blue appears only in val/test -> unseen category
    split = ["test" if i in (2, 5) else "val" if i in (8, 11) else "train" for i in range(30)]
    for i, r in enumerate(rows):
        if split[i] == "train" and r[2] == "blue":
            r[2] = "red"
    header = HEADER + ["part"]
    rows = [r + [s] for r, s in zip(rows, split)]
    d = load_csv(tmp_path, rows, header, features=["id", "age", "color"], categorical=["color"], split_column="part")
    assert d.feature_names == ["id", "age", "color=green", "color=red"]
    assert d.standardise.tolist() == [True, True, False, False]
    assert d.output_names == ["y1", "y2"] and d.angles is False
    assert [len(d.x[s]) for s in ("train", "val", "test")] == [26, 2, 2]
    assert d.x["test"][:, 0].tolist() == [2, 5] and d.x["val"][:, 0].tolist() == [8, 11]
    # labels exactly as in the file, both columns
    assert d.y["test"].tolist() == [[1.0, -2.0], [2.5, -5.0]]
    assert d.y["train"].dtype == np.float32 and d.x["train"].dtype == np.float32
    # one-hot: each train row has exactly one category; blue rows (2, 5, 8, 11) are all zero
    assert (d.x["train"][:, 2:].sum(axis=1) == 1).all()
    assert (d.x["test"][:, 2:] == 0).all() and (d.x["val"][:, 2:] == 0).all()
    green = d.x["train"][:, 0] == 1
    assert d.x["train"][green, 2:].tolist() == [[1, 0]]
    assert d.description.startswith("csv data.csv: 30 rows, 4 features, labels [y1, y2]")


def test_csv_default_features_exclude_labels_and_split_column_values_any_case(tmp_path):
    rows = [r + [("TRAIN", "Val", " test ")[i % 3]] for i, r in enumerate(table_rows())]
    d = load_csv(
        tmp_path,
        rows,
        HEADER + ["part"],
        labels=["y2"],
        features=None,
        categorical=["color"],
        split_column="part",
    )
    # train rows are i % 3 == 0, all red: green/blue rows (val/test) get all-zero one-hot columns;
    # 'id' (0, 1, 2, ... in file order) looks like a row index and is left out
    assert d.feature_names == [
        "age",
        "color=red",
        "y1",
    ] and d.standardise.tolist() == [1, 0, 1]
    assert (d.x["val"][:, 1] == 0).all() and (d.x["train"][:, 1] == 1).all()
    assert sorted(d.x["val"][:, 0].astype(int).tolist()) == list(range(21, 50, 3))
    assert d.y["val"].shape == (10, 1)


def test_csv_explicit_feature_subset(tmp_path):
    d = load_csv(tmp_path, features=["age"], labels=["y1"])
    assert d.feature_names == ["age"] and d.x["train"].shape[1] == 1
    assert np.allclose(d.y["train"][:, 0], 0.5 * (d.x["train"][:, 0] - 20))


def test_csv_random_split_is_deterministic_and_covers_every_row(tmp_path):
    ids = lambda d: {s: (d.x[s][:, 0] - 20).astype(int).tolist() for s in d.x}  # age = 20 + row (id is left out)
    a = ids(load_csv(tmp_path, seed=1, categorical=["color"]))
    b = ids(load_csv(tmp_path, seed=1, categorical=["color"]))
    c = ids(load_csv(tmp_path, seed=2, categorical=["color"]))
    assert a == b and a != c
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(30))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (20, 4, 6)


def test_csv_relative_path_uses_base_dir_else_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "cfg"
    sub.mkdir()
    write_csv(sub / "data.csv", HEADER, table_rows())
    cfg = CsvSource(kind="csv", path="data.csv", labels=["y1"], categorical=["color"])
    assert len(load_source(cfg, 0, base_dir=sub).x["train"]) == 20
    monkeypatch.chdir(tmp_path)
    msg = data_error(load_source, cfg, 0)
    assert "csv data.csv: file not found" in msg and str(tmp_path / "data.csv") in msg


def test_csv_missing_label_and_feature_columns_list_the_columns(tmp_path):
    msg = data_error(load_csv, tmp_path, labels=["target"])
    assert "csv data.csv" in msg and "label column 'target' not found" in msg
    assert "id, age, color, y1, y2" in msg
    msg = data_error(load_csv, tmp_path, features=["age", "weight"])
    assert "feature column 'weight' not found" in msg and "id, age, color, y1, y2" in msg
    msg = data_error(load_csv, tmp_path, split_column="fold", categorical=["color"])
    assert "split column 'fold' not found" in msg


def test_csv_semicolon_file_gets_a_hint(tmp_path):
    (tmp_path / "data.csv").write_text("a;b;y\n" + "1;2;3\n" * 25)
    src = CsvSource(kind="csv", path="data.csv", labels=["y"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "label column 'y' not found" in msg and "semicolon-separated" in msg


def test_csv_empty_cells_report_first_row_line_column_and_count(tmp_path):
    rows = table_rows()
    rows[4][1] = ""  # row 5
    rows[9][3] = ""  # row 10
    rows[20][1] = "nan"
    write_csv(tmp_path / "data.csv", HEADER, rows)
    # a blank line after the header shifts physical lines by one: row 5 is line 7
    text = (tmp_path / "data.csv").read_text().split("\n", 1)
    (tmp_path / "data.csv").write_text(text[0] + "\n\n" + text[1])
    src = CsvSource(kind="csv", path="data.csv", labels=["y1"], features=["id", "age"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "csv data.csv: row 5 (line 7), column 'age': empty cell" in msg
    assert "(3 empty, NaN or infinite cells in total in the feature and label columns)" in msg
    src = CsvSource(kind="csv", path="data.csv", labels=["y1"], features=["id"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "row 10 (line 12), column 'y1': empty cell (1 empty" in msg


def test_csv_nan_and_inf_cells(tmp_path):
    rows = table_rows()
    rows[2][1] = "inf"
    rows[6][1] = "NaN"
    msg = data_error(load_csv, tmp_path, rows, categorical=["color"])
    assert "row 3 (line 4), column 'age': value 'inf' is not finite (2 empty, NaN or infinite" in msg


def test_csv_non_numeric_value_is_quoted(tmp_path):
    msg = data_error(load_csv, tmp_path)  # color is text but not declared categorical
    assert "csv data.csv: row 1 (line 2), column 'color': 'red' is not a number (30 non-numeric cells" in msg
    assert "categorical" in msg
    rows = table_rows()
    rows[11][4] = "1,5".replace(",", ";")
    msg = data_error(load_csv, tmp_path, rows, categorical=["color"])
    assert "row 12 (line 13), column 'y2': '1;5' is not a number (1 non-numeric" in msg


def test_csv_empty_categorical_cell(tmp_path):
    rows = table_rows()
    rows[7][2] = ""
    msg = data_error(load_csv, tmp_path, rows, categorical=["color"])
    assert "row 8 (line 9), column 'color': empty cell (1 empty cells" in msg


def test_csv_bad_split_values_and_empty_split(tmp_path):
    def split_error(other):
        rows = [r + ["train" if i % 2 else other] for i, r in enumerate(table_rows())]
        return data_error(load_csv, tmp_path, rows, HEADER + ["part"], categorical=["color"], split_column="part")

    msg = split_error("validation")
    assert "row 1 (line 2), column 'part': split value 'validation' is not allowed (15 bad" in msg
    assert "allowed: train, val, test" in msg
    rows = [r + ["val" if i % 2 else "test"] for i, r in enumerate(table_rows())]
    msg = data_error(load_csv, tmp_path, rows, HEADER + ["part"], categorical=["color"], split_column="part")
    assert "leaves the train split empty (train 0, val 15, test 15)" in msg


def test_csv_too_few_rows_and_fraction_that_empties_a_split(tmp_path):
    msg = data_error(load_csv, tmp_path, table_rows(12), categorical=["color"])
    assert "csv data.csv: 12 data rows; at least min_rows=20" in msg
    msg = data_error(load_csv, tmp_path, table_rows(20), categorical=["color"], val_fraction=0.01)
    assert "leave the val split empty" in msg


def test_csv_malformed_files(tmp_path):
    rows = table_rows()
    write_csv(tmp_path / "data.csv", HEADER, rows)
    with open(tmp_path / "data.csv", "a") as f:
        f.write("30,50,red,1\n")
    src = CsvSource(kind="csv", path="data.csv", labels=["y1"], categorical=["color"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "row 31 (line 32) has 4 fields but the header has 5 columns" in msg

    src = CsvSource(kind="csv", path="bad.csv", labels=["y"])
    (tmp_path / "bad.csv").write_text('a,y\n1,"2"x\n')
    assert "csv bad.csv: invalid CSV at line 2" in data_error(load_source, src, 0, tmp_path)
    (tmp_path / "bad.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "csv bad.csv: not UTF-8 text" in data_error(load_source, src, 0, tmp_path)
    (tmp_path / "bad.csv").write_text("")
    assert "csv bad.csv: the file is empty" in data_error(load_source, src, 0, tmp_path)
    (tmp_path / "bad.csv").write_text("a,,y\n1,2,3\n")
    assert "column 2 has no name" in data_error(load_source, src, 0, tmp_path)
    src_dir = CsvSource(kind="csv", path=".", labels=["y"])
    assert "is a directory, expected a file" in data_error(load_source, src_dir, 0, tmp_path)


def test_csv_quoted_multiline_cell_counts_lines(tmp_path):
    lines = ["note,x,y"] + [f'"n{i}",{i},{i * 2}' for i in range(25)]
    lines[3] = '"two\nlines",2,4'
    lines[5] = '"ok",4,oops'
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    src = CsvSource(kind="csv", path="data.csv", labels=["y"], categorical=["note"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "row 5 (line 7), column 'y': 'oops' is not a number" in msg
    lines[3] = '"two\nlines",2,bad'  # the error is in the record that spans lines 4-5
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    msg = data_error(load_source, src, 0, tmp_path)
    assert "row 3 (line 4), column 'y': 'bad' is not a number (2 non-numeric cells" in msg


# ---------------------------------------------------------------------------------------------
# NPZ


def npz(tmp_path, name="d.npz", **arrays):
    np.savez(tmp_path / name, **arrays)
    return NpzSource(kind="npz", path=name)


def test_npz_random_split_vectors(tmp_path):
    x = np.arange(80, dtype=np.float64).reshape(40, 2)
    src = npz(tmp_path, X=x, y=x[:, 0] * 3)
    d = load_source(src, 5, tmp_path)
    assert [len(d.x[s]) for s in ("train", "val", "test")] == [26, 6, 8]
    assert d.y["train"].shape == (26, 1) and d.output_names == ["y"]
    assert d.feature_names == ["x0", "x1"] and d.standardise.tolist() == [True, True]
    allx = np.concatenate([d.x[s] for s in d.x])
    assert sorted(allx[:, 0].tolist()) == x[:, 0].tolist()
    for s in d.x:
        assert np.array_equal(d.y[s][:, 0], d.x[s][:, 0] * 3)
    assert np.array_equal(load_source(src, 5, tmp_path).x["val"], d.x["val"])
    assert not np.array_equal(load_source(src, 6, tmp_path).x["val"], d.x["val"])


def test_npz_split_array_strings_and_ints(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.stack([np.arange(6), -np.arange(6)], axis=1)
    for split in (
        np.array(["train", "val", "test", "train", "Test", "train"]),
        np.array([0, 1, 2, 0, 2, 0]),
    ):
        d = load_source(npz(tmp_path, X=x, y=y, split=split), 0, tmp_path)
        assert d.y["train"][:, 0].tolist() == [0, 3, 5] and d.y["test"][:, 0].tolist() == [2, 4]
        assert d.output_names == ["y0", "y1"] and d.y["val"].tolist() == [[1, -1]]
    msg = data_error(
        load_source,
        npz(tmp_path, X=x, y=y, split=np.array([0, 1, 2, 3, 0, 0])),
        0,
        tmp_path,
    )
    assert "npz d.npz: split[3]: split value '3' is not allowed (1 bad" in msg
    assert "integers 0, 1, 2" in msg
    msg = data_error(
        load_source,
        npz(tmp_path, X=x, y=y, split=np.array(["val"] * 5 + ["test"])),
        0,
        tmp_path,
    )
    assert "leaves the train split empty" in msg


def test_npz_presplit_and_images(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"X_{s}"] = rng.integers(0, 256, size=(n, 3, 4, 4), dtype=np.uint8)
        arrays[f"y_{s}"] = rng.normal(size=n)
    d = load_source(npz(tmp_path, **arrays), 0, tmp_path)
    assert d.x["train"].shape == (5, 3, 4, 4) and d.standardise is None and d.feature_names == []
    assert np.allclose(d.x["test"], arrays["X_test"] / 255.0)
    assert np.allclose(d.y["val"][:, 0], arrays["y_val"])
    # (n, H, W) gets a channel axis
    d = load_source(npz(tmp_path, X=np.full((20, 5, 5), 0.5), y=np.arange(20.0)), 0, tmp_path)
    assert d.x["train"].shape[1:] == (1, 5, 5)
    msg = data_error(
        load_source,
        npz(tmp_path, X=np.zeros((20, 5, 5, 3)), y=np.zeros(20)),
        0,
        tmp_path,
    )
    assert "looks channels-last" in msg
    msg = data_error(
        load_source,
        npz(tmp_path, X=np.full((20, 1, 5, 5), 7.0), y=np.zeros(20)),
        0,
        tmp_path,
    )
    assert "float images in 'X' must be in [0, 1], found 7..7" in msg
    del arrays["y_test"]
    msg = data_error(load_source, npz(tmp_path, **arrays), 0, tmp_path)
    assert "pre-split arrays are incomplete, missing y_test" in msg


def test_npz_shape_and_content_errors(tmp_path):
    msg = data_error(load_source, npz(tmp_path, X=np.zeros((10, 2)), y=np.zeros(9)), 0, tmp_path)
    assert "npz d.npz: X has 10 rows but y has 9" in msg
    msg = data_error(
        load_source,
        npz(tmp_path, X=np.zeros((10, 2)), y=np.zeros((10, 2, 2))),
        0,
        tmp_path,
    )
    assert "array 'y' has shape (10, 2, 2); labels must be 1-D (n,) or 2-D (n, k)" in msg
    msg = data_error(
        load_source,
        npz(tmp_path, inputs=np.zeros((10, 2)), y=np.zeros(10)),
        0,
        tmp_path,
    )
    assert "missing array X (arrays present: inputs, y)" in msg
    x = np.zeros((10, 2))
    x[4, 1] = np.nan
    x[7] = np.inf
    msg = data_error(load_source, npz(tmp_path, X=x, y=np.zeros(10)), 0, tmp_path)
    assert "array 'X' sample 4 (0-based index) holds NaN or infinite values (3 such values in 2 samples)" in msg
    msg = data_error(
        load_source,
        npz(tmp_path, X=np.array([["a", "b"]] * 10), y=np.zeros(10)),
        0,
        tmp_path,
    )
    assert "array 'X' has dtype <U1; it must be numeric" in msg
    (tmp_path / "junk.npz").write_text("not a zip")
    msg = data_error(load_source, NpzSource(kind="npz", path="junk.npz"), 0, tmp_path)
    assert "npz junk.npz: not a readable .npz archive" in msg
    msg = data_error(load_source, NpzSource(kind="npz", path="nope.npz"), 0, tmp_path)
    assert "npz nope.npz: file not found" in msg


# ---------------------------------------------------------------------------------------------
# image folder


def image_folder(tmp_path, n=10, mode="L", odd_size=True):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    lines = ["file,angle,scale"]
    for i in range(n):
        size = (20, 12) if odd_size and i == 3 else (8, 8)
        value = (255, 0, 0) if mode == "RGB" else 255 * (i % 2)
        Image.new(mode, size, value).save(root / "sub" / f"im{i}.png")
        lines.append(f"sub/im{i}.png,{i * 10},{i % 2}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_image_folder_grayscale_with_a_different_size(tmp_path):
    image_folder(tmp_path)
    src = ImageFolderSource(
        kind="image_folder",
        root="imgs",
        labels_csv="labels.csv",
        labels=["angle", "scale"],
        size=6,
    )
    d = load_source(src, 0, tmp_path)
    assert sum(len(d.x[s]) for s in d.x) == 10 and len(d.x["val"]) == 2 and len(d.x["test"]) == 2
    for s in d.x:
        assert d.x[s].shape[1:] == (1, 6, 6) and d.x[s].dtype == np.float32
        # white images (odd i) are 1.0 everywhere, black ones 0.0; the label tells which
        assert np.allclose(d.x[s].mean(axis=(1, 2, 3)), d.y[s][:, 1])
    assert d.standardise is None and d.output_names == ["angle", "scale"]
    assert sorted(np.concatenate([d.y[s][:, 0] for s in d.y]).tolist()) == [i * 10 for i in range(10)]


def test_image_folder_rgb(tmp_path):
    root = image_folder(tmp_path, mode="RGB")
    src = ImageFolderSource(
        kind="image_folder",
        root=str(root),
        labels_csv=str(root / "labels.csv"),
        labels=["angle"],
        color="rgb",
        size=8,
    )
    d = load_source(src, 0)
    x = d.x["train"]
    assert x.shape[1:] == (3, 8, 8)
    assert np.allclose(x[:, 0], 1.0) and np.allclose(x[:, 1:], 0.0)


def test_image_folder_missing_and_undecodable_images(tmp_path):
    root = image_folder(tmp_path)
    (root / "sub" / "im6.png").unlink()
    (root / "sub" / "im8.png").unlink()
    src = ImageFolderSource(kind="image_folder", root="imgs", labels_csv="labels.csv", labels=["angle"])
    msg = data_error(load_source, src, 0, tmp_path)
    assert "labels_csv labels.csv: row 7 (line 8), column 'file': image 'sub/im6.png' not found" in msg
    assert "2 of 10 listed images are missing" in msg
    Image.new("L", (8, 8)).save(root / "sub" / "im6.png")
    Image.new("L", (8, 8)).save(root / "sub" / "im8.png")
    (root / "sub" / "im2.png").write_bytes(b"this is not a png")
    msg = data_error(load_source, src, 0, tmp_path)
    assert "row 3 (line 4), column 'file': image 'sub/im2.png' cannot be decoded" in msg


def test_image_folder_bad_root_csv_and_columns(tmp_path):
    src = {
        "kind": "image_folder",
        "root": "imgs",
        "labels_csv": "labels.csv",
        "labels": ["angle"],
    }
    assert "image_folder root imgs: directory not found" in data_error(
        load_source, ImageFolderSource(**src), 0, tmp_path
    )
    root = image_folder(tmp_path)
    msg = data_error(load_source, ImageFolderSource(**{**src, "labels_csv": "lab.csv"}), 0, tmp_path)
    assert "labels_csv lab.csv: file not found" in msg and str(root / "lab.csv") in msg
    msg = data_error(load_source, ImageFolderSource(**{**src, "file_column": "path"}), 0, tmp_path)
    assert "file column 'path' not found; the columns are: file, angle, scale" in msg
    msg = data_error(load_source, ImageFolderSource(**{**src, "labels": ["angel"]}), 0, tmp_path)
    assert "label column 'angel' not found" in msg


# ---------------------------------------------------------------------------------------------
# gaze geometry


def test_pitchyaw_conversion_known_vectors_and_round_trip():
    s = 1 / math.sqrt(2)
    g = np.array([[0, 0, -1], [-s, 0, -s], [0, -s, -s], [0, 0, -5.0], [-1, 0, 0]])
    py = pitchyaw_from_vector(g)
    expected = np.array([[0, 0], [0, math.pi / 4], [math.pi / 4, 0], [0, 0], [0, math.pi / 2]])
    assert np.allclose(py, expected)
    # a hand-computed case: pitch 30 deg, yaw -60 deg
    p, y = math.radians(30), math.radians(-60)
    v = vector_from_pitchyaw(np.array([[p, y]]))[0]
    assert np.allclose(v, [-math.cos(p) * math.sin(y), -0.5, -math.cos(p) * 0.5])
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 3))
    g[:, 2] = -np.abs(g[:, 2]) - 0.1  # camera-facing
    back = vector_from_pitchyaw(pitchyaw_from_vector(g))
    assert np.allclose(back, g / np.linalg.norm(g, axis=1, keepdims=True))
    py = rng.uniform(-1, 1, size=(50, 2))
    assert np.allclose(pitchyaw_from_vector(vector_from_pitchyaw(py)), py)


def test_angular_error_hand_computed():
    a = np.array([[0, 0], [0, 0], [0, 0], [0.3, -0.2], [0.2, 0.0]])
    b = np.array([[0, math.pi / 2], [0, 0], [0.1, 0], [0.3, -0.2], [0.0, 0.3]])
    err = angular_error_deg(a, b)
    assert err.shape == (5,)
    assert np.allclose(err[:4], [90, 0, math.degrees(0.1), 0], atol=1e-5)
    # (p=0.2, y=0) vs (p=0, y=0.3): cos = cos(0.2) * cos(0.3)
    assert np.isclose(err[4], math.degrees(math.acos(math.cos(0.2) * math.cos(0.3))))


# ---------------------------------------------------------------------------------------------
# MPIIGaze


def eye(n, person, day, side):
    """n patches whose pixels [0, 0] and [0, 59] encode the person; an asymmetric bright stripe on row 5."""
    img = np.zeros((n, 36, 60), dtype=np.uint8)
    img[:, 0, 0] = img[:, 0, 59] = person  # both corners: survives mirroring
    img[:, 5, 50:] = 200 if side == "left" else 100  # right side of the patch
    g = np.tile([-0.3, -0.2, -0.9], (n, 1)) + 0.01 * np.arange(n)[:, None]
    return {"image": img, "gaze": g, "pose": np.zeros((n, 3))}


def mpiigaze(tmp_path, persons=(0, 1, 13, 14), days=2, n=3, layout="Data/Normalized"):
    norm = tmp_path / "MPIIGaze" / layout
    for p in persons:
        pdir = norm / f"p{p:02d}"
        pdir.mkdir(parents=True)
        for day in range(1, days + 1):
            k = 1 if (p == 1 and day == 2) else n  # one file with a single sample (squeeze_me drops the axis)
            data = {"left": eye(k, p, day, "left"), "right": eye(k, p, day, "right")}
            scipy.io.savemat(
                pdir / f"day{day:02d}.mat",
                {"data": data, "filenames": np.array(["x.jpg"] * k)},
            )
    return tmp_path / "MPIIGaze"


def test_mpiigaze_leave_one_person_out_both_eyes(tmp_path):
    root = mpiigaze(tmp_path)
    d = load_source(MPIIGazeSource(kind="mpiigaze", root=str(root)), 0)
    person = {s: d.x[s][:, 0, 0, 0] * 255 for s in d.x}
    assert np.allclose(person["test"], 14) and np.allclose(person["val"], 13)
    assert sorted(set(np.round(person["train"]).astype(int).tolist())) == [0, 1]
    # 2 eyes x (3 + 3) samples, and p01: 2 eyes x (3 + 1)
    assert d.x["test"].shape == (12, 1, 36, 60) and d.x["train"].shape == (
        12 + 8,
        1,
        36,
        60,
    )
    assert d.y["test"].shape == (12, 2) and d.angles and d.output_names == ["pitch", "yaw"]
    assert d.standardise is None and d.x["train"].max() <= 1.0 and d.x["train"].dtype == np.float32
    # left eyes: as saved; right eyes: mirrored (bright corner moves to the left side), yaw negated
    g = np.tile([-0.3, -0.2, -0.9], (3, 1)) + 0.01 * np.arange(3)[:, None]
    py = pitchyaw_from_vector(g)
    bright = d.x["test"][:, 0, 5]
    left = np.isclose(bright[:, 59], 200 / 255)
    right = np.isclose(bright[:, 0], 100 / 255)
    assert left.sum() == 6 and right.sum() == 6 and not (left & right).any()
    assert np.allclose(d.y["test"][left][:3], py, atol=1e-6)
    assert np.allclose(d.y["test"][right][:3], py * [1, -1], atol=1e-6)
    assert py[0, 1] > 0  # the yaw sign really differs
    assert "4 persons" in d.description and "test p14" in d.description


def test_mpiigaze_one_eye_other_persons_normalized_root_and_subsample(tmp_path):
    root = mpiigaze(tmp_path, persons=(2, 3, 5), layout="Normalized")
    cfg = MPIIGazeSource(
        kind="mpiigaze",
        root=str(root / "Normalized"),
        test_person="p02",
        val_person="p05",
        eyes="right",
    )
    d = load_source(cfg, 0)
    assert [len(d.x[s]) for s in ("train", "val", "test")] == [6, 6, 6]
    assert np.isclose(d.x["test"][0, 0, 5, 59], 100 / 255)  # right eyes alone are not mirrored
    assert d.y["test"][0, 1] > 0
    d2 = load_source(cfg.model_copy(update={"root": str(root), "max_per_person": 4}), 3)
    assert [len(d2.x[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    d3 = load_source(cfg.model_copy(update={"root": str(root), "max_per_person": 4}), 3)
    assert np.array_equal(d2.x["train"], d3.x["train"])


def test_mpiigaze_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = data_error(load_source, MPIIGazeSource(kind="mpiigaze", root=str(empty)), 0)
    assert "no person directories p00, p01, ... found" in msg and str(empty / "Data" / "Normalized") in msg
    msg = data_error(load_source, MPIIGazeSource(kind="mpiigaze", root=str(tmp_path / "nope")), 0)
    assert "directory not found" in msg

    root = mpiigaze(tmp_path, persons=(0, 7, 9), days=1)
    msg = data_error(load_source, MPIIGazeSource(kind="mpiigaze", root=str(root)), 0)
    assert "test_person 'p14' not found; persons found: p00, p07, p09" in msg
    msg = data_error(
        load_source,
        MPIIGazeSource(kind="mpiigaze", root=str(root), test_person="p07", val_person="p07"),
        0,
    )
    assert "test_person and val_person are both 'p07'" in msg
    ok = MPIIGazeSource(kind="mpiigaze", root=str(root), test_person="p07", val_person="p09")
    assert len(load_source(ok, 0).x["train"]) == 6

    pdir = root / "Data" / "Normalized" / "p00"
    bad = eye(2, 0, 1, "left")
    del bad["gaze"]
    scipy.io.savemat(pdir / "day02.mat", {"data": {"left": bad, "right": eye(2, 0, 1, "right")}})
    msg = data_error(load_source, ok, 0)
    assert "mpiigaze p00/day02.mat: missing field data.left.gaze" in msg
    scipy.io.savemat(pdir / "day02.mat", {"gaze": np.zeros((2, 3))})
    assert "p00/day02.mat: no variable 'data' (variables found: gaze)" in data_error(load_source, ok, 0)
    (pdir / "day02.mat").write_bytes(b"garbage")
    assert "p00/day02.mat: cannot be read as a MATLAB .mat file" in data_error(load_source, ok, 0)
