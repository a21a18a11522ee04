"""Issue 6 through the real CLI: your own CSV (with categorical columns and injected outliers),
several outputs, MPIIGaze's .mat layout with the angular-error metric, and teachers you already have
(an ONNX file from another framework, a PyTorch checkpoint)."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
import scipy.io
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli

FAST = {
    "teacher": {"hidden": [128, 128], "train": {"epochs": 150, "patience": 25, "lr": 0.002}},
    "student": {"hidden": [8]},
    "distill": {"baselines": ["scratch"], "train": {"epochs": 150, "patience": 25, "lr": 0.005}},
    "export": {"formats": ["onnx_fp32"], "android": {"enabled": False}},
    "bench": {"targets": ["host"], "warmup": 2, "runs": 10},
}


def write_diabetes_csv(path):
    """scikit-learn's bundled diabetes table (442 patients) as a CSV this project has never seen."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes(scaled=False)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*d.feature_names, "progression"])
        for row, t in zip(d.data, d.target):
            w.writerow([*(f"{v:g}" for v in row[:1]), "female" if row[1] == 1 else "male",
                        *(f"{v:g}" for v in row[2:]), f"{t:g}"])
    return d


def config(tmp_path, name, tree):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**FAST, **tree}))
    return path


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    write_diabetes_csv(d / "diabetes.csv")
    cfg = config(d, "diabetes", {"seed": 0, "data": {
        "name": "source",
        "source": {"kind": "csv", "path": "diabetes.csv", "labels": ["progression"], "categorical": ["sex"]},
        "noise": {"sigma": 0.0, "outlier_fraction": 0.25, "outlier_low": -1000, "outlier_high": 1000}}})
    proc = run_cli("run", "--config", cfg, "--out", d / "run", cwd=d.parent)  # the CSV path is relative to the config
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, proc


def test_unseen_csv_with_outliers_tor_mt_beats_scratch(csv_run):
    d, proc = csv_run
    data = json.loads((d / "run" / "data.json").read_text())
    assert data["sizes"]["train"] + data["sizes"]["val"] + data["sizes"]["test"] == 442
    assert data["outliers"]["train"] > 0 and data["outliers"]["test"] == 0
    assert data["input_shape"] == [11]  # 9 numeric + sex one-hot (female, male)
    methods = json.loads((d / "run" / "distill.json").read_text())["methods"]
    tor, scratch = methods["tor_mt"]["test_label_head"]["rmse"], methods["scratch"]["test_label_head"]["rmse"]
    assert tor < 0.8 * scratch, (tor, scratch)
    # deployed files predict in label units (the head was rescaled after standardised training)
    exp = json.loads((d / "run" / "export.json").read_text())["formats"]
    onnx_row = next(r for r in exp if r["model"] == "student" and r["format"] == "onnx_fp32")
    deployed = json.loads((d / "run" / "student.json").read_text())
    assert (deployed["qat"] or {}).get("test_before", deployed["test"])["rmse"] == pytest.approx(tor, rel=1e-4)
    assert onnx_row["status"] == "ok" and onnx_row["rmse"] == pytest.approx(deployed["test"]["rmse"], rel=1e-4)
    assert 30 < tor < 120  # progression spans 25..346: an RMSE in label units, not standardised units
    cfg = yaml.safe_load((d / "run" / "config.yaml").read_text())
    assert cfg["data"]["source"]["path"] == str(d / "diabetes.csv")  # stored absolute


def test_changed_data_file_reruns_the_data_stage_and_bad_rows_are_named(csv_run):
    d, _ = csv_run
    proc = run_cli("run", "--config", d / "diabetes.yaml", "--out", d / "run")
    assert proc.returncode == 0 and "data (cached)" in proc.stdout
    lines = (d / "diabetes.csv").read_text().splitlines()
    bad = lines[:10] + [lines[10].replace(lines[10].split(",")[2], "n/a", 1)] + lines[11:]
    (d / "bad.csv").write_text("\n".join(bad) + "\n")
    cfg = yaml.safe_load((d / "diabetes.yaml").read_text())
    cfg["data"]["source"]["path"] = "bad.csv"
    (d / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "bad.yaml", "--out", d / "bad_run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.csv" in proc.stderr and "row 10" in proc.stderr and "bmi" in proc.stderr and "'n/a'" in proc.stderr
    assert not (d / "bad_run" / "data.npz").exists()


def _linear_onnx(path, w, b):
    """A teacher from "another framework": least squares on the raw columns, written as ONNX by hand."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", len(w)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w.reshape(-1, 1).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([b], np.float32), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_given_onnx_teacher_on_raw_inputs_and_given_checkpoint(csv_run):
    from pipeline.data import Splits

    d, _ = csv_run
    splits = Splits.load(d / "run" / "data.npz")
    x, y = splits.x_raw["train"], splits.y_clean["train"][:, 0]
    a = np.c_[x, np.ones(len(x))]
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    _linear_onnx(d / "linear.onnx", coef[:-1], coef[-1])
    expected = float(np.sqrt(np.mean((np.c_[splits.x_raw["test"], np.ones(len(splits.x_raw["test"]))] @ coef
                                      - splits.y_clean["test"][:, 0]) ** 2)))
    cfg = yaml.safe_load((d / "diabetes.yaml").read_text())
    cfg["teacher"] = {"onnx": "linear.onnx", "onnx_input": "raw"}
    (d / "given.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "given.yaml", "--out", d / "given")
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = json.loads((d / "given" / "teacher.json").read_text())
    assert teacher["origin"].startswith("ONNX file") and teacher["params"] == 11 + 1 and teacher["history"] is None
    assert teacher["test"]["rmse"] == pytest.approx(expected, rel=1e-4)
    bench = json.loads((d / "given" / "bench" / "host.json").read_text())["results"]
    t_row = next(r for r in bench if r["model"] == "teacher")  # the bench feeds the given teacher raw inputs
    assert t_row["rmse"] == pytest.approx(expected, rel=1e-4)
    assert "teacher (ONNX file" in (d / "given" / "report.md").read_text()

    # the teacher trained in the first run, as a PyTorch checkpoint: the same soft targets, no training
    cfg["teacher"] = {"hidden": [128, 128], "checkpoint": str(d / "run" / "teacher.pt")}
    (d / "ckpt.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "ckpt.yaml", "--out", d / "ckpt", "--only", "data", "--only", "teacher")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = np.load(d / "run" / "teacher_preds.npz")["test"]
    assert np.allclose(np.load(d / "ckpt" / "teacher_preds.npz")["test"], mine, atol=1e-4)
    cfg["teacher"]["hidden"] = [64, 64]  # not the checkpoint's architecture
    (d / "ckpt_bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "ckpt_bad.yaml", "--out", d / "ckpt_bad")
    assert proc.returncode == 2 and "does not fit the configured teacher" in proc.stderr
    assert "Traceback" not in proc.stderr


def _gaze_mat_files(root, persons=(0, 1, 2, 3), n=60, seed=0):
    """Tiny files in MPIIGaze's Normalized layout; the eye patch shows a bright blob whose position
    follows the gaze direction, so the gaze is learnable from the image."""
    rng = np.random.default_rng(seed)
    for p in persons:
        pdir = root / "Data" / "Normalized" / f"p{p:02d}"
        pdir.mkdir(parents=True)
        pitch, yaw = rng.uniform(-0.3, 0.3, n), rng.uniform(-0.4, 0.4, n)
        g = np.c_[-np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)]
        img = rng.integers(0, 30, size=(n, 36, 60)).astype(np.uint8)
        rows, cols = (18 + pitch / 0.3 * 12).astype(int), (30 + yaw / 0.4 * 22).astype(int)
        for i in range(n):
            img[i, rows[i] - 3 : rows[i] + 3, cols[i] - 4 : cols[i] + 4] = 230
        eye = {"image": img, "gaze": g, "pose": np.zeros((n, 3))}
        scipy.io.savemat(pdir / "day01.mat", {"data": {"left": eye, "right": eye}, "filenames": np.array(["a"] * n)})


def test_mpiigaze_layout_runs_end_to_end_with_angular_error(tmp_path):
    _gaze_mat_files(tmp_path / "MPIIGaze")
    cfg = config(tmp_path, "gaze", {"seed": 0, "data": {
        "name": "source", "source": {"kind": "mpiigaze", "root": "MPIIGaze", "test_person": "p03",
                                     "val_person": "p02", "eyes": "left"}},
        "teacher": {"hidden": [256], "train": {"epochs": 60, "patience": 15}},
        "student": {"hidden": [8]}, "distill": {"baselines": [], "train": {"epochs": 60, "patience": 15}}})
    proc = run_cli("run", "--config", cfg, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = json.loads((tmp_path / "run" / "student.json").read_text())
    test = student["test"]
    assert set(test["per_output"]) == {"pitch", "yaw"}
    assert 0 < test["angular_error_deg"] < 12  # guessing the mean direction would be ~14 degrees
    exp = json.loads((tmp_path / "run" / "export.json").read_text())["formats"]
    row = next(r for r in exp if r["model"] == "student" and r["format"] == "onnx_fp32")
    assert row["io"]["output"]["shape"][-1] == 2 and row["angular_error_deg"] == pytest.approx(
        test["angular_error_deg"], rel=1e-4)
