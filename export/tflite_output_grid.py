"""The output grid of a full-integer TFLite file, chosen by error instead of by range.

TFLite's converter gives the int8 output tensor the min/max range the float graph's output had on the
representative data: 256 levels, a step of (max - min) / 255. Every output of the file is rounded to that
grid, and where the input is quantized too, the output takes one value per input level, so the rounding
errors do not average out: on the toy's int8-I/O files the min/max grid alone moved the RMSE by -1 % to
+3 % (the float-I/O sibling with a float last layer, rounded to the grid, gives the int8-I/O file's outputs
bit for bit).

``choose`` keeps the file and its min/max range as the baseline and tries wider output scales (up to
``HIGH``; narrower down to ``LOW`` where the int8 graph's own outputs allow, as the float graph's range
may be wider than the int8 one's). Each candidate's outputs are computed exactly from the last layer's
int8 inputs (one interpreter run on the calibration rows, ``experimental_preserve_all_tensors``), its
mean squared difference from the fp32 file on the same rows is taken, and the candidate with the least
wins (min/max on ties). Only the output tensor's scale and zero point change: a FULLY_CONNECTED layer
requantizes to whatever its output tensor says, so weights, bias and every other tensor stay as they are.
It is skipped (the min/max grid kept, and the reason returned) where the output is not produced directly by
a FULLY_CONNECTED layer without a fused activation.

The range [LOW, HIGH] and the objective (fp32 outputs on the calibration rows, not the labels) were chosen
on the toy's selection seeds 100-102 (docs/BENCHMARKS.md, QAT section), not on a report seed.
"""

from __future__ import annotations

import numpy as np

LOW, HIGH, STEP = -0.025, 0.10, 0.001  # candidate scales: minmax * (1 + k * STEP), LOW <= k * STEP <= HIGH
MIN_MATCH = 0.99  # the written file's outputs must equal the predicted ones on this share of the values


def choose(full: bytes, fp32: bytes, calib: np.ndarray) -> tuple[bytes, dict]:
    """``full``: a full-integer model with float I/O (QUANTIZE in, DEQUANTIZE out); ``fp32``: the float
    model it was quantized from; ``calib``: the calibration rows (float, the model's layout). Returns the
    model with the chosen output grid and a record of the choice."""
    from tensorflow.lite.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(full))
    found = _last_layer(m)
    if isinstance(found, str):
        return full, {"method": "minmax", "why": found}
    layer, out_t = found
    g = m.subgraphs[0]
    q = g.tensors[out_t].quantization
    s0, zp0 = float(q.scale[0]), int(q.zeroPoint[0])
    z = _accumulators(full, m, layer, calib)  # the last layer's exact outputs before rounding
    ref = _run(fp32, calib)
    if ref.size != z.size:
        return full, {"method": "minmax", "why": f"fp32 output has {ref.size} values, the int8 layer {z.size}"}
    ref = ref.reshape(z.shape)
    lo, hi = float(z.min()), float(z.max())
    best = (_cost(z, ref, s0, zp0), s0, zp0)
    record = {"minmax_scale": s0, "minmax_zero_point": zp0, "minmax_calibration_mse": best[0]}
    for k in range(round(LOW / STEP), round(HIGH / STEP) + 1):
        s = s0 * (1 + k * STEP)
        zp = int(np.clip(np.round(-128 - lo / s), -128, 127))
        if k == 0 or (127 - zp) * s < hi or (-128 - zp) * s > lo:  # the baseline, or a grid that clips
            continue
        cost = _cost(z, ref, s, zp)
        if cost < best[0]:
            best = (cost, s, zp)
    cost, s, zp = best
    q.scale, q.zeroPoint = np.array([s], np.float32), np.array([zp], np.int64)
    chosen = bytes(fb.convert_object_to_bytearray(m))
    got = _run(chosen, calib, keep=out_t).reshape(z.shape)
    match = float(np.mean(got == _levels(z, np.float32(s), zp)))
    if match < MIN_MATCH:  # the arithmetic here is not the interpreter's: keep what the converter wrote
        return full, {"method": "minmax", "why": f"predicted outputs matched the file on {match:.1%} only", **record}
    return chosen, {"method": "mse", **record, "scale": float(np.float32(s)), "zero_point": zp,
                    "calibration_mse": cost, "predicted_match": match}


def _levels(z: np.ndarray, s: float, zp: int) -> np.ndarray:
    return np.clip(np.round(z / s) + zp, -128, 127).astype(np.int64)


def _grid(z: np.ndarray, s: float, zp: int) -> np.ndarray:
    return ((_levels(z, s, zp) - zp) * s).astype(np.float32)


def _cost(z: np.ndarray, ref: np.ndarray, s: float, zp: int) -> float:
    return float(np.mean((_grid(z, np.float32(s), zp).astype(np.float64) - ref) ** 2))


def _last_layer(m) -> tuple[object, int] | str:
    """(the FULLY_CONNECTED operator, its int8 output tensor) that makes the graph's only output, or why not."""
    from tensorflow.lite.python import schema_py_generated as schema

    from export.tflite_ops import op_kind

    g = m.subgraphs[0]
    if len(m.subgraphs) != 1 or len(g.outputs) != 1:
        return "not a single-graph, single-output model"
    producer = {int(t): op for op in g.operators for t in op.outputs}
    op = producer.get(int(g.outputs[0]))
    if op is not None and op_kind(m, op) == "DEQUANTIZE":
        op = producer.get(int(op.inputs[0]))
    if op is None or op_kind(m, op) != "FULLY_CONNECTED":
        return "the output is not made by a FULLY_CONNECTED layer"
    if op.builtinOptions is not None and op.builtinOptions.fusedActivationFunction != 0:
        return "the last FULLY_CONNECTED layer has a fused activation"
    out_t = int(op.outputs[0])
    t = g.tensors[out_t]
    if t.type != schema.TensorType.INT8 or t.quantization is None or len(t.quantization.scale) != 1:
        return "the last layer's output is not a per-tensor int8 tensor"
    if len(op.inputs) < 3 or op.inputs[2] < 0:
        return "the last FULLY_CONNECTED layer has no bias"
    return op, out_t


def _accumulators(full: bytes, m, op, calib: np.ndarray) -> np.ndarray:
    """The last layer's outputs in real units before rounding: its int8 input (from one run with every
    tensor kept), int8 weights and int32 bias, summed exactly in int64."""
    g = m.subgraphs[0]
    x_t, w_t, b_t = (int(i) for i in op.inputs[:3])
    w = _constant(m, g.tensors[w_t]).astype(np.int64)  # [out, in]
    b = _constant(m, g.tensors[b_t]).astype(np.int64)
    x = _run(full, calib, keep=x_t).reshape(-1, w.shape[1]).astype(np.int64)
    xq, wq = g.tensors[x_t].quantization, g.tensors[w_t].quantization
    acc = (x - int(xq.zeroPoint[0])) @ w.T + b
    return acc * (np.float64(xq.scale[0]) * np.asarray(wq.scale, np.float64))


def _constant(m, t) -> np.ndarray:
    from tensorflow.lite.python import schema_py_generated as schema

    dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}[t.type]
    return np.frombuffer(bytes(m.buffers[t.buffer].data), dtype=dtype).reshape(t.shape)


def _run(model: bytes, x: np.ndarray, keep: int | None = None) -> np.ndarray:
    """The model's float output on ``x`` (or tensor ``keep``'s values), batch by batch as the model allows."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=model, experimental_preserve_all_tensors=keep is not None)
    inp = interp.get_input_details()[0]
    dynamic = int(inp["shape_signature"][0]) == -1
    batch = len(x) if dynamic else int(inp["shape"][0])
    if dynamic:
        interp.resize_tensor_input(inp["index"], [len(x), *inp["shape"][1:]])
    interp.allocate_tensors()
    out_index = keep if keep is not None else interp.get_output_details()[0]["index"]
    parts = []
    for i in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[i:i + batch], dtype=np.float32)
        if len(chunk) < batch:  # a fixed-batch model: pad the last chunk, keep its own rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        parts.append(np.array(interp.get_tensor(out_index)).reshape(batch, -1)[: min(batch, len(x) - i)])
    return np.concatenate(parts).astype(np.float64 if keep is None else np.int64)
