"""The export format names live in one table (export/format_table.py), importable without heavy imports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from export.format_table import (
    ANDROID_DEFAULT,
    FORMAT_NAMES,
    FORMAT_TABLE,
    REFERENCE,
    REFERENCE_INT8,
    ROWS,
    SERVER_DEFAULT,
    FormatName,
    FormatRow,
)
from tests.conftest import ROOT

HEAVY = ("torch", "onnx", "onnxruntime", "tensorflow", "numpy", "onnx2tf", "ai_edge_litert", "pydantic")


def test_formats_is_built_from_the_table_and_nothing_else():
    from export.formats import FORMATS, MAKERS

    assert tuple(FORMATS) == FORMAT_NAMES == tuple(r.name for r in FORMAT_TABLE)
    for row in FORMAT_TABLE:
        fmt = FORMATS[row.name]
        assert fmt.make is MAKERS[row.made_by]
        for f in dataclasses.fields(FormatRow):
            if f.name != "made_by":
                assert getattr(fmt, f.name) == getattr(row, f.name), (row.name, f.name)
    assert {r.made_by for r in FORMAT_TABLE} == set(MAKERS)  # no maker without a row, no row without a maker


def test_the_table_is_consistent():
    assert len(ROWS) == len(FORMAT_TABLE) and REFERENCE in ROWS and REFERENCE_INT8 in ROWS
    assert ROWS[REFERENCE].precision == "fp32" and ROWS[REFERENCE_INT8].precision == "int8"
    assert FormatName.__args__ == FORMAT_NAMES
    files = [r.file for r in FORMAT_TABLE]
    assert len(set(files)) == len(files) and all("{stem}" in f for f in files)
    for r in FORMAT_TABLE:
        assert r.runtime == ("litert" if r.file.endswith(".tflite") else "onnxruntime")
        assert r.strict == (r.precision == "fp32")  # fp32 files must match PyTorch; the rest have limits
        assert bool(r.variant) == (r.made_by == "onnx2tf") and r.description
        assert bool(r.ort_style) == r.file.endswith(".ort") == bool(r.execution_providers)
        assert r.server or r.android  # every format is written by default somewhere
    assert ANDROID_DEFAULT == tuple(r.name for r in FORMAT_TABLE if r.android)


def test_config_defaults_agree_with_the_table():
    from pipeline.config import Config

    cfg = Config()
    assert tuple(cfg.export.formats) == SERVER_DEFAULT == tuple(r.name for r in FORMAT_TABLE if r.server)
    assert cfg.export.android.formats is None and tuple(cfg.export.bundle_formats()) == ANDROID_DEFAULT


def test_the_bundle_follows_export_formats_unless_set():
    from pipeline.config import Config

    def bundle(**export):
        return Config.model_validate({"export": export}).export.bundle_formats()

    assert bundle(formats=["onnx_fp32", "tflite_fp32", "onnx_fp16"]) == ["onnx_fp32", "tflite_fp32"]  # fp16 ONNX: server
    assert bundle(formats=["onnx_int8", "ort_int8"]) == ["onnx_int8", "ort_int8", "ort_int8_runtime_opt"]
    assert bundle(formats=["onnx_fp32"], android={"formats": ["tflite_int8"]}) == ["tflite_int8"]


def test_importing_the_table_loads_no_heavy_module():
    code = ("import json, sys; import export.format_table; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('export', 'pipeline', 'device_bench')) "
            f"or m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert json.loads(out.stdout) == ["export", "export.format_table"]
