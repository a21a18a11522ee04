"""Quantization-aware fine-tuning of the reference image backbones (``pipeline.qat_graph``): the grids
sit where ONNX Runtime's QDQ quantizer puts them on the exported file, batch norm stays frozen and
folds onto the trained int8 grid, and the student comes back as the original architecture."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from export.onnx_export import export_onnx
from export.quantize import quantize_int8_static
from models import TwoHeadStudent, drop_teacher_head
from models.backbones import ImageBackbone
from models.deploy import mobile_friendly
from pipeline.qat_graph import GraphFakeQuant
from pipeline.qat_scheme import weight_scale
from tests.conftest import torch_threads

SHAPE = (1, 32, 32)


@pytest.fixture(autouse=True)
def two_threads():
    with torch_threads(2):
        yield


def trained_student(arch: str, steps: int = 20) -> tuple[TwoHeadStudent, np.ndarray]:
    """A tiny two-head student after a few real training steps (batch-norm statistics away from 0 / 1)."""
    torch.manual_seed(0)
    student = TwoHeadStudent(ImageBackbone(arch, SHAPE, width_mult=0.25), 2)
    x = np.random.default_rng(0).normal(size=(96, *SHAPE)).astype(np.float32)
    target = torch.as_tensor(np.stack([x.mean((1, 2, 3)), x[:, 0, :16].mean((1, 2))], 1))
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    student.train()
    for i in range(steps):
        b = slice(i * 16 % 96, i * 16 % 96 + 16)
        label, teacher = student(torch.as_tensor(x[b]))
        loss = ((label - target[b]) ** 2).mean() + ((teacher - target[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval(), x


def file_grids(path, x: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """(scale, dequantized value on ``x``) of every activation QuantizeLinear of a QDQ file, run literally."""
    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    quant = {n.output[0]: float(inits[n.input[1]]) for n in g.node
             if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    deq = [(quant[n.input[0]], n.output[0]) for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in quant]
    for _, name in deq:
        g.output.append(onnx.helper.make_value_info(name, onnx.TypeProto()))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    values = sess.run(None, {sess.get_inputs()[0].name: x})[1:]
    return [(scale, v) for (scale, _), v in zip(deq, values)]


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0"])
def test_grids_are_where_and_what_orts_qdq_quantizer_makes_them(arch, tmp_path):
    student, x = trained_student(arch)
    fq = GraphFakeQuant(student, x, "label", float_first_layer=True, float_last_layer=True)
    fq.calibrate(x)
    fq.remove()  # snapped weights: the float model the exporter sees
    f32 = export_onnx(mobile_friendly(drop_teacher_head(student).eval()), tmp_path / "s.onnx", SHAPE)
    q8 = quantize_int8_static(f32, tmp_path / "s.int8.onnx", x, "input", float_first_layer=True, prepare=False,
                              float_last_layer=True)
    # the same weights, grids re-attached: torch's value at every grid
    fq = GraphFakeQuant(student, x, "label", float_first_layer=True, float_last_layer=True)
    fq.calibrate(x)
    seen: dict[int, list] = {}
    hooks = [g.register_forward_hook(lambda _m, _i, out, k=k: seen.setdefault(k, []).append(out.detach().numpy()))
             for k, g in enumerate(fq.grids)]
    with torch.no_grad():
        student(torch.as_tensor(x[:16]))
    for h in hooks:
        h.remove()
    ours = [(g.qparams[0], seen[k][0]) for k, g in enumerate(fq.grids)]
    theirs = file_grids(q8, x[:16])
    assert len(theirs) > 40
    for k, (scale, value) in enumerate(theirs):  # every grid of the file is one of ours: same range, same size
        match = [v.ravel() for s, v in ours if abs(s - scale) <= 1e-6 * scale and v.size == value.size]
        assert match, (k, scale, value.shape)
        if k < 8:  # the same values, but for float-rounding ties a step apart (which then spread layer by layer)
            diff = [np.abs(v - value.ravel()) for v in match]
            assert min(float(np.mean(d > 1e-6 * max(1.0, scale))) for d in diff) < 0.1, (k, value.shape)
            assert min(float(np.mean(d > 1.01 * scale)) for d in diff) < 0.02, (k, value.shape)
    # and no grid the file lacks, except on pools the exporter drops (a mean over 1x1: the identity); the
    # file re-quantizes the flattened features once (Reshape) on the grid before it
    pools = sum(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in student.modules())
    assert len(theirs) - 1 <= len(ours) <= len(theirs) + pools


def test_batch_norm_is_frozen_and_the_student_comes_back_on_the_int8_grid():
    student, x = trained_student("mobilenet_v3_small")
    keys = set(student.state_dict())
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    fq = GraphFakeQuant(student, x, "label", float_first_layer=True, float_last_layer=True)
    fq.calibrate(x)
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    student.train()
    for i in range(3):
        label, teacher = student(torch.as_tensor(x[i * 16:(i + 1) * 16]))
        loss = (label ** 2).mean() + (teacher ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fq.remove()
    assert isinstance(student.backbone, ImageBackbone) and set(student.state_dict()) == keys
    for k, v in stats.items():  # trained in train mode, yet the running statistics did not move
        assert torch.equal(student.state_dict()[k], v), k
    convs = [m for m in student.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    for m in convs[1:] + [student.label_head]:  # the first layer stays float
        q = m.weight.detach() / weight_scale(m.weight).reshape(-1, *[1] * (m.weight.dim() - 1))
        assert torch.allclose(q, torch.round(q), atol=1e-4)
    q0 = convs[0].weight.detach() / weight_scale(convs[0].weight).reshape(-1, 1, 1, 1)
    assert (q0 - torch.round(q0)).abs().max() > 1e-3
    off = student.teacher_head.weight.detach() / weight_scale(student.teacher_head.weight)[:, None]
    assert (off - torch.round(off)).abs().max() > 1e-3  # the teacher head is not deployed: float
