"""Issue 12: the full-integer TFLite output grid chosen by error (``export.int8.output_grid``,
export/tflite_output_grid.py), on real onnx2tf conversions run in LiteRT."""

import numpy as np
import pytest
import torch

from device_bench.runner import load_model, predict_all
from export.onnx_export import export_onnx
from export import tflite_output_grid
from export.tflite import onnx_to_tflite

VARIANTS = ("fp32", "int8", "int8_io")


def _mlp(tmp_path, last_relu: bool):
    torch.manual_seed(3)
    layers = [torch.nn.Linear(1, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)]
    model = torch.nn.Sequential(*layers, *([torch.nn.ReLU()] if last_relu else [])).eval()
    return export_onnx(model, tmp_path / ("relu_out.onnx" if last_relu else "mlp.onnx"), 1)


def _convert(tmp_path, src, grid, x):
    return onnx_to_tflite(src, tmp_path / grid, "m", VARIANTS, x, prepare=False, output_grid=grid)


def _run(path, x):
    return predict_all(load_model(str(path), threads=1), x).astype(np.float64)


def _model(path):
    from tensorflow.lite.tools import flatbuffer_utils as fb

    return fb.read_model(str(path))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", str(tmp_path / "cache"))


def test_the_chosen_output_grid_is_nearer_fp32_and_changes_nothing_else(tmp_path, cache):
    from tensorflow.lite.tools import flatbuffer_utils as fb

    x = np.random.default_rng(0).uniform(-3, 3, (512, 1)).astype(np.float32)
    src = _mlp(tmp_path, last_relu=False)
    minmax, mse = _convert(tmp_path, src, "minmax", x), _convert(tmp_path, src, "mse", x)
    ref = _run(minmax["fp32"], x)
    err = {name: float(np.mean((_run(files["int8"], x) - ref) ** 2)) for name, files in (("minmax", minmax),
                                                                                         ("mse", mse))}
    assert err["mse"] < err["minmax"], err  # on the calibration rows, where it was chosen
    a, b = _model(minmax["int8_io"]), _model(mse["int8_io"])
    out_a, out_b = (m.subgraphs[0].tensors[m.subgraphs[0].outputs[0]].quantization for m in (a, b))
    assert (out_a.scale[0], out_a.zeroPoint[0]) != (out_b.scale[0], out_b.zeroPoint[0])
    assert 1 - 0.025 <= out_b.scale[0] / out_a.scale[0] <= 1.10
    out_b.scale, out_b.zeroPoint = out_a.scale, out_a.zeroPoint  # the output grid is the only difference
    assert fb.convert_object_to_bytearray(a) == fb.convert_object_to_bytearray(b)
    # the int8-I/O file is the float-I/O one with its interface changed: the same grid, the same outputs
    assert np.array_equal(_run(mse["int8_io"], x), _run(mse["int8"], x))
    # no more outputs at the ends of the int8 range than min/max had (a grid that clips is never taken)
    ends = {name: int(np.isin(np.round(_run(files["int8"], x) / q.scale[0]) + q.zeroPoint[0], (-128, 127)).sum())
            for name, files, q in (("minmax", minmax, out_a), ("mse", mse, out_b))}
    assert ends["mse"] <= ends["minmax"], ends


def test_an_output_not_made_by_a_plain_fully_connected_layer_keeps_the_converters_grid(tmp_path, cache):
    x = np.random.default_rng(1).uniform(-3, 3, (256, 1)).astype(np.float32)
    src = _mlp(tmp_path, last_relu=True)  # the converter fuses the last ReLU into the layer
    minmax, mse = _convert(tmp_path, src, "minmax", x), _convert(tmp_path, src, "mse", x)
    for v in ("int8", "int8_io"):
        assert mse[v].read_bytes() == minmax[v].read_bytes(), v
    full = minmax["int8"].read_bytes()
    kept, record = tflite_output_grid.choose(full, minmax["fp32"].read_bytes(), x)
    assert kept == full
    assert record == {"method": "minmax", "why": "the last FULLY_CONNECTED layer has a fused activation"}
