"""The export formats: one table, importable without torch, onnx, TensorFlow or a runtime.

Each row is one file the export stage can write. ``export.formats`` builds ``FORMATS`` (the rows
plus the function that makes each file) from this table; the config takes its format names and
defaults from here. Standard library only: the config and the CLI import it to check names.

Adding a format: one row here; if no existing ``made_by`` step makes it, one function in
``export.formats.MAKERS`` under that key; tests in ``tests/test_format_table.py`` check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FormatRow:
    name: str  # the config's name for it (export.formats, bench.formats, export.android.formats)
    file: str  # file name template; {stem} is "student" or "teacher"
    runtime: Literal["onnxruntime", "litert"]  # the runtime family that executes it
    precision: Literal["fp32", "fp16", "int8"]
    strict: bool  # must match PyTorch within export.parity_atol (else: error compared with export.limits)
    made_by: str  # the step that writes it: a key of export.formats.MAKERS
    android: bool  # in the Android bundle by default (export.android.formats)
    description: str
    variant: str = ""  # TFLite: which onnx2tf output
    server: bool = True  # in export.formats by default (dynamic batch, benchmarked); False: Android bundle only
    ort_style: str = ""  # .ort files: onnxruntime's optimization style, "Fixed" or "Runtime"
    execution_providers: tuple[str, ...] = ()  # .ort files: the ORT execution providers the file is made for


FORMAT_TABLE: tuple[FormatRow, ...] = (
    FormatRow("onnx_fp32", "{stem}.onnx", "onnxruntime", "fp32", True, "export_onnx", True,
              "ONNX (dynamo exporter, onnxsim)"),
    FormatRow("onnx_fp16", "{stem}.fp16.onnx", "onnxruntime", "fp16", False, "to_fp16", False,
              "ONNX fp16 weights and compute, float32 I/O"),
    FormatRow("onnx_int8", "{stem}.int8.onnx", "onnxruntime", "int8", False, "quantize_static", True,
              "ORT static int8: QDQ, per-channel weights, calibrated on training inputs"),
    FormatRow("onnx_int8_dynamic", "{stem}.int8_dynamic.onnx", "onnxruntime", "int8", False, "quantize_dynamic", False,
              "ORT dynamic int8: int8 weights, activations quantized at run time"),
    FormatRow("ort_fp32", "{stem}.ort", "onnxruntime", "fp32", True, "convert_to_ort", True,
              "ORT format for ONNX Runtime Mobile (ARM), Fixed optimization style (CPU EP), from onnx_fp32",
              ort_style="Fixed", execution_providers=("CPU",)),
    FormatRow("ort_int8", "{stem}.int8.ort", "onnxruntime", "int8", False, "convert_to_ort", True,
              "ORT format for ONNX Runtime Mobile (ARM), Fixed optimization style (CPU EP), from onnx_int8",
              ort_style="Fixed", execution_providers=("CPU",)),
    # onnxruntime's converter: "Runtime" style for compiling EPs (NNAPI, CoreML), "Fixed" otherwise; a Fixed int8
    # graph holds com.microsoft fused ops (QGemm, QLinearConv) that NNAPI cannot take
    FormatRow("ort_fp32_runtime_opt", "{stem}.with_runtime_opt.ort", "onnxruntime", "fp32", True, "convert_to_ort",
              True, "ORT format, Runtime optimization style (saved optimizations replayed on the nodes the EP leaves "
              "to the CPU), for the XNNPACK and NNAPI EPs, from onnx_fp32", server=False, ort_style="Runtime",
              execution_providers=("XNNPACK", "NNAPI")),
    FormatRow("ort_int8_runtime_opt", "{stem}.int8.with_runtime_opt.ort", "onnxruntime", "int8", False,
              "convert_to_ort", True, "ORT format, Runtime optimization style, for the XNNPACK and NNAPI EPs, from "
              "onnx_int8", server=False, ort_style="Runtime", execution_providers=("XNNPACK", "NNAPI")),
    FormatRow("tflite_fp32", "{stem}_fp32.tflite", "litert", "fp32", True, "onnx2tf", True,
              "TFLite via onnx2tf, float32", "fp32"),
    FormatRow("tflite_fp16", "{stem}_fp16.tflite", "litert", "fp16", False, "onnx2tf", True,
              "TFLite via onnx2tf, float16 weights", "fp16"),
    FormatRow("tflite_dynamic_range", "{stem}_dynamic_range.tflite", "litert", "int8", False, "onnx2tf", False,
              "TFLite dynamic-range: int8 weights, float activations", "dynamic_range"),
    FormatRow("tflite_int8", "{stem}_int8.tflite", "litert", "int8", False, "onnx2tf", True,
              "TFLite int8 (representative training inputs), float32 I/O; export.int8.float_ops and "
              "float_last_layer kept float", "int8"),
    FormatRow("tflite_int8_io", "{stem}_int8_io.tflite", "litert", "int8", False, "onnx2tf", True,
              "TFLite full-integer int8 with int8 input and output", "int8_io"),
)

ROWS: dict[str, FormatRow] = {row.name: row for row in FORMAT_TABLE}
FORMAT_NAMES: tuple[str, ...] = tuple(ROWS)  # table order
FormatName = Literal[FORMAT_NAMES]  # type: ignore[valid-type]  # pydantic checks values against it
ANDROID_DEFAULT: tuple[str, ...] = tuple(row.name for row in FORMAT_TABLE if row.android)
SERVER_DEFAULT: tuple[str, ...] = tuple(row.name for row in FORMAT_TABLE if row.server)
REFERENCE = "onnx_fp32"  # the fp32 file every target runs: the teacher is exported only in it
REFERENCE_INT8 = "onnx_int8"  # the int8 file the report's summary compares with REFERENCE

if len(ROWS) != len(FORMAT_TABLE):
    raise RuntimeError("export.format_table: two rows share a name")
