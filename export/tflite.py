"""ONNX -> TFLite with onnx2tf: fp32, fp16, dynamic-range and full-integer int8 (float I/O and
int8 I/O), plus the builtin-ops check and TensorFlow's own load check.

Conversions run in the converter child (``export.converter``: TensorFlow imported once per export)
and go through the conversion cache (``export.conversion_cache``): the key is the ONNX graph
without its ``metadata_props`` (onnx2tf does not carry them into the .tflite; the pocketkd
metadata holds the config hash, which changes with ``export.limits``), the variants, the
calibration array's bytes and the tool versions.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

from export import conversion_cache as cc
from export import converter, quantize, tflite_convert, tflite_output_grid
from pipeline.io import atomic_copy, sha256_file
from pipeline.procs import temp_dir

log = logging.getLogger(__name__)

VARIANTS = tflite_convert.SUFFIX  # our precision name -> onnx2tf's file suffix
QUANTIZED = {"dynamic_range", "int8", "int8_io"}
TOOLS = ("onnx2tf", "tensorflow|tensorflow-cpu", "tf_keras", "onnx", "onnx_graphsurgeon", "onnxsim", "onnxruntime",
         "numpy")


def onnx_to_tflite(
    src: Path,
    out_dir: Path,
    stem: str = "student",
    variants: tuple[str, ...] = ("fp32", "fp16"),
    calib_nhwc: np.ndarray | None = None,
    timeout: float = 900,
    prepare: bool = True,
    float_ops: tuple[str, ...] = (),
    float_last: bool = False,
    output_grid: str = "minmax",
) -> dict[str, Path]:
    """Convert ``src``; returns {variant: path} for the files written into ``out_dir`` as
    ``{stem}_{variant}.tflite``. Full-integer variants need ``calib_nhwc``: representative
    model-ready inputs in TFLite's layout (NHWC for images). ``prepare``: the quantized variants of
    an MLP (Gemm/Relu chain) are converted from a copy prepared by ``export.quantize.prepare_for_int8``
    with ``calib_nhwc`` (the fp32 and fp16 files always come from ``src`` itself). ``float_ops`` /
    ``float_last``: what the float-I/O int8 file keeps in float (``export.tflite_convert``);
    ``output_grid``: "mse" chooses the full-integer files' output grid by error (``export.tflite_output_grid``).

    Uses the current converter child (``export.converter.session``) or starts one for this call;
    a conversion already in the cache starts none."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown TFLite variants {sorted(unknown)}; allowed: {', '.join(VARIANTS)}")
    if {"int8", "int8_io"} & set(variants) and calib_nhwc is None:
        raise ValueError("int8 TFLite variants need representative data (calib_nhwc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = {v: out_dir / f"{stem}_{v}.tflite" for v in variants}
    t0 = time.perf_counter()
    with temp_dir("pocketkd-onnx2tf") as tmp:  # removed on every exit; a SIGKILLed run's by the next run
        tmp = Path(tmp)
        bare = _without_metadata(src, tmp / "src" / src.name)
        calib = None if calib_nhwc is None else np.ascontiguousarray(calib_nhwc, dtype=np.float32)
        quant = [v for v in variants if v in QUANTIZED]
        inputs = {"onnx": sha256_file(bare)}
        if calib is not None and (quant and prepare or {"int8", "int8_io"} & set(variants)):
            inputs["calibration"] = cc.sha256_bytes(calib.tobytes() + repr(calib.shape).encode())
        options = {"variants": sorted(variants), "prepare": bool(prepare and quant)}
        if "int8" in variants and (float_ops or float_last):  # (absent otherwise: earlier keys stay valid)
            options.update(float_ops=sorted(float_ops), float_last=bool(float_last))
        if {"int8", "int8_io"} & set(variants) and output_grid != "minmax":
            options["output_grid"] = output_grid
        key, parts = cc.make_key("onnx2tf", inputs, options,
                                 cc.versions(*TOOLS), cc.source_hash(tflite_convert, tflite_output_grid, quantize,
                                                                        __file__))
        cache = cc.ConversionCache()
        if cache.fetch(key, {f"{v}.tflite": p for v, p in dest.items()}) is not None:
            log.debug("tflite %s %s: from the conversion cache", stem, ",".join(variants))
            return dest
        with converter.session(timeout) as conv:
            made = _convert(conv, bare, tmp, variants, calib, prepare, tuple(float_ops), bool(float_last),
                            output_grid)
        for v in variants:
            atomic_copy(made[v], dest[v])
        cache.store(key, parts, {f"{v}.tflite": made[v] for v in variants})
    log.info("tflite   %-8s %s converted in %.1f s", stem, ",".join(variants), time.perf_counter() - t0)
    return dest


def _without_metadata(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    del model.metadata_props[:]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(model.SerializeToString())
    return dst


def _convert(conv: converter.Converter, src: Path, tmp: Path, variants: tuple[str, ...], calib: np.ndarray | None,
             prepare: bool, float_ops: tuple[str, ...] = (), float_last: bool = False,
             output_grid: str = "minmax") -> dict[str, Path]:
    """One child request per distinct source: ``src`` and, for the quantized variants of a graph
    that ``prepare_for_int8`` handles, its prepared copy."""
    sources = {v: src for v in variants}
    quant = [v for v in variants if v in QUANTIZED]
    if prepare and quant and calib is not None:
        prepared = tmp / "prepared" / src.name
        prepared.parent.mkdir()
        if quantize.prepare_for_int8(src, prepared, calib)["applied"]:
            sources.update({v: prepared for v in quant})
    calib_path = None
    if calib is not None:
        calib_path = tmp / "calib.npy"
        np.save(calib_path, calib)
    made = {}
    for i, source in enumerate(dict.fromkeys(sources.values())):
        group = [v for v in variants if sources[v] == source]
        run_dir = tmp / f"run{i}"
        run_dir.mkdir()
        integer = bool({"int8", "int8_io"} & set(group))
        try:
            files = conv.request("onnx2tf", src=str(source), out_dir=str(run_dir), variants=group,
                                 calib_path=str(calib_path) if integer else None, float_ops=list(float_ops),
                                 float_last=float_last, output_grid=output_grid)
        except converter.ConverterError as exc:
            raise RuntimeError(f"onnx2tf failed on {src.name}: {exc}") from None
        made.update({v: Path(p) for v, p in files.items()})
    return made


def tflite_ops(path: Path) -> list[str]:
    """The operators of a .tflite file as the interpreter resolves them (no delegates applied)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # older environments
        from tensorflow.lite.python.interpreter import Interpreter, OpResolverType
    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return sorted({d["op_name"] for d in interp._get_ops_details()})


def non_builtin_ops(ops: list[str]) -> list[str]:
    """Select-TF (Flex) and custom ops: an app would need extra runtime libraries for these."""
    return [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE") or not op.isupper()]


def read_embedded_metadata(path: Path) -> dict:
    """The ``metadata.json`` zipped after a bundle ``.tflite`` (an associated file of its standard
    metadata, ``export.android_tflite``)."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("metadata.json"))


def tensorflow_load_check(paths: list[Path], timeout: float = 600) -> dict[str, dict]:
    """Load each .tflite in TensorFlow's own ``tf.lite.Interpreter`` (allocate_tensors), in the
    converter child: {str(path): {"ok": bool, "error"?: str, "version": str}}. A file whose bytes
    were checked before with the same TensorFlow is answered from the conversion cache.
    TensorFlow missing: every entry says so (ok None)."""
    out, todo, keys = {}, [], {}
    cache = cc.ConversionCache()
    tools = cc.versions("tensorflow|tensorflow-cpu")
    for p in paths:
        key, parts = cc.make_key("tf_load", {"tflite": sha256_file(p)}, {}, tools, cc.source_hash(tflite_convert))
        found = cache.fetch(key, {})
        if found is not None:
            out[str(p)] = found
        else:
            todo.append(p)
            keys[str(p)] = (key, parts)
    if todo:
        try:
            with converter.session(timeout) as conv:
                answers = conv.request("tf_load", paths=[str(p) for p in todo])
        except converter.ConverterError as exc:
            why = (str(exc).strip().splitlines() or ["no output"])[0][:200]
            return {**out, **{str(p): {"ok": False, "error": f"TensorFlow check did not run: {why}"} for p in todo}}
        for p in todo:
            res = answers[str(p)]
            out[str(p)] = res
            if res.get("ok") is not None:  # "TensorFlow is not installed" is not a property of the file
                cache.store(*keys[str(p)], {}, result=res)
    return out
