"""Inputs an app can rebuild (issue 19, item 4): the preprocessing spec in data.json and in the exported
files, ``python -m pipeline predict`` on raw CSV rows through every exported file, and the Kotlin
``buildInput`` generated from the spec."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
import yaml

from pipeline.data.preprocessing import apply_spec, kotlin_build_input
from tests.conftest import run_cli

FP32 = ["onnx_fp32", "ort_fp32", "tflite_fp32"]
QUANTIZED = ["onnx_int8", "tflite_int8_io"]
CONFIG = {
    "seed": 1,
    "teacher": {"hidden": [64, 64], "train": {"epochs": 12, "patience": 5, "lr": 0.003}},
    "student": {"hidden": [8]},
    "distill": {"baselines": ["scratch"], "train": {"epochs": 12, "patience": 5, "lr": 0.005}},
    "export": {"formats": FP32 + QUANTIZED, "android": {"enabled": False}},
    "bench": {"targets": ["host"], "warmup": 1, "runs": 3, "formats": ["onnx_fp32"]},
}
HEADER = ["rownames", "size", "age", "colour", "shape", "price", "part"]


def table(n=300, seed=0):
    """Two numeric and two categorical features, a label in units of hundreds, sorted by the label; a
    split column holding train and test only (the val split is carved from train)."""
    rng = np.random.default_rng(seed)
    size, age = rng.uniform(20, 200, n), rng.integers(0, 40, n)
    colour, shape = rng.choice(["red", "green", "blue"], n), rng.choice(["round", "square"], n)
    price = 3 * size - 2 * age + np.where(colour == "red", 50, 0) + np.where(shape == "round", -20, 0)
    rows = [[i + 1, f"{size[i]:.3f}", int(age[i]), colour[i], shape[i], f"{price[i]:.3f}",
             "test" if i % 5 == 0 else "train"] for i in range(n)]
    rows.sort(key=lambda r: float(r[5]))
    for i, r in enumerate(rows):  # the test rows hold a colour never seen in training
        if r[6] == "test" and i % 7 == 0:
            r[3] = "purple"
    next(r for r in rows if r[6] == "test")[1] = "500.000"  # a size far beyond the training range
    return rows


def write(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    rows = table()
    write(d / "table.csv", HEADER, rows)
    write(d / "test_rows.csv", HEADER[1:-2], [r[1:5] for r in rows if r[6] == "test"])  # raw features only
    cfg = {**CONFIG, "data": {"name": "source", "source": {
        "kind": "csv", "path": str(d / "table.csv"), "labels": ["price"], "categorical": ["colour", "shape"],
        "split_column": "part"}}}
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "c.yaml", "--out", d / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, proc


def test_the_preprocessing_is_saved_in_data_json_and_in_the_exported_files(run):
    d, proc = run
    assert "split_column 'part' holds no val rows" in proc.stderr
    assert "column 'rownames' left out of the features" in proc.stderr
    spec = json.loads((d / "run" / "data.json").read_text())["preprocessing"]
    assert [f["column"] for f in spec["features"]] == ["size", "age", "colour", "shape"]
    assert spec["input_names"] == ["size", "age", "colour=blue", "colour=green", "colour=red",
                                   "shape=round", "shape=square"] and spec["input_width"] == 7
    colour = spec["features"][2]
    assert colour["categories"] == ["blue", "green", "red"] and colour["input_index"] == 2
    assert "all-zero" in spec["unknown_category"]
    assert spec["labels"]["names"] == ["price"] and spec["labels"]["std"][0] > 50  # learned standardised
    meta = {p.key: p.value for p in onnx.load(d / "run" / "student.onnx").metadata_props}
    assert json.loads(meta["preprocessing"]) == spec


def test_predict_on_raw_rows_reproduces_the_runs_test_predictions_for_every_fp32_file(run):
    d, _ = run
    ref = np.load(d / "run" / "student_preds.npz")["test"]
    scale = json.loads((d / "run" / "data.json").read_text())["preprocessing"]["labels"]["std"][0]
    assert np.abs(ref).max() > 100  # label units, not standardised ones
    files = {"onnx_fp32": "student.onnx", "ort_fp32": "student.ort", "tflite_fp32": "student_fp32.tflite",
             "onnx_int8": "student.int8.onnx", "tflite_int8_io": "student_int8_io.tflite"}
    for fmt, name in files.items():
        out = d / f"preds_{fmt}.csv"
        proc = run_cli("predict", "--run", d / "run", "--csv", d / "test_rows.csv", "--file", name, "--out", out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"through {d / 'run' / name}" in proc.stderr
        assert "column 'colour':" in proc.stderr and "not seen in training" in proc.stderr  # the purple rows
        with open(out) as f:
            got = list(csv.reader(f))
        assert got[0] == ["price"]
        pred = np.array(got[1:], dtype=np.float64)
        assert pred.shape == ref.shape
        if fmt in FP32:
            # float32 predictions of a few hundred label units: equal to 1e-5 relative (measured ~1e-7)
            np.testing.assert_allclose(pred, ref, rtol=1e-5, atol=1e-5, err_msg=fmt)
        else:  # quantized files: close, not equal (int8 I/O quantized with the file's scale and zero point)
            assert np.sqrt(np.mean((pred - ref) ** 2)) < 0.1 * scale, fmt


def test_predict_default_file_and_standard_output(run):
    d, _ = run
    proc = run_cli("predict", "--run", d / "run", "--csv", d / "test_rows.csv")
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "price"
    assert "student.onnx" in proc.stderr and len(proc.stdout.splitlines()) == 61


@pytest.mark.parametrize("args, expect", [
    (["--file", "student.pt"], "--file student.pt: is not a model file"),
    (["--file", "nope.tflite"], "--file nope.tflite: not found; this run's exported student files: student.onnx"),
    (["--csv-missing-column"], "missing column 'age'; the model needs size, age, colour, shape"),
    (["--csv-text"], "column 'size': 'big' is not a number"),
])
def test_bad_predict_input_is_one_line_and_exit_2(run, args, expect):
    d, _ = run
    csv_path = d / "test_rows.csv"
    if args == ["--csv-missing-column"]:
        csv_path, args = d / "no_age.csv", []
        write(csv_path, ["size", "colour", "shape"], [["1", "red", "round"]])
    elif args == ["--csv-text"]:
        csv_path, args = d / "text.csv", []
        write(csv_path, ["size", "age", "colour", "shape"], [["big", "1", "red", "round"]])
    proc = run_cli("predict", "--run", d / "run", "--csv", csv_path, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_kotlin_build_input_follows_the_spec(run):
    d, _ = run
    spec = json.loads((d / "run" / "data.json").read_text())["preprocessing"]
    kt = kotlin_build_input(spec)
    assert kt.count("fun buildInput(record: Map<String, Any>): FloatArray") == 1
    assert "val x = FloatArray(7)" in kt
    size = spec["features"][0]
    assert f'x[0] = (num("size") - {np.float32(size["mean"])}f)' in kt or 'x[0] = (num("size") - ' in kt
    assert '"blue" -> x[2] = 1f' in kt and '"red" -> x[4] = 1f' in kt and '"square" -> x[6] = 1f' in kt
    assert kt.count("else -> {}") == 2
    # the float literals are the spec's float32 values exactly
    lit = kt.split('x[0] = (num("size") - ')[1].split("f)")[0]
    assert np.float32(lit) == np.float32(size["mean"])


def test_apply_spec_unknown_categories_and_out_of_range_rows():
    spec = {"input_width": 4, "features": [
        {"column": "a", "type": "numeric", "input_index": 0, "mean": 1.0, "std": 2.0, "train_min": 0.0,
         "train_max": 3.0},
        {"column": "c", "type": "categorical", "input_index": 1, "categories": ["p", "q", "r"]}]}
    x, info = apply_spec(spec, {"a": np.array([1.0, 5.0, -1.0])}, {"c": ["q", "z", "r"]})
    assert x.tolist() == [[0, 0, 1, 0], [2, 0, 0, 0], [-1, 0, 0, 1]]
    assert info == {"unknown_categories": {"c": 1}, "rows_outside_training_range": 2, "outside_by_column": {"a": 2}}
    assert 'when (cat("c"))' in kotlin_build_input({**spec, "input": "table", "format": "f"})


def test_the_report_says_only_what_it_can_know_about_your_data(run):
    d, _ = run
    md = (d / "run" / "report.md").read_text()
    data = json.loads((d / "run" / "data.json").read_text())
    assert data["test_labels"] == "as given" and data["outliers_known"] is False
    assert data["out_of_range_inputs"]["test"] >= 1  # the size of 500
    assert "clean test set" not in md and "Accuracy on the test split (labels as given)" in md
    assert "outlier labels in your file: unknown (labels taken as given; none injected)" in md
    assert f"rows with a feature outside the training range: val {data['out_of_range_inputs']['val']}, test " in md
    # TOR's threshold and flagged share are in the report; real outliers are unknown here, so not claimed
    methods = json.loads((d / "run" / "distill.json").read_text())["methods"]
    rej = methods["tor_mt"]["rejection"]
    assert 0 < rej["flagged_share"] < 0.5 and "real_outliers" not in rej
    assert rej["threshold_label_units"] == pytest.approx(rej["threshold_std_units"] * data["preprocessing"]["labels"]
                                                         ["std"][0], rel=1e-6)
    row = next(line for line in md.splitlines() if line.startswith("| tor_mt |"))
    assert f"{rej['flagged_share']:.3f}" in row and "real ones flagged" not in md
    # the teacher head is trained by tor_mt only: scratch shows none
    assert methods["scratch"]["trains_teacher_head"] is False and methods["tor_mt"]["trains_teacher_head"] is True
    report = json.loads((d / "run" / "report.json").read_text())["students"]
    assert report["scratch"]["test_teacher_head"] is None and report["tor_mt"]["test_teacher_head"]["rmse"] > 0
    scratch = next(line for line in md.splitlines() if line.startswith("| student `scratch`"))
    assert scratch.split("|")[6].strip() == "–"
    # only ONNX files were benched: no LiteRT floor
    bench = json.loads((d / "run" / "bench" / "host.json").read_text())["results"]
    assert {r["runtime"] for r in bench} == {"onnxruntime"}


def test_clip_outputs_keeps_every_prediction_in_the_training_label_range(run, tmp_path):
    from pipeline.config import load_config
    from pipeline.stages.export import export_student

    d, _ = run
    cfg = load_config(d / "run" / "config.yaml", ["export.clip_outputs=true"])
    result = export_student(cfg, d / "run", tmp_path, ["onnx_fp32", "tflite_fp32"], False)
    assert all(r["status"] == "ok" for r in result["formats"] if r["model"] == "student")
    labels = json.loads((d / "run" / "data.json").read_text())["preprocessing"]["labels"]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "student.onnx").metadata_props}
    assert json.loads(meta["output_clipping"])["max"] == labels["train_max"]
    rows = d / "far.csv"  # sizes far outside the training range push the unclipped student past the labels
    write(rows, ["size", "age", "colour", "shape"], [["5000", "1", "red", "round"], ["-5000", "39", "blue", "square"]])
    for name in ("student.onnx", "student_fp32.tflite"):
        proc = run_cli("predict", "--run", d / "run", "--csv", rows, "--file", tmp_path / name)
        assert proc.returncode == 0, proc.stderr
        clipped = np.array(proc.stdout.split()[1:], dtype=float)
        assert clipped.tolist() == pytest.approx([labels["train_max"][0], labels["train_min"][0]], rel=1e-6)
        assert "2 row(s) have a numeric feature outside the training range (size 2)" in proc.stderr
    free = run_cli("predict", "--run", d / "run", "--csv", rows)  # the run's own file does not clip
    assert float(free.stdout.split()[1]) > labels["train_max"][0]
