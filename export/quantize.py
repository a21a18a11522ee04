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
) -> Path:
    """Static int8 (QDQ). ``batch`` is the calibration batch size: a fixed-batch model needs its own.

    ``float_first_layer`` keeps the first Gemm/Conv/MatMul in float: the raw input is then never
    quantized to 256 levels, which for low-dimensional inputs is most of the int8 error."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }

    class Reader(ArrayCalibrationReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="pocketkd-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        exclude = []
        if float_first_layer:
            import onnx

            first = next((n for n in onnx.load(str(pre)).graph.node if n.op_type in ("Gemm", "Conv", "MatMul")), None)
            exclude = [first.name] if first is not None else []
        quantize_static(
            str(pre),
            str(out),
            Reader(input_name, calib_x, batch),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=methods[method],
            nodes_to_exclude=exclude,
        )
        return atomic_copy(out, dst)


def quantize_int8_dynamic(src: Path, dst: Path, per_channel: bool = True) -> Path:
    """int8 weights; activations quantized at run time (no calibration data needed)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pocketkd-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8_dynamic.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
        return atomic_copy(out, dst)
