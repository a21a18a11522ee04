"""Checks on written files beyond the runtime parity of ``formats.check_file``: every ``.onnx``
passes ``onnx.checker.check_model(full_check=True)`` (field ``onnx_checker``), every ``.tflite``
loads in TensorFlow's own ``tf.lite.Interpreter`` as well as LiteRT (field ``tensorflow_interpreter``)
and gets TensorFlow's static GPU-delegate verdict (field ``gpu_delegate``),
and no file's outputs hold NaN or infinity. A file that fails becomes a ``failed`` row."""

from __future__ import annotations

import logging
from pathlib import Path

from export.onnx_export import full_check
from export.tflite import tensorflow_load_check

log = logging.getLogger(__name__)


def _fail(row: dict, problem: str) -> None:
    row["status"] = "failed"
    row["error"] = "; ".join(p for p in (row.get("error"), problem) if p)


def add_file_checks(groups: list[tuple[Path, list[dict]]]) -> None:
    """``groups``: (directory, rows written there). Adds the fields in place; one TensorFlow child for all."""
    tflite = [d / r["file"] for d, rows in groups for r in rows
              if r.get("file", "").endswith(".tflite") and r.get("status") != "export_failed"]
    tf = tensorflow_load_check(tflite)
    for directory, rows in groups:
        for row in rows:
            if "file" not in row or row.get("status") == "export_failed":
                continue
            path = directory / row["file"]
            if path.suffix == ".onnx":
                row["onnx_checker"] = full_check(path)
                if row["onnx_checker"] != "ok":
                    _fail(row, f"onnx.checker (full_check) rejects {path.name}: {row['onnx_checker']}")
            elif path.suffix == ".tflite":
                res = tf.get(str(path), {"ok": False, "error": "not checked"})
                row["tensorflow_interpreter"] = ("ok" if res.get("ok") else
                                                 "skipped: " + res["error"] if res.get("ok") is None else
                                                 "failed: " + res.get("error", ""))
                if res.get("ok") is False:
                    _fail(row, f"tf.lite.Interpreter cannot load {path.name}: {res.get('error')}")
                if res.get("gpu_delegate"):
                    row["gpu_delegate"] = f"{res['gpu_delegate']} (static check, TensorFlow {res.get('version')})"
            n_bad = row.get("non_finite_outputs")
            if n_bad:
                _fail(row, f"{n_bad} NaN or infinite outputs")


def non_finite_rows(rows: list[dict]) -> list[str]:
    """'<model> <format> (<file>)' of every row whose file gave NaN or infinite outputs."""
    return [f"{r['model']} {r['format']} ({r.get('file')})" for r in rows if r.get("non_finite_outputs")]
