"""Quantization-aware fine-tuning (pipeline/qat.py): the fake quantization is the QDQ file's
arithmetic, the snapped weights are ORT's own int8 weights, QAT lowers the exact-QDQ int8 error,
and the two-head method loss (teacher head included) is what is minimised.

int8 outputs are judged with an ORT session without graph optimizations: the QDQ graph then runs
QuantizeLinear / DequantizeLinear and float ops literally (exact QDQ semantics), independent of the
host's int8 kernels (which saturate on x86 without VNNI)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.onnx_export import export_onnx
from export.quantize import quantize_int8_static
from models import TwoHeadStudent, drop_teacher_head
from models.cnn import CNN
from models.mlp import MLP
from pipeline import qat
from pipeline.qat_scheme import weight_scale
from tests.conftest import torch_threads
from pipeline.config import Config


@pytest.fixture(autouse=True)
def one_thread():
    """Models of a few thousand weights: extra threads only add overhead (and contention on CI)."""
    with torch_threads(1):
        yield


def exact_qdq(path: Path, x: np.ndarray) -> np.ndarray:
    """The QDQ file's exact int8 arithmetic (unfused, as ARM computes it): ``export.int8_arith``."""
    from export.int8_arith import exact_outputs

    return exact_outputs(path, x)


def int8_file(student: TwoHeadStudent, x_cal: np.ndarray, directory: Path, shape, first_float=True,
              prepare=False, last_float=False) -> Path:
    fp32 = export_onnx(drop_teacher_head(student), directory / "s.onnx", shape)
    return quantize_int8_static(fp32, directory / "s.int8.onnx", x_cal, "input", float_first_layer=first_float,
                                prepare=prepare, float_last_layer=last_float)


@pytest.mark.parametrize("kind,last_float", [("mlp", False), ("cnn", False), ("mlp", True), ("cnn", True)])
def test_fake_quant_is_the_qdq_files_arithmetic(kind, last_float, tmp_path):
    torch.manual_seed(0)
    shape = (1,) if kind == "mlp" else (1, 8, 8)
    backbone = MLP(shape, [16, 16]) if kind == "mlp" else CNN(shape, [16], channels=[4, 8])
    student = TwoHeadStudent(backbone, 1).eval()
    x = np.random.default_rng(0).normal(size=(256, *shape)).astype(np.float32)
    fq = qat.FakeQuant(student, "label", float_first_layer=True, float_last_layer=last_float)
    fq.calibrate(x)
    with torch.no_grad():
        simulated = student(torch.as_tensor(x))[0].numpy()
    out_step = fq.qparams[-1][0]  # with a float last layer: the step of its (quantized) input
    assert (fq.points[-1][1] == "out" and fq.points[-1][0] is student.label_head) is not last_float
    fq.remove()  # snapped weights: the float model the exporter sees
    got = exact_qdq(int8_file(student, x, tmp_path, shape, last_float=last_float), x)
    # the same grids and weights; only the int32 bias rounding of the QDQ file can move an output by one step
    assert np.abs(got - simulated).max() <= out_step * 1.001
    assert np.mean(np.abs(got - simulated) > 1e-6) < 0.05


def test_snapped_weights_are_reproduced_exactly_by_orts_per_channel_quantizer(tmp_path):
    torch.manual_seed(1)
    student = TwoHeadStudent(MLP((3,), [16, 16]), 2).eval()
    x = np.random.default_rng(1).normal(size=(128, 3)).astype(np.float32)
    fq = qat.FakeQuant(student, "label", float_first_layer=False)
    fq.calibrate(x)
    fq.remove()
    snapped = {n: p.detach().numpy() for n, p in drop_teacher_head(student).named_parameters() if n.endswith("weight")}
    q = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(int8_file(student, x, tmp_path, (3,), False))).graph.initializer}
    for name, w in snapped.items():
        scale = q[name + "_scale"].reshape(-1, 1)
        ints = q[name + "_quantized"].astype(np.int64)
        np.testing.assert_array_equal(ints, np.round(w / weight_scale(torch.as_tensor(w)).numpy()[:, None]))
        np.testing.assert_allclose(ints * scale, w, rtol=1e-6, atol=0)  # no further rounding by the converter
    assert len(snapped) == 3


def _sine_student(seed=0):
    """A 1-32-32 two-head student fitted to sin(2x) on both heads (labels and 'teacher' agree)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (1200, 1)).astype(np.float32)
    x /= x.std()
    y = np.sin(2 * x * np.pi / np.abs(x).max()).astype(np.float32)
    student = TwoHeadStudent(MLP((1,), [32, 32]), 1)
    opt = torch.optim.Adam(student.parameters(), 0.01)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(600):
        a, b = student(xt)
        loss = ((a - yt) ** 2).mean() + ((b - yt) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return student.eval(), x, y


def _qat(student, x, y, method="tor_mt", epochs=8, lr=3e-4):
    cfg = Config.model_validate({"distill": {"method": method, "baselines": [], "train": {"batch_size": 64}},
                                 "qat": {"epochs": epochs, "lr": lr}, "export": {"int8": {"calibration_samples": 512}}})
    splits = SimpleNamespace(x={"train": x[:1000], "val": x[1000:]}, y={"train": y[:1000], "val": y[1000:]},
                             task="regression")
    return qat.qat_finetune(cfg, splits, {"train": y[:1000], "val": y[1000:]}, student)


def test_qat_lowers_the_exact_qdq_int8_error_below_ptq(tmp_path):
    student, x, y = _sine_student()
    x_cal = x[:512]
    with torch.no_grad():
        ref_ptq = drop_teacher_head(student)(torch.as_tensor(x)).numpy()
    (tmp_path / "ptq").mkdir()
    ptq = exact_qdq(int8_file(student, x_cal, tmp_path / "ptq", (1,)), x)
    rec = _qat(student, x, y)
    assert rec["epochs"] == 8 and rec["calibration_rows"] == 512
    (tmp_path / "qat").mkdir()
    after = exact_qdq(int8_file(student, x_cal, tmp_path / "qat", (1,)), x)
    err_ptq = float(np.sqrt(np.mean((ptq - y) ** 2)))
    err_qat = float(np.sqrt(np.mean((after - y) ** 2)))
    err_fp32 = float(np.sqrt(np.mean((ref_ptq - y) ** 2)))
    assert err_qat < err_ptq, (err_fp32, err_ptq, err_qat)


def test_the_method_loss_trains_both_heads_and_the_teacher_head_stays_float():
    student, x, y = _sine_student(1)
    before = copy.deepcopy(student)
    fq = qat.FakeQuant(student, "label", float_first_layer=True)
    fq.calibrate(x[:512])
    label_out, teacher_out = student(torch.as_tensor(x[:64]))
    loss = ((label_out - torch.as_tensor(y[:64])) ** 2).mean() + ((teacher_out - torch.as_tensor(y[:64])) ** 2).mean()
    loss.backward()
    assert student.teacher_head.weight.grad.abs().sum() > 0  # the teacher head supervises the quantized backbone
    assert student.backbone.net[2].parametrizations.weight.original.grad.abs().sum() > 0  # STE passes gradient
    fq.remove()
    student.zero_grad()
    _qat(student, x, y, epochs=3, lr=1e-3)
    assert not torch.equal(student.teacher_head.weight, before.teacher_head.weight)  # trained by the method loss
    w = student.teacher_head.weight.detach()
    off_grid = (w / weight_scale(w)[:, None] - torch.round(w / weight_scale(w)[:, None])).abs().max()
    assert off_grid > 1e-3  # float: not part of the deployed path
    for layer in (student.backbone.net[2], student.label_head):
        q = layer.weight.detach() / weight_scale(layer.weight)[:, None]
        assert torch.allclose(q, torch.round(q), atol=1e-4)  # deployed path: on the int8 grid


def test_the_benchmarks_grid_costs_decompose_the_int8_files_error(tmp_path):
    """benchmarks/qat.py's last column: with every grid, the fake-quantized student's RMSE over its float
    RMSE is the static QDQ file's (exact arithmetic) over the same float RMSE; one entry per grid; the
    student it is given is left as it was."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from qat import grid_costs  # benchmarks/qat.py

    from pipeline.metrics import rmse

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    student = TwoHeadStudent(MLP((1,), [16, 16]), 1).eval()
    x = {s: rng.uniform(-3, 3, size=(n, 1)).astype(np.float32) for s, n in (("train", 400), ("test", 300))}
    y_test = np.sin(x["test"]).astype(np.float32)
    splits = SimpleNamespace(x=x, y={"train": np.sin(x["train"])}, y_clean={"test": y_test}, task="regression")
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)  # fit sin well enough that 8-bit grids show
    xt, yt = torch.as_tensor(x["train"]), torch.as_tensor(splits.y["train"])
    for _ in range(400):
        opt.zero_grad()
        torch.nn.functional.mse_loss(student(xt)[0], yt).backward()
        opt.step()
    student.eval()
    cfg = Config.model_validate({"export": {"int8": {"calibration_samples": 128}}})
    before = copy.deepcopy(student.state_dict())
    got = grid_costs(cfg, splits, student)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    fq = qat.FakeQuant(copy.deepcopy(student), "label", True, cfg.export.int8.float_last_layer)
    assert len(got["alone"]) == len(fq.grids) == 2  # the two hidden ReLU outputs (first and last layer float)
    fq.remove()  # the float model the exporter sees: weights snapped onto their int8 grid
    with torch.no_grad():
        float_rmse = rmse(fq.student(torch.as_tensor(x["test"]))[0].numpy(), y_test)
    x_cal = qat.calibration_rows(cfg, x["train"], splits.y["train"])
    path = int8_file(fq.student, x_cal, tmp_path, (1,), last_float=cfg.export.int8.float_last_layer)
    file_ratio = rmse(exact_qdq(path, x["test"]), y_test) / float_rmse
    assert file_ratio > 1.0005  # the grids cost something measurable here
    # equal up to the QDQ file's int32 bias rounding (a step on < 1 % of outputs; see the test above)
    assert got["fake_quant"] == pytest.approx(file_ratio, rel=1e-2)
    assert max(got["alone"]) < got["fake_quant"]  # each grid alone costs less than both together


def test_unsupported_activation_is_refused():
    student = TwoHeadStudent(MLP((1,), [8], activation="gelu"), 1)
    with pytest.raises(ValueError, match="GELU"):
        qat.FakeQuant(student)


def test_the_student_stage_cache_follows_the_qat_config_and_calibration():
    from pipeline.stages import STAGES

    slices = {s.name: s.config for s in STAGES}

    def h(cfg, stage):
        return cfg.section_hash(*slices[stage])

    base = Config()
    lr = Config.model_validate({"qat": {"lr": 1e-4}})
    calib = Config.model_validate({"export": {"int8": {"calibration_samples": 100}}})
    opset = Config.model_validate({"export": {"opset": 17}})
    assert h(lr, "student") != h(base, "student") and h(lr, "export") != h(base, "export")
    assert h(lr, "distill") == h(base, "distill")  # changing QAT does not retrain the distilled student
    assert h(calib, "student") != h(base, "student")  # QAT calibrates on the export's sample
    assert h(opset, "student") == h(base, "student")


@pytest.mark.parametrize("enabled", [True, False])
def test_export_skips_the_weight_preparation_and_calibrates_on_the_qat_sample(enabled, tmp_path, monkeypatch):
    import json

    from pipeline.checkpoints import build_deployed, build_teacher, save_model
    from pipeline.data import make_dataset
    from pipeline.stages import export as export_stage
    from pipeline.stages.export import export_student

    cfg = Config.model_validate({"data": {"n_train": 300, "n_val": 50, "n_test": 50},
                                 "export": {"int8": {"calibration_samples": 100}}, "qat": {"enabled": enabled}})
    splits = make_dataset(cfg.data, cfg.seed)
    splits.save(tmp_path / "data.npz")
    save_model(tmp_path / "student.pt", build_deployed(cfg, (1,), 1), "deployed", (1,), 1)
    save_model(tmp_path / "teacher.pt", build_teacher(cfg, (1,), 1), "teacher", (1,), 1)
    (tmp_path / "teacher.json").write_text(json.dumps({"model_file": "teacher.pt"}))
    seen = []
    monkeypatch.setattr(export_stage, "export_rows", lambda job, names: seen.append(job) or [])
    export_student(cfg, tmp_path, tmp_path / "out", ["onnx_int8"], android=False)
    student = seen[0]
    assert student.cfg.int8.prepare is (not enabled)  # a QAT'd student is exported as it is
    np.testing.assert_array_equal(student.calib, qat.calibration_rows(cfg, splits.x["train"], splits.y["train"]))


def test_qat_is_on_by_default_for_relu_mlp_and_cnn_students_and_image_backbones():
    assert qat.applies(Config())
    assert qat.applies(Config.model_validate({"student": {"backbone": "mobilenet_v3_small"},
                                              "data": {"name": "pose", "image_size": 32}}))
    assert qat.applies(Config.model_validate({"student": {"backbone": "cnn"}, "data": {"name": "digits_rotation"}}))
    assert not qat.applies(Config.model_validate({"student": {"activation": "gelu"}}))
    assert not qat.applies(Config.model_validate({"qat": {"enabled": False}}))
