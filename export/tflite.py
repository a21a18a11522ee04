"""ONNX -> TFLite with onnx2tf: fp32, fp16, dynamic-range and full-integer int8 (float I/O and
int8 I/O) from one conversion, plus the builtin-ops check.

The conversion runs in a child process: TensorFlow is heavy to import, logs from C++ straight
to the terminal, and keeps memory; a child keeps all of that out of the pipeline process, and
its output is shown only when it fails.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import shutil
import zipfile
from pathlib import Path

import numpy as np

from pipeline.io import atomic_copy
from pipeline.procs import run_child, temp_dir

log = logging.getLogger(__name__)

# our precision name -> onnx2tf's file suffix
VARIANTS = {
    "fp32": "float32",
    "fp16": "float16",
    "dynamic_range": "dynamic_range_quant",
    "int8": "integer_quant",  # int8 compute, float32 input/output
    "int8_io": "full_integer_quant",  # int8 compute and int8 input/output
}
QUANTIZED = {"dynamic_range", "int8", "int8_io"}


def onnx_to_tflite(
    src: Path,
    out_dir: Path,
    stem: str = "student",
    variants: tuple[str, ...] = ("fp32", "fp16"),
    calib_nhwc: np.ndarray | None = None,
    timeout: float = 900,
    prepare: bool = True,
) -> dict[str, Path]:
    """Convert ``src``; returns {variant: path} for the files written into ``out_dir`` as
    ``{stem}_{variant}.tflite``. Full-integer variants need ``calib_nhwc``: representative
    model-ready inputs in TFLite's layout (NHWC for images). ``prepare``: the quantized variants of
    an MLP (Gemm/Relu chain) are converted from a copy prepared by ``export.quantize.prepare_for_int8``
    with ``calib_nhwc`` (the fp32 and fp16 files always come from ``src`` itself)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown TFLite variants {sorted(unknown)}; allowed: {', '.join(VARIANTS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with temp_dir("pocketkd-onnx2tf") as tmp:  # removed on every exit; a SIGKILLed run's by the next run
        sources = {v: src for v in variants}
        quant = [v for v in variants if v in QUANTIZED]
        if prepare and quant and calib_nhwc is not None:
            # the quantized variants come from a copy whose weights are prepared for int8
            # (equalised, GPTQ-rounded onto the int8 grid); a graph the preparation does not
            # handle (not a Gemm/Relu chain) is converted once, as before
            from export.quantize import prepare_for_int8

            prepared = Path(tmp) / "prepared" / src.name
            prepared.parent.mkdir()
            if prepare_for_int8(src, prepared, calib_nhwc)["applied"]:
                sources.update({v: prepared for v in quant})
        made = {}
        for i, source in enumerate(dict.fromkeys(sources.values())):
            group = tuple(v for v in variants if sources[v] == source)
            run_dir = Path(tmp) / f"run{i}"
            run_dir.mkdir()
            written = _run_onnx2tf(source, run_dir, group, calib_nhwc, timeout)
            for short in group:
                found = written / f"{source.stem}_{VARIANTS[short]}.tflite"
                if not found.exists():
                    raise RuntimeError(f"onnx2tf did not write {found.name}; wrote: {sorted(os.listdir(written))}")
                made[short] = atomic_copy(found, out_dir / f"{stem}_{short}.tflite")
    return {v: made[v] for v in variants}


def _run_onnx2tf(src: Path, tmp: Path, variants: tuple[str, ...], calib_nhwc: np.ndarray | None,
                 timeout: float) -> Path:
    """One onnx2tf conversion of ``src`` in a child process, writing into ``tmp``; returns ``tmp``."""
    opts = {"dynamic_range": "dynamic_range" in variants, "integer": bool({"int8", "int8_io"} & set(variants))}
    if opts["integer"]:
        if calib_nhwc is None:
            raise ValueError("int8 TFLite variants need representative data (calib_nhwc)")
        np.save(tmp / "calib.npy", calib_nhwc.astype(np.float32))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": ""}
    # onnx2tf rewrites its input file in place (op names, simplification): give it a copy
    work = tmp / "src"
    work.mkdir()
    copy = work / src.name
    shutil.copy(src, copy)
    # its own process group, killed with us (PR_SET_PDEATHSIG) even when we are SIGKILLed
    proc = run_child([sys.executable, "-m", "export.tflite", str(copy), str(tmp), json.dumps(opts)],
                     env=env, timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"onnx2tf failed on {src.name} (exit {proc.returncode}):\n{tail}")
    return tmp


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


def embed_metadata(path: Path, metadata: dict) -> None:
    """Append ``metadata.json`` as a zip member, as the TFLite metadata convention does: the
    interpreter ignores trailing bytes, and ``zipfile`` (or ``unzip``) reads it back."""
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("metadata.json", json.dumps(metadata, indent=1))


def read_embedded_metadata(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("metadata.json"))


def _convert(src: str, out_dir: str, opts: dict) -> None:
    import onnx2tf

    kwargs = {}
    if opts.get("integer"):
        calib = np.load(Path(out_dir) / "calib.npy")
        channels = calib.shape[-1]
        mean = np.zeros([1] * (calib.ndim - 1) + [channels], dtype=np.float32)
        kwargs = dict(
            output_integer_quantized_tflite=True,
            custom_input_op_name_np_data_path=[["input", str(Path(out_dir) / "calib.npy"), mean, mean + 1]],
            input_quant_dtype="int8",
            output_quant_dtype="int8",
        )
    onnx2tf.convert(
        input_onnx_file_path=src,
        output_folder_path=out_dir,
        copy_onnx_input_output_names_to_tflite=True,
        output_dynamic_range_quantized_tflite=bool(opts.get("dynamic_range")),
        non_verbose=True,
        **kwargs,
    )


def tensorflow_load_check(paths: list[Path], timeout: float = 600) -> dict[str, dict]:
    """Load each .tflite in TensorFlow's own ``tf.lite.Interpreter`` (allocate_tensors) in one child
    process (importing TensorFlow is heavy): {str(path): {"ok": bool, "error"?: str, "version": str}}.
    TensorFlow missing: every entry says so (ok None)."""
    if not paths:
        return {}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": ""}
    proc = run_child([sys.executable, "-m", "export.tflite", "--tf-load", *map(str, paths)], env=env,
                     timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {str(p): {"ok": False, "error": f"TensorFlow check did not run (exit {proc.returncode}): {why}"}
                for p in paths}
    return json.loads(lines[-1])


def _tf_load(paths: list[str]) -> dict[str, dict]:
    try:
        import tensorflow as tf
    except ImportError:
        return {p: {"ok": None, "error": "tensorflow is not installed"} for p in paths}
    out = {}
    for p in paths:
        try:
            interp = tf.lite.Interpreter(model_path=p)
            interp.allocate_tensors()
            out[p] = {"ok": True, "version": tf.__version__}
        except Exception as exc:
            out[p] = {"ok": False, "version": tf.__version__,
                      "error": " ".join(str(exc).split())[:300] or type(exc).__name__}
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--tf-load":
        print(json.dumps(_tf_load(sys.argv[2:])))
    else:
        _convert(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
