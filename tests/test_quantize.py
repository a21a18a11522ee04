"""int8 weight preparation (equalisation + GPTQ rounding) and the compact ORT-format conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from export import ort_tools
from export.onnx_export import export_onnx
from export.int8_arith import exact_outputs
from export.quantize import gptq_round, prepare_for_int8, quantize_int8_dynamic, quantize_int8_static


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


@pytest.fixture(scope="module")
def sine_mlp(tmp_path_factory):
    """A 1-32-32-1 ReLU MLP fitted to sin(2x) on [-pi, pi] (inputs standardised), as the toy student."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 1-32-32-1 MLP: threads only add overhead
    rng = np.random.default_rng(0)
    x_raw = rng.uniform(-np.pi, np.pi, (1000, 1)).astype(np.float32)
    x = x_raw / x_raw.std()
    y = np.sin(2 * x_raw)
    model = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), 0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(800):
        opt.zero_grad()
        loss = ((model(xt) - yt) ** 2).mean()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_onnx(model.eval(), path, (1,))
    return path, x, y


def test_equalisation_keeps_the_fp32_function(sine_mlp, tmp_path):
    src, x, _ = sine_mlp
    info = prepare_for_int8(src, tmp_path / "eq.onnx", x, quantized_layers=[], alpha=0.5)  # equalise only
    assert info["applied"]
    np.testing.assert_allclose(_run(tmp_path / "eq.onnx", x), _run(src, x), atol=1e-5)
    w0 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    w1 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "eq.onnx")).graph.initializer}
    assert any(not np.allclose(w0[k], w1[k]) for k in w0)  # the channels really were rescaled


def test_prepared_weights_are_reproduced_exactly_by_ort(sine_mlp, tmp_path):
    """Every prepared weight row is on ORT's per-channel int8 grid, so ORT's quantizer adds no rounding."""
    src, x, _ = sine_mlp
    prepare_for_int8(src, tmp_path / "p.onnx", x)
    prepared = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    quantize_int8_static(src, tmp_path / "q.onnx", x, "input", float_first_layer=False)
    q = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    checked = 0
    for name, w in prepared.items():
        if name + "_quantized" in q and w.ndim == 2:
            scale = q[name + "_scale"].reshape(-1, 1)
            np.testing.assert_allclose(q[name + "_quantized"].astype(np.float32) * scale, w, rtol=0, atol=1e-6)
            checked += 1
    assert checked == 3


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 16)) @ rng.normal(size=(16, 16))
    w = rng.normal(size=(8, 16))
    s = np.abs(w).max(1, keepdims=True) / 127
    rtn = np.round(w / s) * s
    q = gptq_round(w, x)
    assert np.allclose(q / s, np.round(q / s)) and np.allclose(np.abs(q).max(1), np.abs(w).max(1))
    assert np.linalg.norm(x @ (q - w).T) < 0.9 * np.linalg.norm(x @ (rtn - w).T)


def test_prepared_int8_is_closer_to_fp32(sine_mlp, tmp_path):
    src, x, y = sine_mlp
    ref = _run(src, x)
    err = {}
    for prep in (False, True):
        quantize_int8_static(src, tmp_path / f"s{prep}.onnx", x, "input", float_first_layer=True, prepare=prep)
        quantize_int8_dynamic(src, tmp_path / f"d{prep}.onnx", True, calib_x=x if prep else None,
                              float_first_layer=prep)
        # exact int8 arithmetic (as on ARM / VNNI): this host's kernels may saturate (test_int8_arith.py)
        err[prep] = [float(np.sqrt(np.mean((exact_outputs(tmp_path / f"{k}{prep}.onnx", x) - ref) ** 2)))
                     for k in "sd"]
    assert err[True][0] < err[False][0] and err[True][1] < err[False][1], err


def test_dynamic_float_first_layer_leaves_the_input_unquantized(sine_mlp, tmp_path):
    src, x, _ = sine_mlp
    quantize_int8_dynamic(src, tmp_path / "d.onnx", True, float_first_layer=True)
    nodes = onnx.load(str(tmp_path / "d.onnx")).graph.node
    assert not [n for n in nodes if n.op_type == "DynamicQuantizeLinear" and "input" in n.input]
    assert [n.op_type for n in nodes if "input" in n.input] in (["Gemm"], ["MatMul"])  # float first layer
    assert sum(n.op_type == "MatMulInteger" for n in nodes) == 2


def test_float_last_layer_leaves_the_output_unquantized_and_closer_to_fp32(sine_mlp, tmp_path):
    """``float_last_layer``: no QuantizeLinear on the output in the static file, one MatMulInteger in the
    dynamic one (first and last float), and the static file's exact int8 output is closer to fp32."""
    src, x, _ = sine_mlp
    ref = _run(src, x)
    err = {}
    for last in (False, True):
        static = quantize_int8_static(src, tmp_path / f"s{last}.onnx", x, "input", float_first_layer=True,
                                      prepare=False, float_last_layer=last)
        g = onnx.load(str(static)).graph
        producer = {o: n for n in g.node for o in n.output}
        assert (producer[g.output[0].name].op_type == "DequantizeLinear") is not last
        err[last] = float(np.sqrt(np.mean((exact_outputs(static, x) - ref) ** 2)))
        dyn = quantize_int8_dynamic(src, tmp_path / f"d{last}.onnx", True, float_first_layer=True, float_last_layer=last)
        assert sum(n.op_type == "MatMulInteger" for n in onnx.load(str(dyn)).graph.node) == (1 if last else 2)
    assert err[True] < err[False], err


def test_non_chain_graph_is_copied_unchanged(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1)).eval()
    export_onnx(model, tmp_path / "c.onnx", (1, 8, 8))
    info = prepare_for_int8(tmp_path / "c.onnx", tmp_path / "p.onnx", np.zeros((4, 1, 8, 8), np.float32))
    assert not info["applied"]
    assert (tmp_path / "p.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


def test_compact_int8_ort_is_smaller_and_matches_the_onnx(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(),
                          nn.Linear(64, 1)).eval()
    x = np.random.default_rng(0).normal(size=(64, 1, 16, 16)).astype(np.float32)
    export_onnx(model, tmp_path / "m.onnx", (1, 16, 16))
    quantize_int8_static(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", x, "input", float_first_layer=True)
    sizes = {}
    for compact in (False, True):
        out = tmp_path / f"out{compact}"
        made, _ = ort_tools.convert_to_ort([tmp_path / "m.int8.onnx"], out, compact_qdq=compact)
        sizes[compact] = made["m.int8.onnx"].stat().st_size
        np.testing.assert_allclose(_run(made["m.int8.onnx"], x), _run(tmp_path / "m.int8.onnx", x), atol=1e-5)
    assert sizes[True] < sizes[False] - 1000, sizes


def test_a_two_layer_student_keeps_an_int8_layer(tmp_path):
    """float_first_layer + float_last_layer on a 1-8-1 MLP would leave nothing int8: the last layer
    then stays quantized (export and QAT agree)."""
    from models import TwoHeadStudent
    from models.mlp import MLP
    from pipeline import qat

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
    export_onnx(model, tmp_path / "m.onnx", (1,))
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(-1, 1)
    for path in (quantize_int8_static(tmp_path / "m.onnx", tmp_path / "s.onnx", x, "input", float_first_layer=True,
                                      prepare=False, float_last_layer=True),
                 quantize_int8_dynamic(tmp_path / "m.onnx", tmp_path / "d.onnx", True, float_first_layer=True,
                                       float_last_layer=True)):
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert "DequantizeLinear" in ops or "MatMulInteger" in ops, ops
    student = TwoHeadStudent(MLP((1,), [8]), 1)
    fq = qat.FakeQuant(student, "label", float_first_layer=True, float_last_layer=True)
    assert fq.points[-1] == (student.label_head, "out")  # the output stays on its 8-bit grid
    fq.remove()
