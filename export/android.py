"""The Android bundle: fixed-shape model files, ``metadata.json`` and a README with Kotlin code.

The same metadata (without the per-file hashes) is embedded in each ONNX file's
``metadata_props`` (key ``pocketkd_metadata``, plus flat keys) and, for TFLite, as a
``metadata.json`` zip member appended to the file (the interpreter ignores trailing bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from export.onnx_export import save_proto, set_metadata
from export.tflite import embed_metadata
from pipeline.io import atomic_write_json, atomic_write_text, sha256_file

BUNDLE_README = """# pocketkd Android bundle

Model files with a **fixed input shape** (batch {batch}), ready for ONNX Runtime Mobile (`.ort`,
`.onnx`) and LiteRT (`.tflite`). `metadata.json` describes every file: input/output names,
shapes, dtypes, layout, int8 scale/zero-point, sha256. Task: {task}.

| file | runtime | precision | input | layout | output | size | test metric |
|---|---|---|---|---|---|---|---|
{table}

**Normalise before feeding**: `x' = (x - mean) / std` per {per}, with
mean = `{mean}` and std = `{std}`. The output is {meaning} ({kept} head of the distilled student).
ONNX files take NCHW/NC input; TFLite files converted by onnx2tf take **NHWC** for images.

## ONNX Runtime (`com.microsoft.onnxruntime:onnxruntime-android`)

```kotlin
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.nio.FloatBuffer

val MEAN = floatArrayOf({mean_kt})
val STD = floatArrayOf({std_kt})
val SHAPE = longArrayOf({onnx_shape})          // {onnx_layout}

val env = OrtEnvironment.getEnvironment()
val options = OrtSession.SessionOptions().apply {{
    setIntraOpNumThreads(1)
    addNnapi()                                   // optional: NNAPI EP, falls back to CPU for the rest
}}
val session = env.createSession(context.assets.open("{ort_file}").readBytes(), options)

/** raw: one sample in {onnx_layout} order, before normalisation. */
fun predict(raw: FloatArray): Float {{
    val perChannel = raw.size / MEAN.size
    val x = FloatArray(raw.size) {{ i -> (raw[i] - MEAN[i / perChannel]) / STD[i / perChannel] }}
    OnnxTensor.createTensor(env, FloatBuffer.wrap(x), SHAPE).use {{ input ->
        session.run(mapOf("{input_name}" to input)).use {{ result ->
            @Suppress("UNCHECKED_CAST")
            return (result[0].value as Array<FloatArray>)[0][0]
        }}
    }}
}}
```

## LiteRT (`com.google.ai.edge.litert:litert`, `org.tensorflow.lite.Interpreter`)

```kotlin
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

val MEAN = floatArrayOf({mean_kt})
val STD = floatArrayOf({std_kt})

fun loadModel(name: String): ByteBuffer = context.assets.openFd(name).use {{ fd ->
    java.io.FileInputStream(fd.fileDescriptor).channel
        .map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
}}

val interpreter = Interpreter(loadModel("{tfl_file}"), Interpreter.Options().setNumThreads(1))

/** raw: one sample in {tfl_layout} order ({tfl_shape}), before normalisation. */
fun predict(raw: FloatArray): Float {{
    val channels = MEAN.size
    val input = ByteBuffer.allocateDirect(4 * raw.size).order(ByteOrder.nativeOrder())
    for (i in raw.indices) {{
        val c = {channel_index}
        input.putFloat((raw[i] - MEAN[c]) / STD[c])
    }}
    input.rewind()
    val output = Array(1) {{ FloatArray(1) }}
    interpreter.run(input, output)
    return output[0][0]
}}
```

For the int8-I/O file (`{int8_file}`) quantise the normalised input and dequantise the output
with the scale and zero point in `metadata.json`:
`q = clamp(round(x' / {in_scale} + {in_zp}), -128, 127)` (one `Byte` each) and
`y = ({out_scale}) * (q_out - ({out_zp}))`.
"""


def _per_channel_index(layout: str) -> str:
    return "i % channels" if layout == "NHWC" else "i / (raw.size / channels)"


def write_bundle(bundle_dir: Path, rows: list[dict], meta: dict) -> dict:
    """Embed metadata in the bundle's files, then write metadata.json and README.md.
    Returns the metadata.json content. ``rows`` are the bundle's export rows (updated in place
    with the final sha256 and size, since embedding metadata changes the bytes)."""
    for r in rows:
        if "file" not in r:
            continue
        path = bundle_dir / r["file"]
        file_meta = {**meta, "file": r["file"], "format": r["format"], "io": r.get("io", {})}
        if path.suffix == ".onnx":
            proto = onnx.load(str(path))
            set_metadata(proto, {"pocketkd_metadata": json.dumps(file_meta, sort_keys=True),
                                 **{k: str(v) for k, v in meta.items() if not isinstance(v, (dict, list))}})
            save_proto(proto, path)
        elif path.suffix == ".tflite":
            embed_metadata(path, file_meta)
        r["sha256"] = sha256_file(path)
        r["size_bytes"] = path.stat().st_size
    files = []
    for r in rows:
        entry = {k: r.get(k) for k in ("file", "format", "runtime", "precision", "status", "size_bytes", "sha256",
                                       "io", "rmse", "accuracy", "max_abs_diff_vs_torch", "mobile_usability",
                                       "builtin_ops_only", "error")}
        files.append({k: v for k, v in entry.items() if v is not None})
    extra = [p.name for p in (bundle_dir / "required_operators.config",) if p.exists()]
    metadata = {**meta, "files": files,
                "extra_files": {name: sha256_file(bundle_dir / name) for name in extra}}
    atomic_write_json(bundle_dir / "metadata.json", metadata)
    atomic_write_text(bundle_dir / "README.md", _readme(rows, meta))
    return metadata


def _metric(row: dict) -> str:
    if "accuracy" in row:
        return f"accuracy {row['accuracy']:.4f}"
    return f"RMSE {row['rmse']:.4g}" if "rmse" in row else "–"


def _readme(rows: list[dict], meta: dict) -> str:
    ok = [r for r in rows if "io" in r]
    by = {r["format"]: r for r in ok}
    table = "\n".join(
        f"| `{r['file']}` | {r['runtime']} | {r['precision']} | {r['io']['input']['dtype']} "
        f"{r['io']['input']['shape']} | {r['io']['input'].get('layout', '')} | {r['io']['output']['dtype']} "
        f"{r['io']['output']['shape']} | {r['size_bytes']:,} B | {_metric(r)} ({r['status']}) |"
        for r in ok
    )
    onnx_row = by.get("ort_fp32") or by.get("onnx_fp32") or next(iter(ok), None)
    tfl_row = by.get("tflite_fp32") or next((r for r in ok if r["file"].endswith(".tflite")), None)
    int8_row = by.get("tflite_int8_io")
    fmt = lambda v: ", ".join(f"{x:.6g}f" for x in v)  # noqa: E731
    q_in = (int8_row or {}).get("io", {}).get("input", {}).get("quantization", {})
    q_out = (int8_row or {}).get("io", {}).get("output", {}).get("quantization", {})
    tfl_layout = tfl_row["io"]["input"].get("layout", "NC") if tfl_row else "NC"
    return BUNDLE_README.format(
        batch=meta["batch"], task=meta["task"], table=table,
        per="channel" if meta["input_layout"] == "NCHW" else "feature",
        mean=meta["input_normalization"]["mean"], std=meta["input_normalization"]["std"],
        mean_kt=fmt(meta["input_normalization"]["mean"]), std_kt=fmt(meta["input_normalization"]["std"]),
        meaning=meta["output_meaning"], kept=meta["kept_head"],
        onnx_shape=", ".join(f"{d}L" for d in (onnx_row["io"]["input"]["shape"] if onnx_row else [1])),
        onnx_layout=onnx_row["io"]["input"].get("layout", "NC") if onnx_row else "NC",
        ort_file=onnx_row["file"] if onnx_row else "student.ort",
        input_name=onnx_row["io"]["input"]["name"] if onnx_row else "input",
        tfl_file=tfl_row["file"] if tfl_row else "student_fp32.tflite",
        tfl_layout=tfl_layout, tfl_shape=tfl_row["io"]["input"]["shape"] if tfl_row else "",
        channel_index=_per_channel_index(tfl_layout),
        int8_file=int8_row["file"] if int8_row else "student_int8_io.tflite",
        in_scale=q_in.get("scale", "scale"), in_zp=q_in.get("zero_point", "zero_point"),
        out_scale=q_out.get("scale", "scale"), out_zp=q_out.get("zero_point", "zero_point"),
    )


def verify_bundle(bundle_dir: Path) -> list[str]:
    """Problems found when checking the bundle against its metadata.json (empty: all good)."""
    problems = []
    meta_path = bundle_dir / "metadata.json"
    if not meta_path.exists():
        return [f"{meta_path} is missing"]
    meta = json.loads(meta_path.read_text())
    for f in meta["files"]:
        path = bundle_dir / f["file"]
        if not path.exists():
            problems.append(f"{f['file']}: missing")
        elif sha256_file(path) != f["sha256"]:
            problems.append(f"{f['file']}: sha256 does not match metadata.json (damaged or replaced)")
    for name, sha in meta.get("extra_files", {}).items():
        if not (bundle_dir / name).exists() or sha256_file(bundle_dir / name) != sha:
            problems.append(f"{name}: missing or sha256 mismatch")
    return problems
