"""The format table and the export -> run -> validate loop.

``FORMATS`` is the rows of ``export.format_table`` (names and properties, importable without
torch), each joined with the function in ``MAKERS`` that writes it. One row per format: its file
name, the runtime that executes it, its precision, whether it must match PyTorch to
``parity_atol`` (fp32 files) or has its error compared with a configurable limit (fp16, int8),
and the function that makes it. ``export_all`` makes each chosen row, runs the
file in its runtime on the evaluation inputs, runs the format's own checks (ORT's mobile
usability checker for ONNX, builtin-ops-only for TFLite) and records one row of results. A strict
row that fails, or that could not be written, raises ``ParityError`` after every row was tried;
any other failure is a row marked ``failed`` / ``over_limit`` / ``export_failed``, never dropped.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from device_bench.runner import load_model, predict_all
from export import converter, ort_tools
from export.calibration import calibration_indices, describe as describe_calibration
from export.format_table import FORMAT_TABLE
from export.int8_arith import exact_outputs, host_int8_profile
from export.onnx_export import INPUT_NAME, export_cached, export_onnx, graph_io, to_fp16
from export.quantize import quantize_int8_dynamic, quantize_int8_static
from export.tflite import non_builtin_ops, onnx_to_tflite, tflite_ops
from export.xnnpack import xnnpack_delegation
from pipeline.config import ExportConfig
from pipeline.errors import ParityError
from pipeline.io import sha256_file
from pipeline.metrics import max_abs_diff, task_metrics

log = logging.getLogger(__name__)


@dataclass
class ExportJob:
    model: nn.Module  # single-output PyTorch model, eval mode
    out_dir: Path
    input_shape: tuple[int, ...]  # one input, without the batch axis (PyTorch layout)
    x_eval: np.ndarray  # model-ready evaluation inputs (clean test split)
    y_eval: np.ndarray  # clean test labels (regression targets, or class indices)
    x_calib: np.ndarray  # calibration inputs (training split)
    cfg: ExportConfig
    stem: str = "student"
    y_calib: np.ndarray | None = None  # labels of x_calib (regression): the calibration sample is stratified over them
    metadata: dict[str, str] = field(default_factory=dict)
    batch: int | None = None  # None: dynamic batch axis; an int: fixed (mobile bundle)
    task: str = "regression"  # or "classification": outputs are logits, the metric is accuracy
    abstain: bool = False  # classification: the last output is the gambler's abstain option
    angles: bool = False  # regression outputs are (pitch, yaw) radians: angular error is reported
    output_names: list[str] = field(default_factory=list)
    tflite_variants: tuple[str, ...] = ("fp32", "fp16")  # what one onnx2tf run should write
    _tflite: dict[str, Path] | Future | Exception | None = None
    _ort: dict[str, Path] | None = None
    _base: Path | None = field(default=None, init=False, repr=False)

    def file(self, fmt: Format) -> Path:
        return self.out_dir / fmt.file.format(stem=self.stem)

    @cached_property
    def torch_outputs(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.as_tensor(self.x_eval, dtype=torch.float32)).numpy()

    @cached_property
    def calib_rows(self) -> np.ndarray:
        """Training rows of the calibration sample: seeded, over the whole split (never file order)."""
        q = self.cfg.int8
        return calibration_indices(len(self.x_calib), q.calibration_samples, q.calibration_seed,
                                   self.y_calib if self.task == "regression" else None)

    @property
    def calib(self) -> np.ndarray:
        return self.x_calib[self.calib_rows]

    def calibration_info(self) -> dict:
        q = self.cfg.int8
        stratified = self.task == "regression" and self.y_calib is not None
        return {"rows": int(len(self.calib_rows)), "of": int(len(self.x_calib)), "seed": q.calibration_seed,
                "stratified_by_label": stratified,
                "how": describe_calibration(len(self.x_calib), q.calibration_samples, q.calibration_seed, stratified)}


def _base_onnx(job: ExportJob) -> Path:
    """The job's fp32 ONNX (every other format is made from it), exported once per job."""
    if job._base is None:
        fmt = FORMATS["onnx_fp32"]
        job._base = export_onnx(job.model, job.file(fmt), job.input_shape, job.cfg.opset, job.cfg.simplify,
                                job.metadata, batch=job.batch)
    return job._base


def _make_onnx(job: ExportJob, fmt: Format) -> Path:
    if fmt.name == "onnx_fp32":
        return _base_onnx(job)
    return export_onnx(job.model, job.file(fmt), job.input_shape, job.cfg.opset, job.cfg.simplify, job.metadata,
                       batch=job.batch)


def _make_onnx_fp16(job: ExportJob, fmt: Format) -> Path:
    return to_fp16(_base_onnx(job), job.file(fmt))


def _make_onnx_int8(job: ExportJob, fmt: Format) -> Path:
    q = job.cfg.int8
    return quantize_int8_static(_base_onnx(job), job.file(fmt), job.calib, INPUT_NAME, q.calibrate_method,
                                q.per_channel, batch=job.batch or 32, float_first_layer=q.float_first_layer,
                                prepare=q.prepare)


def _make_onnx_int8_dynamic(job: ExportJob, fmt: Format) -> Path:
    q = job.cfg.int8
    return quantize_int8_dynamic(_base_onnx(job), job.file(fmt), q.per_channel,
                                 calib_x=job.calib if q.prepare else None,  # calib_x: weight preparation
                                 float_first_layer=q.float_first_layer)


def _make_ort(job: ExportJob, fmt: Format) -> Path:
    """Both .ort files come from one conversion, so required_operators.config covers both."""
    if job._ort is None:
        sources = [_base_onnx(job)]
        int8 = job.file(FORMATS["onnx_int8"])
        if not int8.exists():
            _make_onnx_int8(job, FORMATS["onnx_int8"])
        sources.append(int8)
        job._ort = ort_tools.convert_to_ort(sources, job.out_dir)
    src = FORMATS["onnx_fp32" if fmt.precision == "fp32" else "onnx_int8"].file.format(stem=job.stem)
    return job._ort[src]


def _convert_tflite(job: ExportJob) -> dict[str, Path]:
    calib = job.calib
    if calib.ndim == 4:  # TFLite is NHWC: representative data in that layout
        calib = calib.transpose(0, 2, 3, 1)
    return onnx_to_tflite(_base_onnx(job), job.out_dir, job.stem, job.tflite_variants, calib,
                          prepare=job.cfg.int8.prepare)


def prefetch_tflite(job: ExportJob, names: list[str]) -> None:
    """Start the job's TFLite conversion on the current converter's background thread, so the ONNX
    and ORT rows are made and checked while the converter child works. A student the conversion
    cache has not seen starts the child first: TensorFlow imports while PyTorch exports."""
    job.tflite_variants = tuple(FORMATS[n].variant for n in names if FORMATS[n].variant)
    conv = converter.current()
    if not job.tflite_variants or conv is None or job._tflite is not None:
        return
    if not export_cached(job.model, job.input_shape, job.cfg.opset):
        conv.start()
    try:
        _base_onnx(job)
    except Exception:  # reported by the rows that need the file
        return
    job._tflite = conv.submit(_convert_tflite, job)


def _make_tflite(job: ExportJob, fmt: Format) -> Path:
    """One conversion writes every TFLite variant the job asks for; a failure is kept, not retried."""
    if job._tflite is None or isinstance(job._tflite, Future):  # not started yet, or under way
        try:
            job._tflite = job._tflite.result() if job._tflite is not None else _convert_tflite(job)
        except Exception as exc:
            job._tflite = exc
    if isinstance(job._tflite, Exception):
        raise job._tflite
    return job._tflite[fmt.variant]


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # file name template; {stem} is "student" or "teacher"
    runtime: str
    precision: str  # fp32 | fp16 | int8
    strict: bool  # fp32: must match PyTorch within parity_atol
    make: Callable[[ExportJob, Format], Path]
    description: str = ""
    variant: str = ""  # TFLite: which onnx2tf output
    android: bool = False  # in the Android bundle by default

    @property
    def is_onnx(self) -> bool:
        return self.file.endswith(".onnx")


MAKERS: dict[str, Callable[[ExportJob, Format], Path]] = {  # FormatRow.made_by -> the function
    "export_onnx": _make_onnx,
    "to_fp16": _make_onnx_fp16,
    "quantize_static": _make_onnx_int8,
    "quantize_dynamic": _make_onnx_int8_dynamic,
    "convert_to_ort": _make_ort,
    "onnx2tf": _make_tflite,
}

FORMATS: dict[str, Format] = {  # the rows of export.format_table, each with the function that makes it
    r.name: Format(r.name, r.file, r.runtime, r.precision, r.strict, MAKERS[r.made_by], r.description, r.variant,
                   android=r.android)
    for r in FORMAT_TABLE
}


def _io_description(model) -> dict:
    """Input/output name, shape, dtype, layout and quantization of a loaded runtime model."""
    if hasattr(model, "interp"):  # TFLite
        out = {}
        for key, d in (("input", model.inp), ("output", model.out)):
            scale, zp = d["quantization"]
            out[key] = {"name": d["name"], "shape": [int(v) for v in d.get("shape_signature", d["shape"])],
                        "dtype": np.dtype(d["dtype"]).name}
            if scale:
                out[key]["quantization"] = {"scale": float(scale), "zero_point": int(zp)}
        out["input"]["layout"] = "NHWC" if len(out["input"]["shape"]) == 4 else "NC"
        return out
    sess = model.session
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}
    return {
        "input": {"name": i.name, "shape": [d if isinstance(d, int) else -1 for d in i.shape],
                  "dtype": dtype.get(i.type, i.type), "layout": "NCHW" if len(i.shape) == 4 else "NC"},
        "output": {"name": o.name, "shape": [d if isinstance(d, int) else -1 for d in o.shape],
                   "dtype": dtype.get(o.type, o.type)},
    }


def input_grid(model) -> dict | None:
    """The 8-bit grid a TFLite file rounds its input to, or None: the input tensor's own quantization
    (int8 I/O), else that of the QUANTIZE op that takes the float input (full-integer, float I/O)."""
    if not hasattr(model, "interp"):
        return None
    scale, zp = model.inp["quantization"]
    dtype = np.dtype(model.inp["dtype"])
    if not scale:
        try:  # the op list is not public API: a runtime without it simply gets no diagnostic
            ops = model.interp._get_ops_details()
        except AttributeError:
            return None
        tensors = {t["index"]: t for t in model.interp.get_tensor_details()}
        q = next((op for op in ops if op["op_name"] == "QUANTIZE" and model.inp["index"] in list(op["inputs"])), None)
        if q is None:
            return None
        t = tensors[int(q["outputs"][0])]
        (scale, zp), dtype = t["quantization"], np.dtype(t["dtype"])
    if not scale or dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    return {"scale": float(scale), "zero_point": int(zp), "dtype": dtype.name, "min": int(info.min), "max": int(info.max)}


def input_rounding(job: ExportJob, grid: dict, ref: dict) -> dict:
    """The PyTorch student, float everywhere, on the evaluation inputs rounded to ``grid``: the part of
    an 8-bit-input file's error that no weight or activation scheme can remove. ``ref``: the student's
    task metrics on the exact inputs."""
    q = np.clip(np.round(job.x_eval / grid["scale"]) + grid["zero_point"], grid["min"], grid["max"])
    with torch.no_grad():
        out = job.model(torch.as_tensor((q - grid["zero_point"]) * grid["scale"], dtype=torch.float32)).numpy()
    m = task_metrics(out, job.y_eval, job.task, job.abstain)
    if job.task == "classification":
        return {**grid, "accuracy": m["accuracy"], "accuracy_drop_vs_torch": ref["accuracy"] - m["accuracy"]}
    return {**grid, "rmse": m["rmse"], "rmse_ratio_vs_torch": m["rmse"] / ref["rmse"] if ref["rmse"] else None}


def check_file(job: ExportJob, fmt: Format, path: Path) -> dict:
    """Run ``path`` in its runtime on the evaluation inputs, compare with PyTorch, run format checks."""
    ref = job.torch_outputs
    model = load_model(str(path), threads=1)
    out = predict_all(model, job.x_eval.astype(np.float32))
    host = None
    if fmt.runtime == "onnxruntime" and fmt.precision == "int8":
        # judged on the file's exact int8 arithmetic (what ARM / VNNI CPUs compute), the same on every
        # host; this host's own kernels are reported beside it (they saturate on x86 without VNNI)
        host = out
        out = exact_outputs(_exact_source(job, fmt, path), job.x_eval, job.batch)
    row = {
        "n_outputs": model.n_outputs,
        "io": _io_description(model),
        "max_abs_diff_vs_torch": max_abs_diff(out, ref),
        "non_finite_outputs": int((~np.isfinite(out)).sum()),
        **task_metrics(out, job.y_eval, job.task, job.abstain, job.angles, job.output_names),
    }
    torch_metrics = task_metrics(ref, job.y_eval, job.task, job.abstain)
    grid = input_grid(model)
    if grid is not None:
        row["input_rounding"] = input_rounding(job, grid, torch_metrics)
    problems, over = [], []
    if model.n_outputs != 1:
        problems.append(f"has {model.n_outputs} outputs, expected exactly 1")
    limits = job.cfg.limits
    if job.task == "classification":
        row["accuracy_drop_vs_torch"] = torch_metrics["accuracy"] - row["accuracy"]
        row["argmax_agreement_vs_torch"] = float(np.mean(out.argmax(1) == ref.argmax(1)))
    else:
        torch_rmse = torch_metrics["rmse"]
        row["rmse_ratio_vs_torch"] = row["rmse"] / torch_rmse if torch_rmse else None
    if fmt.strict:
        if not row["max_abs_diff_vs_torch"] <= job.cfg.parity_atol:  # NaN fails
            problems.append(f"max |diff| vs PyTorch {row['max_abs_diff_vs_torch']:.3g} > {job.cfg.parity_atol:g}")
    elif job.task == "classification":
        limit = limits.fp16_accuracy_drop if fmt.precision == "fp16" else limits.int8_accuracy_drop
        row["accuracy_drop_limit"] = limit
        if not row["accuracy_drop_vs_torch"] <= limit:  # NaN fails
            over.append(f"accuracy {row['accuracy_drop_vs_torch']:.4f} below the PyTorch student's, limit {limit:g}")
    else:
        limit = limits.fp16_rmse_ratio if fmt.precision == "fp16" else limits.int8_rmse_ratio
        row["rmse_ratio_limit"] = limit
        if row["rmse_ratio_vs_torch"] is None and not np.isfinite(row["rmse"]) or \
                row["rmse_ratio_vs_torch"] is not None and not row["rmse_ratio_vs_torch"] <= limit:  # NaN fails
            over.append(f"RMSE {row['rmse_ratio_vs_torch'] or float('nan'):.3f}x the PyTorch student's, limit {limit:g}x"
                        + (f"; rounding the input to this file's 8-bit grid alone gives "
                           f"{row['input_rounding']['rmse_ratio_vs_torch']:.3f}x"
                           if (row.get("input_rounding") or {}).get("rmse_ratio_vs_torch") else ""))
    row["verdict_source"] = ("exact int8 arithmetic (no 16-bit saturation; the same on every CPU)"
                             if host is not None else f"{model.runtime} on this host")
    if host is not None:
        profile = host_int8_profile()
        row["host_kernels"] = {
            "u8s8_saturates": profile["u8s8_saturates"], "int8_path": profile["int8_path"],
            "max_abs_diff_vs_exact": max_abs_diff(host, out),
            **{k: v for k, v in task_metrics(host, job.y_eval, job.task, job.abstain).items() if k in ("rmse", "accuracy")},
        }
    if fmt.is_onnx:
        row["onnx_io"] = dict(zip(("inputs", "outputs"), graph_io(path)))
        if job.cfg.check_mobile:
            row["mobile_usability"] = ort_tools.mobile_usability(path)
    if path.suffix == ".tflite":
        ops = tflite_ops(path)
        row["tflite_ops"] = ops
        bad = non_builtin_ops(ops)
        row["builtin_ops_only"] = not bad
        try:  # LiteRT's default CPU delegate: which nodes it takes (the rest run on builtin kernels)
            row["xnnpack"] = xnnpack_delegation(path)
        except Exception as exc:  # private interpreter API: a runtime without it gets no column
            row["xnnpack"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        if bad:
            problems.append(f"uses non-builtin TFLite ops {bad}")
    row["status"] = "failed" if problems else "over_limit" if over else "ok"
    if problems or over:
        row["error"] = "; ".join(problems + over)
    return row


def _exact_source(job: ExportJob, fmt: Format, path: Path) -> Path:
    """The ONNX file whose exact arithmetic stands for ``path``: itself, or for an ``.ort`` file the
    ``.onnx`` it was converted from (ORT format holds the same graph with ORT's fusions applied)."""
    if path.suffix == ".ort":
        return job.file(FORMATS["onnx_int8"])
    return path


def export_all(job: ExportJob, names: list[str]) -> list[dict]:
    job.out_dir.mkdir(parents=True, exist_ok=True)
    with converter.session():  # the caller's converter child, or one for this job
        prefetch_tflite(job, names)
        return _export_rows(job, names)


def _export_rows(job: ExportJob, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        fmt = FORMATS[name]
        row = {"format": name, "model": job.stem, "runtime": fmt.runtime, "precision": fmt.precision,
               "strict": fmt.strict, "batch": job.batch or "dynamic"}
        t0 = time.perf_counter()
        try:
            path = fmt.make(job, fmt)
            row.update(file=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path),
                       export_seconds=round(time.perf_counter() - t0, 3))
            row.update(check_file(job, fmt, path))
        except Exception as exc:  # a format that fails is a row, never a silent drop
            log.debug("export %s failed:\n%s", name, traceback.format_exc())
            row.update(status="export_failed", error=f"{type(exc).__name__}: {str(exc)[:2000]}")
        log.info(
            "export %-8s %-20s %-12s%s%s", job.stem, name, row["status"],
            f" max|diff|={row['max_abs_diff_vs_torch']:.2e} " + (
                f"rmse={row['rmse']:.4g}" if "rmse" in row else f"accuracy={row.get('accuracy', float('nan')):.4f}")
            if "max_abs_diff_vs_torch" in row else "",
            f"  ({row['error'].strip().splitlines()[-1][:200]})" if row.get("error") else "",
        )
        rows.append(row)
    bad = [r for r in rows if r["strict"] and r["status"] != "ok"]
    if bad:
        detail = "; ".join(f"{r['model']} {r['format']}: {r.get('error')}" for r in bad)
        raise ParityError(f"export parity check failed: {detail}")
    return rows
