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
``export_rows`` is the same without the raise (``raise_on_strict`` does it), for a caller that
makes a job's rows in more than one call. A file the chosen TFLite converter cannot make (litert_torch
and a dynamic batch axis) is a ``not_supported`` row with the reason, which no strict check counts
as a failure. ``prefetch_tflite`` starts a job's TFLite conversion on
the converter child (``export.converter``) so the other rows are made and checked meanwhile.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from export import converter, int8_arith, litert, onnx_export, ort_tools, quantize
from export.file_check import check_file
from export.format_table import FORMAT_TABLE
from export.job import ExportJob, Format
from export.onnx_export import INPUT_NAME, export_cached, export_onnx, to_fp16
from export.onnx_steps import array_hash, cached_step
from export.quantize import quantize_int8_dynamic, quantize_int8_static
from export.tflite import onnx_to_tflite
from pipeline.errors import ParityError
from pipeline.io import sha256_file

log = logging.getLogger(__name__)


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
    return cached_step("to_fp16", _base_onnx(job), job.file(fmt), to_fp16, inputs={}, options={}, code=(onnx_export,))


def _make_onnx_int8(job: ExportJob, fmt: Format) -> Path:
    q = job.cfg.int8
    options = {"method": q.calibrate_method, "per_channel": q.per_channel, "batch": job.batch or 32,
               "float_first_layer": q.float_first_layer, "float_last_layer": q.float_last_layer, "prepare": q.prepare}
    return cached_step("quantize_static", _base_onnx(job), job.file(fmt),
                       lambda src, dst: quantize_int8_static(src, dst, job.calib, INPUT_NAME, q.calibrate_method,
                                                             q.per_channel, batch=job.batch or 32,
                                                             float_first_layer=q.float_first_layer, prepare=q.prepare,
                                                             float_last_layer=q.float_last_layer),
                       inputs={"calibration": array_hash(job.calib)}, options=options, code=(quantize, int8_arith))


def _make_onnx_int8_dynamic(job: ExportJob, fmt: Format) -> Path:
    q = job.cfg.int8
    calib = job.calib if q.prepare else None  # weight preparation only
    return cached_step("quantize_dynamic", _base_onnx(job), job.file(fmt),
                       lambda src, dst: quantize_int8_dynamic(src, dst, q.per_channel, calib_x=calib,
                                                              float_first_layer=q.float_first_layer,
                                                              float_last_layer=q.float_last_layer),
                       inputs={"calibration": array_hash(calib)} if calib is not None else {},
                       options={"per_channel": q.per_channel, "float_first_layer": q.float_first_layer,
                                "float_last_layer": q.float_last_layer},
                       code=(quantize,))


def _make_ort(job: ExportJob, fmt: Format) -> Path:
    """The fp32 and int8 .ort files of one optimization style come from one conversion;
    required_operators.config is rewritten to cover every style converted so far."""
    style = fmt.ort_style
    if style not in job._ort:
        sources = [_base_onnx(job)]
        int8 = job.file(FORMATS["onnx_int8"])
        if not int8.exists():
            _make_onnx_int8(job, FORMATS["onnx_int8"])
        sources.append(int8)
        job._ort[style], job._ort_ops[style] = ort_tools.convert_to_ort(sources, job.out_dir, style=style)
        ort_tools.write_operator_config(job.out_dir, list(job._ort_ops.values()))
    return job._ort[style][job.ort_source(fmt).name]


def _convert_tflite(job: ExportJob) -> dict[str, Path]:
    calib = job.calib
    if calib.ndim == 4:  # TFLite is NHWC: representative data in that layout
        calib = calib.transpose(0, 2, 3, 1)
    if job.cfg.tflite.converter == litert.NAME:  # from the PyTorch model (export.litert)
        return litert.torch_to_tflite(job.model, job.input_shape, job.batch, job.out_dir, job.stem,
                                      job.tflite_variants, calib)
    q = job.cfg.int8
    return onnx_to_tflite(_base_onnx(job), job.out_dir, job.stem, job.tflite_variants, calib, prepare=q.prepare,
                          float_ops=tuple(q.float_ops), float_last=q.float_last_layer, output_grid=q.output_grid)


def prefetch_tflite(job: ExportJob, names: list[str]) -> None:
    """Start the job's TFLite conversion on the current converter's background thread, so the ONNX
    and ORT rows are made and checked while the converter child works. A student the conversion
    cache has not seen starts the child first: TensorFlow imports while PyTorch exports."""
    variants = tuple(FORMATS[n].variant for n in names if FORMATS[n].variant)
    conv = converter.current()
    if not variants or conv is None or job._tflite is not None:  # nothing to do, or under way already
        return
    job.tflite_variants = variants
    if job.cfg.tflite.converter == litert.NAME:  # converts from PyTorch: no ONNX file to wait for
        if job.batch is not None and not litert.missing():
            conv.start()
        job._tflite = conv.submit(_convert_tflite, job)
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
                   android=r.android, server=r.server, ort_style=r.ort_style, execution_providers=r.execution_providers)
    for r in FORMAT_TABLE
}


def export_all(job: ExportJob, names: list[str]) -> list[dict]:
    rows = export_rows(job, names)
    raise_on_strict(rows)
    return rows


def export_rows(job: ExportJob, names: list[str]) -> list[dict]:
    """The rows of ``names`` (made, run, checked); a strict row that failed is a row here too."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    with converter.session():  # the caller's converter child, or one for this job
        prefetch_tflite(job, names)
        return _export_rows(job, names)


def raise_on_strict(rows: list[dict]) -> None:
    bad = [r for r in rows if r["strict"] and r["status"] not in ("ok", "not_supported")]
    if bad:
        detail = "; ".join(f"{r['model']} {r['format']}: {r.get('error')}" for r in bad)
        raise ParityError(f"export parity check failed: {detail}")


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
        except litert.NotSupported as exc:  # a file the chosen converter cannot make: said, not dropped
            row.update(status="not_supported", error=str(exc))
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
    return rows
