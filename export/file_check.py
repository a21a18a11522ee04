"""Run one exported file in its runtime and judge it: outputs compared with PyTorch (strict fp32
files to ``export.parity_atol``, fp16 / int8 files' error against ``export.limits``), the I/O it
declares, the input grid of 8-bit-input files, and the format's own checks (ORT's mobile usability
checker for ONNX, builtin ops and XNNPACK delegation for TFLite). Used by ``export.formats``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from device_bench.runner import load_model, predict_all
from export import ort_tools
from export.int8_arith import exact_outputs, host_int8_profile
from export.job import ExportJob, Format
from export.onnx_export import graph_io
from export.tflite import non_builtin_ops, tflite_ops
from export.nnapi import nnapi_verdict
from export.xnnpack import xnnpack_delegation
from pipeline.metrics import max_abs_diff, parity_bound, task_metrics

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
        row["parity_bound"] = parity_bound(job.cfg.parity_atol, ref)
        if not row["max_abs_diff_vs_torch"] <= row["parity_bound"]:  # NaN fails
            problems.append(f"max |diff| vs PyTorch {row['max_abs_diff_vs_torch']:.3g} > {row['parity_bound']:.3g} "
                            f"(export.parity_atol={job.cfg.parity_atol:g} x max(1, largest |output|))")
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
    if path.suffix == ".ort":
        row["optimization_style"] = fmt.ort_style
        row["execution_providers"] = list(fmt.execution_providers)
        if job.cfg.check_mobile:  # the checker's verdicts on the graph this file holds
            row["mobile_usability"] = ort_tools.ort_file_usability(path, job.ort_source(fmt), fmt.ort_style)
    if path.suffix == ".tflite":
        ops = tflite_ops(path)
        row["tflite_ops"] = ops
        bad = non_builtin_ops(ops)
        row["builtin_ops_only"] = not bad
        try:  # LiteRT's default CPU delegate: which nodes it takes (the rest run on builtin kernels)
            row["xnnpack"] = xnnpack_delegation(path)
        except Exception as exc:  # private interpreter API: a runtime without it gets no column
            row["xnnpack"] = {"error": _one_line(exc)}
        try:  # TensorFlow Lite's NNAPI delegate, by its own rules at each Android API level (export/nnapi.py)
            row["nnapi_delegate"] = nnapi_verdict(path)
        except Exception as exc:  # an op or field the port does not read: no verdict rather than no file
            row["nnapi_delegate"] = {"error": _one_line(exc)}
        if bad:
            problems.append(f"uses non-builtin TFLite ops {bad}")
    row["status"] = "failed" if problems else "over_limit" if over else "ok"
    if problems or over:
        row["error"] = "; ".join(problems + over)
    return row


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _exact_source(job: ExportJob, fmt: Format, path: Path) -> Path:
    """The ONNX file whose exact arithmetic stands for ``path``: itself, or for an ``.ort`` file the
    ``.onnx`` it was converted from (ORT format holds the same graph with ORT's fusions applied)."""
    if path.suffix == ".ort":
        return job.ort_source(fmt)
    return path
