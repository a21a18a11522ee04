"""int8 arithmetic that does not depend on the CPU that checks it.

onnxruntime's u8s8 int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) add pairs of
8-bit products into 16-bit sums that saturate (onnxruntime's quantization docs, "When and why do I
need to try U8U8"); ARM and VNNI CPUs accumulate in 32 bits. A host check of an int8 file on such
a CPU therefore judges arithmetic the phone never does. This module gives every int8 ONNX file a
judgement that is the same on every CPU:

* ``exact_outputs``: the file's own integer arithmetic without saturation. QDQ graphs run with
  graph optimizations off, so QuantizeLinear / DequantizeLinear and the float ops between them run
  literally (the QDQ semantics that the fused int8 kernels implement); integer ops with int8
  weights (``MatMulInteger``, ``ConvInteger``: dynamic quantization) get their weights re-encoded
  as uint8 with the zero point moved by 128, the same integers, which onnxruntime runs on its
  u8u8 kernels (16-bit operands widened before the multiply-add: no saturation).
* ``int8_probe_model`` / ``host_int8_profile``: a measured answer to "does this machine's
  onnxruntime saturate?" (a 64-term dot product of 255 x 127: 2,072,640 exact, 1,048,544
  saturated), together with the CPU flags that decide it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

PROBE_TERMS = 64
PROBE_EXACT = 255 * 127 * PROBE_TERMS  # 2,072,640
INTEGER_OPS = ("MatMulInteger", "ConvInteger")


def int8_probe_model(path: Path) -> Path:
    """Write the saturation probe: float input (1, 64) -> QuantizeLinear (uint8, scale 1) ->
    MatMulInteger with int8 weights all 127 -> float. Input all 255: output 2,072,640 unless the
    u8s8 kernel saturates."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.full((PROBE_TERMS, 1), 127, np.int8), "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "zero_point")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zero_point"], ["xq"]),
             helper.make_node("MatMulInteger", ["xq", "w"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["output"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "int8_probe",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", PROBE_TERMS])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    from export.onnx_export import save_proto

    return save_proto(model, Path(path))


def probe_input() -> np.ndarray:
    return np.full((1, PROBE_TERMS), 255.0, np.float32)


def probe_verdict(output) -> dict:
    """What a probe output says: {"probe_output", "probe_exact", "u8s8_saturates"}."""
    value = float(np.asarray(output, dtype=np.float64).reshape(-1)[0])
    return {"probe_output": value, "probe_exact": PROBE_EXACT, "u8s8_saturates": bool(value != PROBE_EXACT)}


@functools.lru_cache(maxsize=1)
def host_int8_profile() -> dict:
    """This machine: CPU model, its int8-relevant flags, onnxruntime version and the measured probe."""
    import tempfile

    import onnxruntime as ort

    from device_bench.runner import cpu_int8_info

    with tempfile.TemporaryDirectory(prefix="pocketkd-probe-") as tmp:
        path = int8_probe_model(Path(tmp) / "probe.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"input": probe_input()})[0]
    return {**cpu_int8_info(), "onnxruntime": ort.__version__, **probe_verdict(out)}


def profile_fingerprint(profile: dict) -> str:
    """The part of a profile that int8 results depend on (for cache keys)."""
    return f"{profile['machine']}:{','.join(profile['int8_flags'])}:saturates={profile['u8s8_saturates']}"


def has_integer_ops(model) -> bool:
    return any(n.op_type in INTEGER_OPS for n in model.graph.node)


def exact_twin(model):
    """A copy of ``model`` (onnx.ModelProto) whose integer ops take uint8 weights: w + 128 with
    zero point + 128, the same integers, run on onnxruntime's non-saturating u8u8 kernels."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in INTEGER_OPS or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if w.dtype != np.int8:
            continue
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8),
                                                              node.input[1]))
        old_zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if old_zp is not None and old_zp not in inits:
            raise ValueError(f"{node.name}: weight zero point {old_zp!r} is not a constant")
        zp = numpy_helper.to_array(inits[old_zp]).astype(np.int16) if old_zp else np.zeros((), np.int16)
        name = f"{node.input[1]}_zero_point_u8"
        model.graph.initializer.append(numpy_helper.from_array((zp + 128).astype(np.uint8), name))
        while len(node.input) < 4:
            node.input.append("")
        node.input[3] = name
    return model


def exact_session(path: Path, threads: int = 1):
    """An onnxruntime session computing ``path``'s int8 arithmetic without saturation (see module doc)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    data = exact_twin(model).SerializeToString() if has_integer_ops(model) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def exact_outputs(path: Path, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """First output of ``path`` on ``x`` with exact int8 arithmetic; ``batch``: a fixed batch size
    (the last chunk is padded by repeating its last row)."""
    sess = exact_session(path)
    name = sess.get_inputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    step = batch or 1024
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        pad = (batch or len(chunk)) - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(sess.run(None, {name: chunk})[0][:len(chunk) - pad])
    return np.concatenate(outs).astype(np.float32)
