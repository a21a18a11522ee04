"""The bundle's README.md: which file for which runtime and execution provider, the Gradle lines,
the input and every output, and how to use the generated Kotlin. Written from the rows (with the
signatures read from the files) and the bundle metadata."""

from __future__ import annotations

from export.android_kotlin import PACKAGE
from export.nnapi import API_LEVELS

NNAPI_NOTE = (
    "NNAPI is deprecated from Android 15 (https://developer.android.com/ndk/guides/neuralnetworks/migration-guide). "
    "On Android 15 and later use the XNNPACK EP (same Runtime-style file) or the CPU EP with ONNX Runtime, or LiteRT "
    "(`StudentLiteRt`) with `Accelerator.GPU` (needs `litert-gpu`) or `Accelerator.NPU` for hardware acceleration.")


def _tensor(t: dict) -> str:
    q = t.get("quantization")
    return (f"`{t['name']}` {t['dtype']} {t['shape']}" + (f" {t['layout']}" if t.get("layout") else "")
            + (f" (scale {q['scale']:.6g}, zero point {q['zero_point']})" if q else ""))


def _metric(row: dict) -> str:
    if "accuracy" in row:
        return f"accuracy {row['accuracy']:.4f}"
    return f"RMSE {row['rmse']:.4g}" if "rmse" in row else "–"


def _for(row: dict) -> str:
    if row["file"].endswith(".tflite"):
        return "LiteRT CompiledModel / Interpreter"
    if "optimization_style" in row:
        return f"ORT {', '.join(row['execution_providers'])} EP ({row['optimization_style']} style)"
    return "ONNX Runtime (any EP; .onnx)"


def _nnapi_cell(d: dict) -> str:
    """'138/224 (3 parts)': nodes the NNAPI delegate takes at one API level, and its partitions."""
    return f"{d['delegated']}/{d['nodes']}" + ("" if d["partitions"] <= 1 else f" ({d['partitions']} parts)")


def _raw_record(meta: dict) -> str:
    """Your own table: how to build the input from a raw record (kotlin/InputBuilder.kt)."""
    spec = meta.get("preprocessing") or {}
    if spec.get("input") != "table":
        return ""
    cols = ", ".join(f"`{f['column']}` ({f['type']}"
                     + (f": {', '.join(map(str, f['categories']))}" if f["type"] == "categorical" else "") + ")"
                     for f in spec["features"])
    return (f"From a raw record (a map of column name to value; columns {cols}): "
            "`StudentOrt(context).use { it.predict(InputBuilder.buildRaw(record)) }`. `buildRaw` puts each "
            "numeric value as it is and each categorical column as a one-hot block in the training categories' "
            "order (a category never seen in training: all zeros); `predict` then standardises. "
            "`InputBuilder.buildInput` is the standardised input itself (what `python -m pipeline predict` "
            "computes).\n\n")


def readme(rows: list[dict], meta: dict, gradle: list[str]) -> str:
    sig = lambda r: r["signature"]  # noqa: E731
    table = "\n".join(
        f"| `{r['file']}` | {r['precision']} | {_for(r)} | {_tensor(sig(r)['inputs'][0])} | "
        f"{_tensor(sig(r)['outputs'][0])} | {r['size_bytes']:,} B | {_metric(r)} ({r['status']}) |" for r in rows)
    cols = meta["output_columns"]
    outputs = "\n".join(f"| {k} | `{c['name']}` | {c['unit']} | {c['meaning']} |" for k, c in enumerate(cols))
    norm = meta["input_normalization"]
    shape = meta["input_shape"]
    image = len(shape) == 4
    layout = (f"ONNX / ORT files take NCHW `{shape}`; TFLite files (converted by onnx2tf) take NHWC "
              f"`{[shape[0], *shape[2:], shape[1]]}`: `StudentModel.toNhwc` converts one sample."
              if image else f"Every file takes `{shape}` (batch, features).")
    ort_rows = [r for r in rows if "optimization_style" in r]
    nnapi = "\n".join(f"| `{r['file']}` | {r['optimization_style']} | {', '.join(r['execution_providers'])} | "
                      f"{(r.get('mobile_usability') or {}).get('nnapi', 'not checked')} |" for r in ort_rows)
    tfl = [r for r in rows if r["file"].endswith(".tflite") and "levels" in (r.get("nnapi_delegate") or {})]
    nnapi_tflite = "\n".join(
        f"| `{r['file']}` | " + " | ".join(_nnapi_cell(d) for d in r["nnapi_delegate"]["levels"].values()) + " | "
        + ("; ".join(f"{k} x{v}" for k, v in list(r["nnapi_delegate"]["levels"].values())[-1]["refused"].items())
           or "none") + " |" for r in tfl)
    classes = ""
    if meta.get("classes") is not None:
        classes = (f"\nClassification: outputs 0..{len(meta['classes']) - 1} are the logits of the labels "
                   f"{', '.join(map(str, meta['classes']))} (`labels.txt` in each .tflite); "
                   + ("the last output is the gambler's **abstain** logit: take the argmax of the class logits, and "
                      "abstain when softmax over all outputs gives `abstain` a high probability "
                      "(`StudentModel.classify`).\n" if meta.get("abstain_output") else "softmax gives probabilities "
                      "(`StudentModel.classify`).\n"))
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("toolchain", {}).items())
    return f"""# pocketkd Android bundle

Task: {meta['task']}. Model files with a **fixed input shape** (batch {meta['batch']}). `metadata.json` is
the index: every file's signature as read from the file (input/output names, shapes, dtypes, int8
scale/zero point), its optimization style and execution providers, sha256 and test metric. The Kotlin
in `kotlin/` is generated from the same signatures.

| file | precision | for | input | output | size | test metric |
|---|---|---|---|---|---|---|
{table}

## Gradle

The versions that wrote and checked these files ({versions}):

```kotlin
dependencies {{
{chr(10).join("    " + line for line in gradle)}
}}
```

## Input

Normalise first: `x' = (x - mean) / std` per {'channel' if image else 'feature'}, mean = `{norm['mean']}`,
std = `{norm['std']}` (`StudentModel.normalize`). {layout} An int8-input file takes
`q = clamp(round(x' / scale) + zero_point, -128, 127)` with its input's scale and zero point above, and
its output is `y = scale * (q - zero_point)` (`StudentModel.quantize` / `dequantize`).

## Outputs

| index | name | unit | meaning |
|---|---|---|---|
{outputs}
{classes}
## Which .ort file for which execution provider

onnxruntime's converter makes the **Fixed** style (every optimization applied at conversion, including
the `com.microsoft` fused operators such as `QGemm`, `FusedGemm`) for the CPU EP, and the **Runtime**
style (basic optimizations applied, the others saved and replayed at load on what the EP leaves to the CPU:
set `session.enable_saved_runtime_optimizations` to `1`, as `StudentOrt` does) for the XNNPACK and NNAPI
EPs. ORT's own mobile usability checker, run on the graph each file holds:

| file | style | execution providers | NNAPI as is |
|---|---|---|---|
{nnapi}

LiteRT's NNAPI delegate (the Interpreter API's `NnApiDelegate`, Android 8.1 to 14) takes each node its rules
allow at the phone's API level and runs the 3 largest groups of such nodes on NNAPI, the rest on the CPU.
pocketkd applies the delegate's rules (ported from TensorFlow Lite's source, `export/nnapi.py`) to each
`.tflite` here: nodes delegated / nodes, and the partitions when more than one. Static: the phone's NNAPI
driver can still refuse an operation, and from API 29 the delegate only acts when the phone has an NNAPI
accelerator besides the CPU reference.

| file | {" | ".join(f"API {k} ({v})" for k, v in API_LEVELS.items())} | refused at API {max(API_LEVELS)} |
|---|{"---|" * len(API_LEVELS)}---|
{nnapi_tflite}

{NNAPI_NOTE}

`required_operators.config` lists the operators of every `.ort` file here, for a reduced-size ONNX Runtime
build: `./build.sh --android ... --minimal_build extended --include_ops_by_config required_operators.config`
(`extended`: the minimal build that runs compiling EPs such as NNAPI and replays saved runtime
optimizations; https://onnxruntime.ai/docs/build/custom.html).

## Kotlin

Copy `kotlin/*.kt` into your app (package `{PACKAGE}`) and the model files into `src/main/assets/`:

```kotlin
val raw = FloatArray(StudentModel.CHANNELS * StudentModel.VALUES_PER_CHANNEL)  // one sample, before normalisation
StudentOrt(context).use {{ println(it.predict(raw).joinToString()) }}                   // CPU EP, Fixed-style .ort
StudentLiteRt(context).use {{ println(it.predict(raw).joinToString()) }}                // LiteRT CompiledModel
```

{_raw_record(meta)}
`StudentOrt(context, "<...>.with_runtime_opt.ort", ep = "XNNPACK")` selects an EP; `StudentLiteRt(context,
"<file>.tflite", Accelerator.GPU)` an accelerator; `StudentInterpreter` is the older LiteRT Interpreter API.
Every class takes any file of its runtime from this bundle (`BundleFiles` holds each file's tensors).

## Standard TFLite metadata

Each `.tflite` carries standard TFLite metadata (schema `metadata_schema.fbs`, read by LiteRT's metadata
tools, the Android metadata extractor and Android Studio's model binding): the input's normalisation
(`NormalizationOptions`), tensor names and descriptions with every output's unit, and, zipped after the
model, `labels.txt` (classification) or `output_names.txt` plus this file's `metadata.json` entry.
"""
