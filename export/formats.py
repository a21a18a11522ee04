"""The format table and the export -> run -> validate loop.

One row per format: its file name, the runtime that executes it, its precision, whether it
must match PyTorch to ``parity_atol`` (fp32 files) or only has its error reported (fp16, int8),
and the function that makes it. ``export_all`` makes each chosen row, runs the file in its
runtime on the evaluation inputs and records a row of results; a strict row that fails (or
that could not be written) raises ``ParityError`` after every row has been tried.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from device_bench.runner import load_model, predict_all
from export.onnx_export import INPUT_NAME, export_onnx, graph_io
from export.quantize import quantize_int8_static
from export.tflite import onnx_to_tflite
from pipeline.config import ExportConfig
from pipeline.errors import ParityError
from pipeline.io import sha256_file
from pipeline.metrics import max_abs_diff, regression_metrics

log = logging.getLogger(__name__)


@dataclass
class ExportJob:
    model: nn.Module  # single-output PyTorch model, eval mode
    out_dir: Path
    in_features: int
    x_eval: np.ndarray  # model-ready evaluation inputs (clean test split)
    y_eval: np.ndarray  # clean test labels
    x_calib: np.ndarray  # calibration inputs (training split)
    cfg: ExportConfig
    stem: str = "student"
    metadata: dict[str, str] = field(default_factory=dict)
    _tflite: dict[str, dict[str, Path]] = field(default_factory=dict)  # one onnx2tf run per stem

    def file(self, fmt: Format) -> Path:
        return self.out_dir / fmt.file.format(stem=self.stem)

    @cached_property
    def torch_outputs(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.as_tensor(self.x_eval, dtype=torch.float32)).numpy()


def _make_onnx(job: ExportJob, fmt: Format) -> Path:
    return export_onnx(job.model, job.file(fmt), job.in_features, job.cfg.opset, job.cfg.simplify, job.metadata)


def _onnx_fp32(job: ExportJob) -> Path:
    path = job.file(FORMATS["onnx_fp32"])
    if not path.exists():
        _make_onnx(job, FORMATS["onnx_fp32"])
    return path


def _make_onnx_int8(job: ExportJob, fmt: Format) -> Path:
    q = job.cfg.int8
    calib = job.x_calib[: q.calibration_samples]
    return quantize_int8_static(_onnx_fp32(job), job.file(fmt), calib, INPUT_NAME, q.calibrate_method, q.per_channel)


def _make_tflite(job: ExportJob, fmt: Format) -> Path:
    if job.stem not in job._tflite:
        job._tflite[job.stem] = onnx_to_tflite(_onnx_fp32(job), job.out_dir, job.stem)
    return job._tflite[job.stem][fmt.precision]


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # file name template; {stem} is "student" or "teacher"
    runtime: str
    precision: str
    strict: bool  # fp32: must match PyTorch within parity_atol
    make: Callable[[ExportJob, Format], Path]
    description: str = ""


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("onnx_fp32", "{stem}.onnx", "onnxruntime", "fp32", True, _make_onnx,
               "ONNX, dynamic batch, simplified with onnxsim"),
        Format("onnx_int8", "{stem}.int8.onnx", "onnxruntime", "int8", False, _make_onnx_int8,
               "ONNX Runtime static int8, QDQ, per-channel weights, calibrated on training inputs"),
        Format("tflite_fp32", "{stem}_fp32.tflite", "litert", "fp32", True, _make_tflite,
               "TFLite via onnx2tf, float32"),
        Format("tflite_fp16", "{stem}_fp16.tflite", "litert", "fp16", False, _make_tflite,
               "TFLite via onnx2tf, float16 weights"),
    ]
}


def check_file(job: ExportJob, fmt: Format, path: Path) -> dict:
    """Run ``path`` in its runtime on the evaluation inputs and compare with PyTorch."""
    ref = job.torch_outputs
    model = load_model(str(path), threads=1)
    out = predict_all(model, job.x_eval.astype(np.float32))
    row = {
        "n_outputs": model.n_outputs,
        "max_abs_diff_vs_torch": max_abs_diff(out, ref),
        **regression_metrics(out, job.y_eval),
    }
    problems = []
    if model.n_outputs != 1:
        problems.append(f"has {model.n_outputs} outputs, expected exactly 1")
    if path.suffix == ".onnx":
        ins, outs = graph_io(path)
        row["onnx_io"] = {"inputs": ins, "outputs": outs}
    if fmt.strict and row["max_abs_diff_vs_torch"] > job.cfg.parity_atol:
        problems.append(f"max |diff| vs PyTorch {row['max_abs_diff_vs_torch']:.3g} > {job.cfg.parity_atol:g}")
    row["status"] = "ok" if not problems else "failed"
    if problems:
        row["error"] = "; ".join(problems)
    return row


def export_all(job: ExportJob, names: list[str]) -> list[dict]:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    torch_metrics = regression_metrics(job.torch_outputs, job.y_eval)
    for name in names:
        fmt = FORMATS[name]
        row = {"format": name, "model": job.stem, "runtime": fmt.runtime, "precision": fmt.precision,
               "strict": fmt.strict}
        t0 = time.perf_counter()
        try:
            path = fmt.make(job, fmt)
            row.update(file=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path),
                       export_seconds=time.perf_counter() - t0)
            row.update(check_file(job, fmt, path))
            row["rmse_ratio_vs_torch"] = row["rmse"] / torch_metrics["rmse"] if torch_metrics["rmse"] else None
        except Exception as exc:  # a format that fails is a row, never a silent drop
            log.debug("export %s failed:\n%s", name, traceback.format_exc())
            row.update(status="export_failed", error=f"{type(exc).__name__}: {exc}")
        log.info(
            "export %-12s %-14s %s%s", job.stem, name, row["status"],
            f" max|diff|={row['max_abs_diff_vs_torch']:.2e} rmse={row['rmse']:.4f}" if "rmse" in row else "",
        )
        rows.append(row)
    bad = [r for r in rows if r["strict"] and r["status"] != "ok"]
    if bad:
        detail = "; ".join(f"{r['model']} {r['format']}: {r.get('error')}" for r in bad)
        raise ParityError(f"export parity check failed: {detail}")
    return rows
