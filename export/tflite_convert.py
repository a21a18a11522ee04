"""ONNX -> TFLite inside the converter child (``export.converter_child``): TensorFlow is imported
there once and serves every conversion of a run.

One call converts one ONNX file into the TFLite variants asked for, no more:

* ``fp32`` and ``fp16`` (and ``dynamic_range`` when asked) come from ``onnx2tf.convert`` itself;
  ``output_signaturedefs`` is set exactly when a full-integer variant is asked, which gives the
  saved model and tensor names that onnx2tf's own ``output_integer_quantized_tflite`` gives.
* ``int8`` (int8 compute, float I/O) is onnx2tf's full-integer conversion, made here with the same
  converter settings and representative data, but calibrated **once**: onnx2tf calibrates four
  times (int8, int8 I/O, and two int16-activation variants nobody asked for).
* ``int8_io`` is derived from that full-integer file by changing its interface (TFLite's
  ``modify_model_io_type`` drops the input QUANTIZE and output DEQUANTIZE ops and makes the I/O
  tensors int8 with the same scale and zero point), not by a second calibration.
* ``int8`` keeps in float what ``float_ops`` (TFLite op types, ``export.int8.float_ops``) and
  ``float_last`` (``export.int8.float_last_layer``: the last FULLY_CONNECTED / CONV_2D and every op
  after it, so the output is not rounded to 256 levels; only while another layer stays int8) name,
  by TFLite's selective quantization (``mlir_quantize`` with ``denylisted_ops`` /
  ``denylisted_nodes``: what ``tf.lite.experimental.QuantizationDebugger`` does for
  ``QuantizationDebugOptions(denylisted_ops=..., denylisted_nodes=...)``): float tensors between a
  DEQUANTIZE and a QUANTIZE. A graph with nothing to keep float gets the full-integer file.

Keras names layers from a process-wide counter, so every conversion starts with
``clear_session()``: a file converted as the n-th request of the child is byte-identical to one
converted in a fresh process.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np

# our variant name -> onnx2tf's file suffix (also the names of the files written here)
SUFFIX = {
    "fp32": "float32",
    "fp16": "float16",
    "dynamic_range": "dynamic_range_quant",
    "int8": "integer_quant",  # int8 compute, float32 input/output
    "int8_io": "full_integer_quant",  # int8 compute and int8 input/output
}
INTEGER = {"int8", "int8_io"}


def convert(src: str, out_dir: str, variants: list[str], calib_path: str | None, float_ops: list[str] = (),
            float_last: bool = False, output_grid: str = "minmax") -> dict[str, str]:
    """Write the ``variants`` of ``src`` into ``out_dir`` as ``<stem>_<suffix>.tflite``; returns
    {variant: path}. ``calib_path``: an .npy of representative inputs (TFLite layout), needed by
    the full-integer variants; ``float_ops`` / ``float_last``: what the ``int8`` file keeps float;
    ``output_grid``: "mse" chooses the full-integer output grid by error (``export.tflite_output_grid``)."""
    import onnx2tf
    import tf_keras

    tf_keras.backend.clear_session()  # layer names restart at 0: bytes do not depend on earlier requests
    out = Path(out_dir)
    integer = bool(INTEGER & set(variants))
    if integer and calib_path is None:
        raise ValueError("int8 TFLite variants need representative data")
    # onnx2tf rewrites its input file in place (op names, simplification): give it a copy
    work = out / "src"
    work.mkdir(parents=True, exist_ok=True)
    copy = work / Path(src).name
    shutil.copy(src, copy)
    onnx2tf.convert(
        input_onnx_file_path=str(copy),
        output_folder_path=str(out),
        copy_onnx_input_output_names_to_tflite=True,
        output_dynamic_range_quantized_tflite="dynamic_range" in variants,
        output_signaturedefs=integer,  # the saved model the int8 converter reads, named as for -oiqt
        # the ONNX files are simplified already (export.simplify); onnx2tf's own onnxsim pass runs the
        # `onnxsim` command 4 times in subprocesses when it is on PATH (~12 s a conversion, and a file
        # that depended on whether a venv was activated) and is skipped silently when it is not
        not_use_onnxsim=True,
        non_verbose=True,
    )
    stem = copy.stem
    if integer:
        _integer(out, stem, variants, np.load(calib_path), _onnx_io(copy), tuple(float_ops), bool(float_last),
                 output_grid)
    made = {}
    for v in variants:
        path = out / f"{stem}_{SUFFIX[v]}.tflite"
        if not path.exists():
            written = sorted(p.name for p in out.glob("*.tflite"))
            raise RuntimeError(f"onnx2tf did not write {path.name}; wrote: {written}")
        made[v] = str(path)
    return made


def _integer(out: Path, stem: str, variants: list[str], calib: np.ndarray, io: dict, float_ops: tuple[str, ...] = (),
             float_last: bool = False, output_grid: str = "minmax") -> None:
    """onnx2tf's full-integer conversion (its converter settings and representative data: the
    calibration rows in order, in batches of the model's batch size, normalised with mean 0 and
    std 1), calibrated once, its output grid then chosen by error when ``output_grid`` is "mse"; the
    int8-I/O file from it by an interface change; the float-I/O int8 file from it, or, when something
    is kept float, by a selective quantization of the same data."""
    import tensorflow as tf
    from onnx2tf.utils.common_functions import rewrite_tflite_inout_opname
    from tensorflow.lite.python.util import modify_model_io_type

    from export import tflite_output_grid

    full = _int8_converter(out, calib).convert()
    selective = "int8" in variants and any(_kept_float(full, float_ops, float_last))  # else no second calibration
    if output_grid == "mse" and ("int8_io" in variants or not selective):  # only for a file written from `full`
        full, _ = tflite_output_grid.choose(full, (out / f"{stem}_{SUFFIX['fp32']}.tflite").read_bytes(), calib)
    files = {"int8": full}
    if "int8_io" in variants:
        files["int8_io"] = _tidy(modify_model_io_type(full, tf.int8, tf.int8), full)
    if selective:
        files["int8"] = _selective(out, calib, float_ops, float_last)
    for v, data in files.items():
        name_ = f"{stem}_{SUFFIX[v]}.tflite"
        (out / name_).write_bytes(data)
        rewrite_tflite_inout_opname(output_folder_path=str(out), tflite_file_name=name_, **io)


def _int8_converter(out: Path, calib: np.ndarray):
    import tensorflow as tf

    trackable = tf.saved_model.load(str(out))
    signature = trackable.signatures["serving_default"]
    spec = next(iter(signature.structured_input_signature[1].values()))
    name = next(iter(signature.structured_input_signature[1]))
    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1

    def representative():
        for i in range(0, len(calib), batch):
            yield {name: tf.cast(tf.convert_to_tensor(calib[i:i + batch]), tf.float32)}

    converter = tf.lite.TFLiteConverter.from_saved_model(str(out))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
    converter._experimental_disable_per_channel = False
    converter.unfold_batchmatmul = False
    converter.representative_dataset = representative
    return converter


LAYERS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
NOT_COMPUTE = ("QUANTIZE", "DEQUANTIZE")


def _ops(model: bytes) -> list[tuple[str, str]]:
    """(op type, first output tensor name) of each operator of the main graph, in execution order."""
    from tensorflow.lite.tools import flatbuffer_utils as fb

    from export.tflite_ops import op_kind

    m = fb.convert_bytearray_to_object(model)
    g = m.subgraphs[0]
    out = [(op_kind(m, op), g.tensors[op.outputs[0]].name.decode()) for op in g.operators]
    return [o for o in out if o[0] not in NOT_COMPUTE]


def _kept_float(model: bytes, float_ops: tuple[str, ...], float_last: bool) -> tuple[list[str], list[str]]:
    """(op types, node names) the float-I/O int8 file keeps in float: the ``float_ops`` types the
    graph has, and with ``float_last`` the last FULLY_CONNECTED / CONV_2D and every op after it
    (only while another layer stays int8: ``export.quantize.keeps_last_float``)."""
    from export.quantize import keeps_last_float

    ops = _ops(model)
    types = sorted({t for t, _ in ops} & set(float_ops))
    layers = [i for i, (t, _) in enumerate(ops) if t in LAYERS]
    dense = [i for i in layers if ops[i][0] != "DEPTHWISE_CONV_2D"]
    nodes = []
    if dense and keeps_last_float(len(layers), False, float_last):
        nodes = [n for t, n in ops[dense[-1]:] if t not in types]
    return types, nodes


def _selective(out: Path, calib: np.ndarray, float_ops: tuple[str, ...], float_last: bool) -> bytes:
    """The int8 file with what ``_kept_float`` names in float (TFLite's selective quantization)."""
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.python.lite import _deduplicate_readonly_buffers

    converter = _int8_converter(out, calib)
    converter._experimental_calibrate_only = True  # as QuantizationDebugger does
    calibrated = converter.convert()
    types, nodes = _kept_float(calibrated, float_ops, float_last)  # node names as the quantizer knows them
    model = mlir_quantize(calibrated, disable_per_channel=False, denylisted_ops=types, denylisted_nodes=nodes)
    return _deduplicate_readonly_buffers(model)  # as TFLiteConverter.convert() finishes


def _tidy(model: bytes, like: bytes) -> bytes:
    """The int8-I/O model laid out as the converter itself writes it (the same size): I/O tensors
    named as in ``like`` (the float-I/O int8 model), the graph inputs the first tensors, no operator
    codes of the removed QUANTIZE/DEQUANTIZE ops, no buffers that no tensor uses. The arithmetic is
    untouched (same ops, weights, scales and zero points)."""
    from tensorflow.lite.tools import flatbuffer_utils as fb

    ref = fb.convert_bytearray_to_object(like).subgraphs[0]
    m = fb.convert_bytearray_to_object(model)
    g = m.subgraphs[0]
    for ours, theirs in ((g.inputs, ref.inputs), (g.outputs, ref.outputs)):
        for i, j in zip(ours, theirs):
            g.tensors[i].name = ref.tensors[j].name
    first = [int(i) for i in g.inputs] if len(m.subgraphs) == 1 else []  # signatures index subgraph 0
    order = first + [i for i in range(len(g.tensors)) if i not in first]
    new = {old: n for n, old in enumerate(order)}
    g.tensors = [g.tensors[i] for i in order]
    for op in g.operators:
        op.inputs = np.array([new[int(i)] if i >= 0 else i for i in op.inputs], np.int32)  # -1: optional input
        op.outputs = np.array([new[int(i)] for i in op.outputs], np.int32)
    g.inputs = np.array([new[int(i)] for i in g.inputs], np.int32)
    g.outputs = np.array([new[int(i)] for i in g.outputs], np.int32)
    for sig in m.signatureDefs or []:
        for t in [*sig.inputs, *sig.outputs]:
            t.tensorIndex = new[t.tensorIndex]
    used = sorted({op.opcodeIndex for sg in m.subgraphs for op in sg.operators})
    m.operatorCodes = [m.operatorCodes[i] for i in used]
    for sg in m.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = used.index(op.opcodeIndex)
    kept = sorted({0} | {t.buffer for sg in m.subgraphs for t in sg.tensors} | {d.buffer for d in m.metadata or []})
    m.buffers = [m.buffers[i] for i in kept]
    for sg in m.subgraphs:
        for t in sg.tensors:
            t.buffer = kept.index(t.buffer)
    for d in m.metadata or []:
        d.buffer = kept.index(d.buffer)
    return bytes(fb.convert_object_to_bytearray(m))


def _onnx_io(path: Path) -> dict:
    """The graph's input/output names and shapes as onnx2tf passes them to ``rewrite_tflite_inout_opname``."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in g.initializer}

    def shape(v):
        return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]

    ins = [v for v in g.input if v.name not in inits]
    return {"onnx_input_names": [v.name for v in ins], "onnx_output_names": [v.name for v in g.output],
            "onnx_graph_input_shapes": [shape(v) for v in ins],
            "onnx_graph_output_shapes": [shape(v) for v in g.output]}


def gpu_compatibility(tf, path: str) -> str:
    """TensorFlow's static GPU-delegate check of a .tflite (``tf.lite.experimental.Analyzer`` with
    ``gpu_compatibility=True``): "compatible", or "not compatible: " and the ops it names. Static: a
    file it passes may still meet a device's own limits at run time."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_path=path, gpu_compatibility=True)
    text = buf.getvalue()
    if "looks compatible with GPU delegate" in text:
        return "compatible"
    why = sorted({" ".join(line.split("GPU COMPATIBILITY WARNING:", 1)[1].split())
                  for line in text.splitlines() if "GPU COMPATIBILITY WARNING:" in line})
    return "not compatible: " + ("; ".join(why)[:300] if why else "the analyzer says so")


def tf_load(paths: list[str]) -> dict[str, dict]:
    """Load each .tflite in TensorFlow's own ``tf.lite.Interpreter`` (allocate_tensors), and run
    TensorFlow's static GPU-delegate check on it (``gpu_compatibility``)."""
    try:
        import tensorflow as tf
    except ImportError:
        return {p: {"ok": None, "error": "tensorflow is not installed"} for p in paths}
    out = {}
    for p in paths:
        try:
            interp = tf.lite.Interpreter(model_path=p)
            interp.allocate_tensors()
            out[p] = {"ok": True, "version": tf.__version__, "gpu_delegate": gpu_compatibility(tf, p)}
        except Exception as exc:
            out[p] = {"ok": False, "version": tf.__version__,
                      "error": " ".join(str(exc).split())[:300] or type(exc).__name__}
    return out
