"""``python -m pipeline predict --run DIR --csv FILE [--file EXPORTED] [--out preds.csv]``: raw table rows
through the run's preprocessing (``data.json`` -> ``preprocessing``, the steps the app's
``buildInput`` repeats) into any exported file (.onnx, .ort, .tflite; fp32, fp16 or int8, int8 I/O
quantized with the file's own scale and zero point), predictions in label units.

No torch: the exported file runs in its own runtime (``device_bench.runner``, as on a device)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.preprocessing import apply_spec, raw_columns
from pipeline.data.sources.common import DataError
from pipeline.data.sources.csv_reader import numeric_block, read_table
from pipeline.errors import UserError
from pipeline.io import atomic_write_text

SUFFIXES = (".onnx", ".ort", ".tflite")


@dataclass
class Prediction:
    file: Path
    names: list[str]  # one per column of ``values``
    values: np.ndarray  # (n, len(names)) float32
    info: dict  # what apply_spec met: unknown categories, rows outside the training range


def run_spec(run_dir: Path) -> dict:
    path = run_dir / "data.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: run the pipeline's data stage first")
    spec = json.loads(path.read_text()).get("preprocessing")
    if not spec:
        raise UserError(f"{path} holds no preprocessing (a run made before it was recorded); re-run from the data "
                        f"stage: python -m pipeline run --out {run_dir} --from data")
    if spec.get("input") != "table":
        raise UserError(f"predict --csv needs a run on a table; this run's inputs are {spec.get('input')} "
                        f"{spec.get('input_shape')}")
    return spec


def exported_files(run_dir: Path) -> list[str]:
    """The files the export stage wrote and checked (relative to the run directory)."""
    path = run_dir / "export.json"
    if not path.is_file():
        return []
    result = json.loads(path.read_text())
    rows = [("", r) for r in result.get("formats", [])] + [("android/", r) for r in result.get("android", [])]
    return [where + r["file"] for where, r in rows if r.get("file") and r.get("model", "student") == "student"]


def resolve_file(run_dir: Path, name: str | None) -> Path:
    files = exported_files(run_dir)
    if name is None:
        if not files:
            raise UserError(f"{run_dir}: no exported student files (export.json); run the export stage first")
        name = "student.onnx" if "student.onnx" in files else files[0]
    candidates = [Path(name), run_dir / name]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None or path.suffix not in SUFFIXES:
        listing = ", ".join(files) or "none"
        what = "not found" if path is None else f"is not a model file (expected {', '.join(SUFFIXES)})"
        raise UserError(f"--file {name}: {what}; this run's exported student files: {listing}")
    return path


def read_rows(csv_path: Path, spec: dict) -> tuple[dict[str, np.ndarray], dict[str, list[str]], int]:
    """The raw columns the spec needs, read and validated like a training CSV (one-line errors)."""
    table = read_table(csv_path, f"csv {csv_path}")
    missing = [c for c in raw_columns(spec) if c not in table.header]
    if missing:
        raise DataError(f"csv {csv_path}: missing column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}; "
                        f"the model needs {', '.join(raw_columns(spec))} (the file has {', '.join(table.header)})")
    if not table.rows:
        raise DataError(f"csv {csv_path}: no data rows under the header")
    numeric = [f["column"] for f in spec["features"] if f["type"] == "numeric"]
    block = numeric_block(table, numeric, "feature") if numeric else np.zeros((len(table.rows), 0))
    text = {f["column"]: table.column(f["column"], "feature") for f in spec["features"] if f["type"] != "numeric"}
    return {c: block[:, j] for j, c in enumerate(numeric)}, text, len(table.rows)


def predict_csv(run_dir: Path, csv_path: Path, file: str | None = None) -> Prediction:
    from device_bench.runner import ModelFileError, open_model, predict_all

    spec = run_spec(run_dir)
    path = resolve_file(run_dir, file)
    numeric, text, _ = read_rows(Path(csv_path), spec)
    x, info = apply_spec(spec, numeric, text)
    try:
        model = open_model(str(path))
    except ModelFileError as exc:
        raise UserError(str(exc)) from None
    out = predict_all(model, x)
    return Prediction(path, output_names(spec, out.shape[1]), out, info)


def output_names(spec: dict, width: int) -> list[str]:
    labels = spec.get("labels", {})
    names = list(labels.get("names") or [f"logit_{c}" for c in labels.get("classes", [])])
    return names[:width] + [f"extra_{j}" for j in range(len(names), width)]


def write_predictions(pred: Prediction, out: str | None) -> str:
    """CSV text of the predictions; written atomically to ``out`` when given."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(pred.names)
    w.writerows([[f"{v:.9g}" for v in row] for row in pred.values.tolist()])
    if out:
        atomic_write_text(out, buf.getvalue())
    return buf.getvalue()


def summary(pred: Prediction, n_rows: int) -> list[str]:
    """Lines for stderr: which file, and what an app should know about these rows."""
    lines = [f"predict: {n_rows} rows through {pred.file}"]
    for col, k in pred.info["unknown_categories"].items():
        lines.append(f"warning: column '{col}': {k} row(s) hold a category not seen in training (all-zero one-hot)")
    if k := pred.info["rows_outside_training_range"]:
        cols = ", ".join(f"{c} {v}" for c, v in pred.info["outside_by_column"].items())
        lines.append(f"warning: {k} row(s) have a numeric feature outside the training range ({cols}); "
                     "predictions there are extrapolations")
    return lines
