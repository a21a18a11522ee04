"""The Android bundle: fixed-shape model files, ``metadata.json`` (the index), ``README.md``,
``required_operators.config`` and ``kotlin/*.kt``, all written from the files' real signatures.

Each ONNX file carries the bundle metadata in ``metadata_props`` (key ``pocketkd_metadata``, plus
flat keys); each ``.tflite`` carries standard TFLite metadata (``export.android_tflite``), with its
``metadata.json`` entry and label file zipped after the model as associated files. Gradle coordinates
are the versions of the runtimes that produced and checked the files (``toolchain``).
"""

from __future__ import annotations

import json
from importlib import metadata as dist
from pathlib import Path

import onnx

from export import android_kotlin as kt
from export.android_io import read_signature
from export.android_readme import readme
from export.android_tflite import embed_standard_metadata
from export.onnx_export import save_proto, set_metadata
from pipeline.data.preprocessing import kotlin_build_input
from pipeline.io import atomic_write_json, atomic_write_text, sha256_file

# Maven artifacts of the runtimes, by the PyPI distribution that runs the same version here
# (ONNX Runtime: https://onnxruntime.ai/docs/install/#install-on-android; LiteRT:
# https://ai.google.dev/edge/litert/next/android_kotlin, "com.google.ai.edge.litert:litert:<version>")
MAVEN = {"onnxruntime": "com.microsoft.onnxruntime:onnxruntime-android",
         "ai-edge-litert": "com.google.ai.edge.litert:litert"}
KOTLIN_DIR = "kotlin"
FILE_KEYS = ("file", "format", "runtime", "precision", "status", "size_bytes", "sha256", "io", "signature",
             "optimization_style", "execution_providers", "rmse", "accuracy", "max_abs_diff_vs_torch",
             "mobile_usability", "builtin_ops_only", "error")


def toolchain() -> dict[str, str]:
    """Versions of the runtimes that wrote and checked the bundle's files (PyPI distribution: version)."""
    out = {}
    for name in MAVEN:
        try:
            out[name] = dist.version(name)
        except dist.PackageNotFoundError:
            pass
    return out


def gradle_dependencies(versions: dict[str, str]) -> list[str]:
    lines = [f'implementation("{MAVEN[name]}:{v}")' for name, v in versions.items()]
    if "ai-edge-litert" in versions:
        lines.append(f'implementation("com.google.ai.edge.litert:litert-gpu:{versions["ai-edge-litert"]}")'
                     "  // only for Accelerator.GPU")
    return lines


def write_bundle(bundle_dir: Path, rows: list[dict], meta: dict) -> dict:
    """Embed metadata in the bundle's files, read every file's signature back, then write the Kotlin,
    metadata.json and README.md. Returns the metadata.json content. ``rows`` are the bundle's export
    rows (updated in place with the final sha256, size and signature: embedding metadata changes the
    bytes). ``meta`` is the export's metadata dict (``output_columns`` describes every output)."""
    meta = {**meta, "toolchain": toolchain()}
    ok = [r for r in rows if "file" in r]
    signatures = {r["file"]: read_signature(bundle_dir / r["file"]) for r in ok}
    kt.check_signatures(signatures, len(meta["output_columns"]))
    for r in ok:
        path = bundle_dir / r["file"]
        file_meta = {**meta, "file": r["file"], "format": r["format"], "signature": signatures[r["file"]],
                     **{k: r[k] for k in ("optimization_style", "execution_providers") if k in r}}
        if path.suffix == ".onnx":
            proto = onnx.load(str(path))
            set_metadata(proto, {"pocketkd_metadata": json.dumps(file_meta, sort_keys=True),
                                 **{k: str(v) for k, v in meta.items() if not isinstance(v, (dict, list))}})
            save_proto(proto, path)
        elif path.suffix == ".tflite":
            embed_standard_metadata(path, meta, signatures[r["file"]], file_meta)
        r["sha256"] = sha256_file(path)
        r["size_bytes"] = path.stat().st_size
        r["signature"] = signatures[r["file"]]
    kotlin = _write_kotlin(bundle_dir, meta, signatures, {r["format"]: r["file"] for r in ok})
    files = [{k: r[k] for k in FILE_KEYS if r.get(k) is not None} for r in rows]
    extra = [p.name for p in (bundle_dir / "required_operators.config",) if p.exists()] + kotlin
    metadata = {**meta, "files": files, "extra_files": {name: sha256_file(bundle_dir / name) for name in extra}}
    atomic_write_json(bundle_dir / "metadata.json", metadata)
    atomic_write_text(bundle_dir / "README.md", readme(ok, meta, gradle_dependencies(meta["toolchain"])))
    return metadata


def _write_kotlin(bundle_dir: Path, meta: dict, signatures: dict, by_format: dict) -> list[str]:
    ort_cpu = by_format.get("ort_fp32") or by_format.get("onnx_fp32") or next(
        (f for f in signatures if not f.endswith(".tflite")), None)
    ort_ep = by_format.get("ort_fp32_runtime_opt") or by_format.get("ort_int8_runtime_opt")
    tfl = by_format.get("tflite_fp32") or next((f for f in signatures if f.endswith(".tflite")), None)
    texts = {"StudentModel.kt": kt.student_model_kt(meta, signatures)}
    spec = meta.get("preprocessing") or {}
    if spec.get("input") == "table":  # your own table: build the input vector from a raw record
        texts["InputBuilder.kt"] = (f"package {kt.PACKAGE}\n\n"
                                    "// buildRaw(record) then StudentOrt/StudentLiteRt.predict (they normalise); "
                                    "buildInput(record) is the normalised input itself.\n"
                                    "object InputBuilder {\n"
                                    + _indent(kotlin_build_input(spec, normalise=False))
                                    + "\n" + _indent(kotlin_build_input(spec)) + "}\n")
    if ort_cpu:
        texts["StudentOrt.kt"] = kt.ort_kt(ort_cpu, ort_ep)
    if tfl:
        texts["StudentLiteRt.kt"] = kt.litert_kt(tfl)
        texts["StudentInterpreter.kt"] = kt.interpreter_kt(tfl)
    (bundle_dir / KOTLIN_DIR).mkdir(exist_ok=True)
    for name, text in texts.items():
        atomic_write_text(bundle_dir / KOTLIN_DIR / name, text)
    return [f"{KOTLIN_DIR}/{name}" for name in texts]


def _indent(text: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in text.splitlines(keepends=True))


def verify_bundle(bundle_dir: Path) -> list[str]:
    """Problems found when checking the bundle against its metadata.json (empty: all good)."""
    problems = []
    meta_path = bundle_dir / "metadata.json"
    if not meta_path.exists():
        return [f"{meta_path} is missing"]
    meta = json.loads(meta_path.read_text())
    for f in (f for f in meta["files"] if "file" in f):  # a format that failed to export has no file
        path = bundle_dir / f["file"]
        if not path.exists():
            problems.append(f"{f['file']}: missing")
        elif sha256_file(path) != f["sha256"]:
            problems.append(f"{f['file']}: sha256 does not match metadata.json (damaged or replaced)")
    for name, sha in meta.get("extra_files", {}).items():
        if not (bundle_dir / name).exists() or sha256_file(bundle_dir / name) != sha:
            problems.append(f"{name}: missing or sha256 mismatch")
    return problems
