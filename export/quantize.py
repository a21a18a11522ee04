"""ONNX Runtime static int8 quantization: QDQ format, per-channel weights, calibration on
training inputs (``quant_pre_process`` first, as ORT recommends)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.io import atomic_copy

log = logging.getLogger(__name__)


class ArrayCalibrationReader:
    """Feeds rows of ``x`` to ORT's calibrator in batches of one size (the histogram calibrators,
    percentile and entropy, cannot stack a short last batch, so a remainder is dropped)."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 32):
        self.input_name = input_name
        batch = max(1, min(batch, len(x)))
        usable = len(x) - len(x) % batch
        self.batches = [x[i : i + batch].astype(np.float32) for i in range(0, usable, batch)]
        self._it = iter(self.batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {self.input_name: b}

    def rewind(self):
        self._it = iter(self.batches)


def quantize_int8_static(
    src: Path, dst: Path, calib_x: np.ndarray, input_name: str, method: str = "minmax", per_channel: bool = True,
    batch: int = 32,
    float_first_layer: bool = False,
    prepare: bool = True,
    float_last_layer: bool = False,
) -> Path:
    """Static int8 (QDQ). ``batch`` is the calibration batch size: a fixed-batch model needs its own.

    ``float_first_layer`` keeps the first Gemm/Conv/MatMul in float: the raw input is then never
    quantized to 256 levels, which for low-dimensional inputs is most of the int8 error.
    ``prepare``: equalise and GPTQ-round the weights of a Gemm/Relu chain first (``prepare_for_int8``)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }

    class Reader(ArrayCalibrationReader, CalibrationDataReader):
        pass

    def quantize(model: Path, out: Path) -> Path:
        quantize_static(
            str(model),
            str(out),
            Reader(input_name, calib_x, batch),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
            nodes_to_exclude=_float_layers(model, float_first_layer, float_last_layer),
        )
        return out

    with tempfile.TemporaryDirectory(prefix="pocketkd-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        best = quantize(pre, Path(tmp) / "int8.onnx")
        if prepare and _chain(__import__("onnx").load(str(pre))) is not None:
            from export.int8_arith import exact_outputs  # candidates judged as ARM / VNNI compute them

            # Candidates: no preparation, and each equalisation strength. The simulated int8 error that
            # prepare_for_int8 minimises is close to, not equal to, ORT's: the winner is the candidate
            # whose ORT int8 output (exact int8 arithmetic, as on ARM: see int8_arith) is closest to
            # the fp32 output on the calibration inputs.
            ref = exact_outputs(pre, calib_x, batch)
            err = float(np.mean((exact_outputs(best, calib_x, batch) - ref) ** 2))
            for i, alpha in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
                prepared = Path(tmp) / f"prepared{i}.onnx"
                prepare_for_int8(pre, prepared, calib_x, quantize_input=not float_first_layer, alpha=alpha,
                                 quantized_layers=_quantized_layers(pre, float_first_layer, float_last_layer))
                cand = quantize(prepared, Path(tmp) / f"int8_{i}.onnx")
                e = float(np.mean((exact_outputs(cand, calib_x, batch) - ref) ** 2))
                log.debug("int8 preparation alpha=%g: calibration MSE %.3g (best so far %.3g)", alpha, e, err)
                if e < err:
                    best, err = cand, e
        return atomic_copy(best, dst)


def quantize_int8_dynamic(src: Path, dst: Path, per_channel: bool = True, calib_x: np.ndarray | None = None,
                          float_first_layer: bool = False, float_last_layer: bool = False) -> Path:
    """int8 weights; activations quantized at run time. With ``calib_x`` (inputs typical of the
    deployment) a Gemm/Relu chain's weights are equalised and GPTQ-rounded first (``prepare_for_int8``).
    ``float_first_layer``: as in ``quantize_int8_static``, the first Gemm/Conv/MatMul stays float so
    the raw input is not quantized at run time; ``float_last_layer`` keeps the last one float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pocketkd-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8_dynamic.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        if calib_x is not None:
            prepared = Path(tmp) / "prepared.onnx"
            info = prepare_for_int8(pre, prepared, calib_x, quantize_input=not float_first_layer,
                                    quantized_layers=_quantized_layers(pre, float_first_layer, float_last_layer))
            log.debug("int8 weight preparation: %s", info)
            pre = prepared
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         # dynamic mode rewrites Gemm as MatMul "<name>_MatMul" + Add before quantizing
                         nodes_to_exclude=[n + sfx for n in _float_layers(pre, float_first_layer, float_last_layer)
                                           for sfx in ("", "_MatMul")])
        return atomic_copy(out, dst)


# --------------------------------------------------------------------------- weight preparation
# Post-training preparation of an fp32 Gemm/ReLU chain (the MLP students) so that int8 rounding
# costs little accuracy. Two standard methods, both applied to the fp32 ONNX before the int8
# converters see it, so every int8 format (ORT static / dynamic, TFLite) benefits:
#   * partial cross-layer equalisation (Nagel et al. 2019, "Data-free quantization"): ReLU is
#     positively homogeneous, so scaling hidden channel i by s_i in one Gemm and 1/s_i in the next
#     leaves the fp32 function unchanged; s_i = (max_j r_j / r_i) ** alpha evens out the per-channel
#     activation ranges that one per-tensor activation scale has to cover.
#   * GPTQ / optimal brain quantization (Frantar et al. 2022): each weight matrix is rounded to the
#     per-channel symmetric int8 grid (scale = max|row| / 127, what ORT and TFLite compute), one
#     input column at a time, pushing each column's rounding error onto the columns not yet rounded
#     through the inverse Hessian of the layer inputs (calibration activations, themselves taken
#     through the already-rounded layers and 8-bit activation quantization).
# The weights written are exactly on the grid and each row keeps its max |w|, so the converters'
# own per-channel quantization reproduces them without further rounding.


def _chain(model) -> list[dict] | None:
    """The model as [{'W': (out, in), 'b': (out,), 'relu': bool, 'node': Gemm}] or None when it is not a
    plain Gemm(+Relu) chain from the graph input to the graph output."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        return None
    layers, cur = [], inputs[0]
    for node in g.node:
        if node.op_type == "Gemm" and node.input[0] == cur:
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return None
            if node.input[1] not in inits or (len(node.input) > 2 and node.input[2] not in inits):
                return None
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            w = w if a.get("transB", 0) else w.T
            b = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64).reshape(-1)
                 if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0]))
            if b.shape != (w.shape[0],):
                return None
            layers.append({"W": w, "b": b, "relu": False, "node": node, "transB": bool(a.get("transB", 0))})
            cur = node.output[0]
        elif node.op_type == "Relu" and layers and node.input[0] == cur and not layers[-1]["relu"]:
            layers[-1]["relu"] = True
            cur = node.output[0]
        else:
            return None
    if not layers or cur != g.output[0].name:
        return None
    return layers


def keeps_last_float(n_layers: int, float_first: bool, float_last: bool) -> bool:
    """Whether ``float_last_layer`` applies: only while another layer stays quantized (a two-layer MLP
    with a float first layer keeps its last layer int8, or its "int8" file would have no int8 layer)."""
    return float_last and n_layers - (1 if float_first else 0) >= 2


def _float_layers(path: Path, first: bool, last: bool) -> list[str]:
    """Names of the first and / or last Gemm/Conv/MatMul node (for ``nodes_to_exclude``)."""
    import onnx

    names = [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Gemm", "Conv", "MatMul")]
    if not names:
        return []
    last = keeps_last_float(len(names), first, last)
    return list(dict.fromkeys(([names[0]] if first else []) + ([names[-1]] if last else [])))


def _quantized_layers(path: Path, float_first: bool, float_last: bool) -> list[int] | None:
    """Indices of the Gemm/Relu chain's layers the converter quantizes (None: all, or not a chain)."""
    import onnx

    layers = _chain(onnx.load(str(path)))
    if not layers or not (float_first or float_last):
        return None
    n = len(layers)
    float_last = keeps_last_float(n, float_first, float_last)
    return [k for k in range(n) if not (float_first and k == 0) and not (float_last and k == n - 1)]


def _int8_grid(w: np.ndarray) -> np.ndarray:
    """Per-row symmetric int8 scale as ORT (and TFLite) compute it: max |w| / 127."""
    s = np.abs(w).max(axis=1, keepdims=True) / 127.0
    return np.where(s > 0, s, 1.0)


def _fake_quant(a: np.ndarray, rmin: float, rmax: float) -> np.ndarray:
    """8-bit asymmetric per-tensor quantization over [min(rmin, 0), max(rmax, 0)], as ORT's QDQ does."""
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    if hi - lo <= 0:
        return a
    s = (hi - lo) / 255.0
    zp = np.round(-lo / s)
    return (np.clip(np.round(a / s) + zp, 0, 255) - zp) * s


def gptq_round(w: np.ndarray, x: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Round ``w`` (out, in) to its per-row int8 grid minimising ||x w^T - x q^T|| column by column (GPTQ).
    Row maxima stay on the grid at +-127, so the grid a quantizer derives from the result is the same."""
    s = _int8_grid(w)[:, 0]
    h = x.T @ x
    h += (damp * float(np.mean(np.diag(h))) + 1e-12) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    rows = np.arange(w.shape[0])
    peak = np.abs(w).argmax(axis=1)  # each row's max |w| is its grid's +-127: never moved, so the
    peak_value = w[rows, peak]       # scale a quantizer derives from the result stays the same
    w = w.copy()
    q = np.zeros_like(w)
    for j in range(w.shape[1]):
        q[:, j] = np.clip(np.round(w[:, j] / s), -127, 127) * s
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j + 1:] -= np.outer(err, u[j, j + 1:])
        w[rows, peak] = peak_value
    return q


def prepare_for_int8(
    src: Path, dst: Path, calib_x: np.ndarray, *, quantized_layers: list[int] | None = None,
    quantize_input: bool = True, quantize_activations: bool = True,
    alpha: float | tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> dict:
    """Write to ``dst`` a function-equivalent fp32 copy of ``src`` prepared for int8 conversion
    (equalised hidden channels, GPTQ-rounded weights on the int8 grid). ``quantized_layers``: indices
    of the Gemms the converter will quantize (None: all); ``quantize_input`` / ``quantize_activations``:
    whether it quantizes the graph input / the hidden and output activations (simulated with the
    calibration ranges while rounding); ``alpha``: equalisation strength(s), 0 = none, 1 = equal
    ranges; of several, the one with the smallest simulated int8 error on ``calib_x``. A graph that
    is not a Gemm(+Relu) chain is copied unchanged. Returns {"applied": bool, ...}."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    layers = _chain(model)
    if layers is None:
        atomic_copy(Path(src), Path(dst))
        return {"applied": False, "reason": "not a Gemm/Relu chain"}
    n = len(layers)
    qset = set(range(n) if quantized_layers is None else quantized_layers)
    x = np.asarray(calib_x, dtype=np.float64).reshape(len(calib_x), -1)
    ref = _forward(layers, x)
    # the equalisation strength is chosen on the calibration data: the one whose simulated int8
    # output is closest to the fp32 output
    best = None
    for a in ((alpha,) if isinstance(alpha, (int, float)) else tuple(alpha)):
        cand, sim = _prepare_layers([dict(lay) for lay in layers], x, qset, quantize_input, quantize_activations, a)
        mse = float(np.mean((sim - ref) ** 2))
        if best is None or mse < best[0]:
            best = (mse, a, cand)
    _, alpha, layers = best

    inits = {i.name: i for i in model.graph.initializer}
    for lay in layers:
        node = lay["node"]
        w = lay["W"] if lay["transB"] else lay["W"].T
        old = inits[node.input[1]]
        old.CopyFrom(numpy_helper.from_array(w.astype(numpy_helper.to_array(old).dtype), old.name))
        if len(node.input) > 2 and node.input[2]:
            ob = inits[node.input[2]]
            arr = numpy_helper.to_array(ob)
            ob.CopyFrom(numpy_helper.from_array(lay["b"].reshape(arr.shape).astype(arr.dtype), ob.name))
    from export.onnx_export import save_proto

    save_proto(model, Path(dst))
    return {"applied": True, "layers": n, "quantized_layers": sorted(qset), "alpha": alpha}


def _forward(layers: list[dict], x: np.ndarray) -> np.ndarray:
    for lay in layers:
        x = x @ lay["W"].T + lay["b"]
        x = np.maximum(x, 0) if lay["relu"] else x
    return x


def _prepare_layers(layers: list[dict], x: np.ndarray, qset: set[int], quantize_input: bool,
                    quantize_activations: bool, alpha: float) -> tuple[list[dict], np.ndarray]:
    """Equalise (strength ``alpha``) and GPTQ-round ``layers``; returns them and the simulated int8 output on ``x``."""
    n = len(layers)
    if alpha > 0:
        h = x
        for k in range(n - 1):
            lay, nxt = layers[k], layers[k + 1]
            h = h @ lay["W"].T + lay["b"]
            if not lay["relu"]:
                continue
            h = np.maximum(h, 0)
            r = h.max(axis=0)
            if r.max() <= 0:
                continue
            s = np.where(r > 0, (r.max() / np.maximum(r, 1e-30)) ** alpha, 1.0)
            lay["W"], lay["b"], nxt["W"] = lay["W"] * s[:, None], lay["b"] * s, nxt["W"] / s[None, :]
            h = h * s
    # activation ranges of the equalised fp32 model (what MinMax calibration will see)
    ranges, h = [(float(x.min()), float(x.max()))], x
    for lay in layers:
        h = h @ lay["W"].T + lay["b"]
        h = np.maximum(h, 0) if lay["relu"] else h
        ranges.append((float(h.min()), float(h.max())))
    # sequential GPTQ through the quantized path
    h = _fake_quant(x, *ranges[0]) if quantize_input and 0 in qset else x
    for k, lay in enumerate(layers):
        if k in qset:
            lay["W"] = gptq_round(lay["W"], h)
        h = h @ lay["W"].T + lay["b"]
        h = np.maximum(h, 0) if lay["relu"] else h
        if quantize_activations and (k in qset or k + 1 in qset):
            h = _fake_quant(h, *ranges[k + 1])
    return layers, h
