"""Everything the run wrote, gathered into one dict: ``report.json``."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
from pathlib import Path

from export.format_table import REFERENCE, REFERENCE_INT8
from pipeline.config import Config
from pipeline.methods import METHODS
from pipeline.metrics import minus_floor
from pipeline.report.verdicts import file_verdicts
from pipeline.toolchain import constraints_info
from pipeline.version import __version__

PACKAGES = ["numpy", "torch", "onnx", "onnxruntime", "onnxsim", "onnx2tf", "tensorflow-cpu", "ai-edge-litert"]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "pocketkd": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def read_json(run_dir: Path, name: str) -> dict:
    p = run_dir / name
    return json.loads(p.read_text()) if p.exists() else {}


def collect(run_dir: Path, cfg: Config) -> dict:
    data = read_json(run_dir, "data.json")
    teacher = read_json(run_dir, "teacher.json")
    distill = read_json(run_dir, "distill.json")
    student = read_json(run_dir, "student.json")
    export = read_json(run_dir, "export.json")
    bench = {}
    for p in sorted((run_dir / "bench").glob("*.json")):
        b = json.loads(p.read_text())
        for r in b["results"]:
            r.pop("latencies_ms", None)
        if any("p50_minus_floor_ms" not in r for r in b["results"] if r["model"] != "floor"):
            minus_floor(b["results"])  # a bench stage cached from before the column existed
        bench[b["target"]] = b
    summary = {}
    for target, b in bench.items():
        by = {(r["model"], r["format"]): r for r in b["results"]}
        t = by.get(("teacher", REFERENCE))  # the teacher is exported in the reference format only
        s = by.get(("student", REFERENCE))
        q = by.get(("student", REFERENCE_INT8))
        if t and s:
            summary[target] = {"student_over_teacher_p50": s["latency_ms"]["p50"] / t["latency_ms"]["p50"]}
            if "rmse" in s:
                summary[target]["int8_rmse_over_fp32_rmse"] = (q["rmse"] / s["rmse"]) if q and "rmse" in q else None
            elif "accuracy" in s:
                summary[target]["int8_accuracy_minus_fp32"] = (q["accuracy"] - s["accuracy"]) if q else None
    return {
        "pocketkd_version": __version__,
        "versions": versions(),
        "constraints": constraints_info(),
        "host_int8": export.get("host_int8"),
        "calibration": export.get("calibration"),
        "verdicts": file_verdicts(export, bench, student.get("test") or {}),
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "data": data,
        "teacher": {k: teacher.get(k) for k in ("params", "hidden", "loss", "test", "origin", "srl")}
        | {"best_epoch": (teacher.get("history") or {}).get("best_epoch")},
        "students": {
            name: {k: v for k, v in m.items() if k != "history"} | {"best_epoch": m["history"]["best_epoch"]}
            | ({} if m.get("trains_teacher_head", name not in METHODS or METHODS[name].trains_teacher_head)
               else {"test_teacher_head": None})  # an untrained head's metric says nothing
            for name, m in distill.get("methods", {}).items()
        },
        "sizes": {k: distill.get(k) for k in ("teacher_params", "student_params", "deployed_params")},
        "deployed": student,
        "export": export,
        "bench": bench,
        "summary": summary,
    }
