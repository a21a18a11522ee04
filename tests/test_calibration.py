"""The int8 calibration sample covers the whole training split, whatever the file order: a table
sorted by its label (common: exports sorted by date, id or price) still gives int8 within its limit."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from export.calibration import calibration_indices
from export.int8_arith import exact_outputs
from export.quantize import quantize_int8_static
from tests.conftest import run_cli


def test_sample_is_seeded_spread_over_the_label_range_and_distinct():
    y = np.sort(np.random.default_rng(0).normal(size=(20_000, 1)), axis=0)  # sorted, as in a sorted file
    a = calibration_indices(len(y), 500, seed=0, y=y)
    assert np.array_equal(a, calibration_indices(len(y), 500, seed=0, y=y))  # repeatable
    assert not np.array_equal(a, calibration_indices(len(y), 500, seed=1, y=y))  # the seed matters
    assert len(a) == len(np.unique(a)) == 500
    # every tenth of the label range (by rank) holds its share: 50 rows each
    counts = np.bincount(a * 10 // len(y), minlength=10)
    assert counts.tolist() == [50] * 10
    assert np.array_equal(calibration_indices(300, 500, seed=0, y=y[:300]), np.arange(300))  # all rows


def _sorted_table(path, n=1500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = 2.0 * x[:, 0] + np.sin(2 * x[:, 1]) + 0.5 * x[:, 2] ** 2
    order = np.argsort(y)  # the file is sorted by its label
    split = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "split", "y"])
        for i in order:
            w.writerow([f"{x[i, 0]:.6g}", f"{x[i, 1]:.6g}", f"{x[i, 2]:.6g}", split[i], f"{y[i]:.6g}"])


@pytest.fixture(scope="module")
def sorted_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sorted")
    _sorted_table(d / "sorted.csv")
    cfg = {
        "seed": 0,
        "data": {"name": "source", "source": {"kind": "csv", "path": "sorted.csv", "labels": ["y"],
                                              "split_column": "split"}},
        "teacher": {"hidden": [64, 64], "train": {"epochs": 60, "patience": 15, "lr": 0.003}},
        "student": {"hidden": [16]},
        "distill": {"baselines": [], "train": {"epochs": 80, "patience": 20, "lr": 0.005}},
        "export": {"formats": ["onnx_fp32", "onnx_int8"], "android": {"enabled": False},
                   "int8": {"calibration_samples": 512}},
        "bench": {"targets": ["host"], "warmup": 2, "runs": 10},
    }
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", d / "c.yaml", "--out", d / "run", cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run"


def test_sorted_training_split_gives_int8_within_the_limit(sorted_run):
    exp = json.loads((sorted_run / "export.json").read_text())
    row = next(r for r in exp["formats"] if r["model"] == "student" and r["format"] == "onnx_int8")
    assert row["status"] == "ok" and row["rmse_ratio_vs_torch"] <= row["rmse_ratio_limit"], row
    assert exp["calibration"]["rows"] == 512 and exp["calibration"]["stratified_by_label"]
    assert "seeded random sample" in exp["calibration"]["how"]
    rep = json.loads((sorted_run / "report.json").read_text())
    assert rep["calibration"] == exp["calibration"]
    assert [v["status"] for v in rep["verdicts"]] == ["ok"]
    # every verdict ok: --strict exits 0 (every stage cached)
    proc = run_cli("run", "--config", sorted_run.parent / "c.yaml", "--out", sorted_run, "--strict",
                   cwd=sorted_run.parent)
    assert proc.returncode == 0 and "verdicts: all 1 fp16/int8 files within their limits" in proc.stdout


def test_first_rows_of_a_sorted_split_would_not_have_been(sorted_run, tmp_path):
    """The control: calibrating on the first rows in file order (what pocketkd did before) clips the
    upper label range, so the same student's int8 file is far over the limit."""
    from pipeline.data import Splits

    splits = Splits.load(sorted_run / "data.npz")
    assert np.all(np.diff(splits.y["train"][:, 0]) >= 0)  # the training split really is in label order
    fp32 = sorted_run / "student.onnx"
    x_test, y_test = splits.x["test"], splits.y_clean["test"]
    ref = exact_outputs(fp32, x_test)
    rmse = lambda p: float(np.sqrt(np.mean((p - y_test) ** 2)))  # noqa: E731
    first = quantize_int8_static(fp32, tmp_path / "first.onnx", splits.x["train"][:512], "input", prepare=False)
    rows = calibration_indices(len(splits.x["train"]), 512, 0, splits.y["train"])
    sample = quantize_int8_static(fp32, tmp_path / "sample.onnx", splits.x["train"][rows], "input", prepare=False)
    ratio_first = rmse(exact_outputs(first, x_test)) / rmse(ref)
    ratio_sample = rmse(exact_outputs(sample, x_test)) / rmse(ref)
    assert ratio_first > 1.5 and ratio_sample < 1.1, (ratio_first, ratio_sample)
