"""A MobileNetV3-Small student and a ResNet-18 teacher (both tiny widths) through every stage on the
pose task: real face crops, two outputs in their own units, every export format checked against
PyTorch, XNNPACK delegation measured, benched on the host and on emulated aarch64."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml

from tests.conftest import run_cli

TINY_POSE = {
    "seed": 0,
    "data": {"name": "pose", "image_size": 32, "n_train": 192, "n_val": 64, "n_test": 64,
             "pose": {"source": "faces", "channels": 1},
             "noise": {"sigma": 0.05, "outlier_fraction": 0.2, "outlier_low": -4.0, "outlier_high": 4.0}},
    "teacher": {"backbone": "resnet18", "width_mult": 0.25, "hidden": [], "loss": "l1",
                "train": {"epochs": 2, "patience": 2, "batch_size": 64}},
    "student": {"backbone": "mobilenet_v3_small", "width_mult": 0.25, "hidden": [], "max_param_ratio": 0.2},
    "distill": {"baselines": ["scratch"], "train": {"epochs": 2, "patience": 2, "batch_size": 64}},
    "export": {"android": {"enabled": False}},
    "bench": {"targets": ["host", "qemu-aarch64"], "warmup": 2, "runs": 10, "emulated_teacher_rows": 8},
}


@pytest.fixture(scope="module")
def pose_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pose")
    (d / "pose.yaml").write_text(yaml.safe_dump(TINY_POSE))
    proc = run_cli("run", "--config", d / "pose.yaml", "--out", d / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d / "run"


def test_split_by_face_and_outputs_in_their_units(pose_run):
    data = json.loads((pose_run / "data.json").read_text())
    assert data["input_shape"] == [1, 32, 32]
    rep = json.loads((pose_run / "report.json").read_text())
    row = next(r for r in rep["export"]["formats"] if r["model"] == "student" and r["format"] == "onnx_fp32")
    assert set(row["per_output"]) == {"roll (deg)", "log2_scale (log2)"}
    assert row["per_output"]["roll (deg)"]["rmse"] > row["per_output"]["log2_scale (log2)"]["rmse"]  # degrees vs log2


def test_every_format_checked_with_batch_norm_folded_and_relu6_rewrite(pose_run):
    exp = json.loads((pose_run / "export.json").read_text())
    rows = {r["format"]: r for r in exp["formats"] if r["model"] == "student"}
    assert len(rows) == 11 and all(r["status"] in ("ok", "over_limit") for r in rows.values()), rows
    scale = max(1.0, float(np.abs(np.load(pose_run / "data.npz")["y_clean_test"]).max()))
    for name in ("onnx_fp32", "ort_fp32", "tflite_fp32"):
        assert rows[name]["max_abs_diff_vs_torch"] <= 1e-4 * scale, rows[name]
    ops = {n.op_type for n in onnx.load(str(pose_run / "student.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "HardSwish" not in ops and "Clip" in ops
    assert exp["deploy_rewrites"]["student.pt"]["max_abs_diff"] <= 1e-5
    # hard-swish as ReLU6 arithmetic that the converter does not fold back into HARD_SWISH: the float
    # and full-integer TFLite files are one XNNPACK partition
    for name in ("tflite_fp32", "tflite_fp16", "tflite_int8_io"):
        assert rows[name]["xnnpack"]["fully_delegated"], rows[name]["xnnpack"]
    tflite_ops = {op for r in rows.values() if r["file"].endswith(".tflite") for op in r["tflite_ops"]}
    assert not tflite_ops & {"HARD_SWISH", "RELU_0_TO_1"}, tflite_ops
    # every TFLite file has TensorFlow's static GPU-delegate verdict; the float MobileNet passes it
    assert all(r["gpu_delegate"].split(":")[0].split(" (")[0] in ("compatible", "not compatible")
               for r in rows.values() if r["file"].endswith(".tflite")), rows
    assert rows["tflite_fp32"]["gpu_delegate"].startswith("compatible"), rows["tflite_fp32"]["gpu_delegate"]
    # NNAPI delegate rules: float MobileNetV3 from Android 9 (MEAN, PAD need NNAPI 1.1); the float-I/O int8
    # file, its MEANs kept float (export.int8.float_ops), from Android 11; in the full-integer file the
    # squeeze-excite MEANs, whose output grid is not their input's, are refused and split the graph
    for name in ("tflite_fp32", "tflite_fp16"):
        assert rows[name]["nnapi_delegate"]["summary"].endswith("nodes from API 28"), rows[name]["nnapi_delegate"]
    assert rows["tflite_int8"]["nnapi_delegate"]["summary"].endswith("nodes from API 30"), rows["tflite_int8"]
    at30 = rows["tflite_int8_io"]["nnapi_delegate"]["levels"]["30"]
    assert at30["refused"] and all(k.startswith("MEAN: ") for k in at30["refused"]), at30
    assert at30["partitions"] == 3 and at30["delegated"] < at30["nodes"], at30


def test_the_mobile_student_is_fine_tuned_quantization_aware(pose_run):
    rec = json.loads((pose_run / "student.json").read_text())["qat"]
    assert rec is not None and rec["weight_layers"] > 50 and rec["equalisation_alpha"] is None  # graph QAT
    assert len(rec["activation_ranges"]) > 100  # a grid per Conv / Add / Mul / mean, as in the QDQ file
    assert rec["val_loss_fake_quant_after"] <= rec["val_loss_fake_quant_before"]


def test_benched_on_emulated_arm_with_arm_verdicts(pose_run):
    arm = json.loads((pose_run / "bench" / "qemu-aarch64.json").read_text())
    students = {r["file"]: r for r in arm["results"] if r["model"] == "student"}
    assert students["student.int8.onnx"]["platform"]["machine"] == "aarch64"
    assert "rmse" in students["student.int8.onnx"] and "per_output" in students["student.int8.onnx"]
    rep = json.loads((pose_run / "report.json").read_text())
    judged = {v["file"]: v["judged_on"] for v in rep["verdicts"]}
    assert judged["student.int8.onnx"] == "qemu-aarch64 outputs (ARM)"
    md = (pose_run / "report.md").read_text()
    assert "XNNPACK nodes" in md


def _op_dtypes(path) -> list[tuple[str, str]]:
    """(op type, dtype of its output) of each operator of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    dtype = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    return [(op["op_name"], dtype[op["outputs"][0]]) for op in it._get_ops_details()]


def test_float_io_int8_tflite_keeps_mul_and_last_layer_float(pose_run):
    """export.int8.float_ops (MUL, MEAN) and float_last_layer: the float-I/O int8 file computes hard-swish /
    squeeze-excite products, the means and the last layer in float (selective quantization, still one XNNPACK
    partition); the int8-I/O file stays full-integer; and on real inputs the selective file is not
    worse than the full-integer one beyond noise. (That it is nearer the fp32 file is a benchmark
    claim, measured on the shipped config: 1.001x against 1.052x, benchmarks/pose.py; on this tiny
    student the two differ by a few percent either way with the training.)"""
    from device_bench.runner import load_model, predict_all

    mixed, full = _op_dtypes(pose_run / "student_int8.tflite"), _op_dtypes(pose_run / "student_int8_io.tflite")
    assert {d for op, d in mixed if op in ("MUL", "MEAN")} == {"float32"}
    assert [d for op, d in mixed if op == "FULLY_CONNECTED"][-1] == "float32"
    assert [d for op, d in mixed if op == "CONV_2D"][0] == "int8"  # the rest stays int8
    assert {d for op, d in full if op in ("MUL", "MEAN", "FULLY_CONNECTED", "CONV_2D")} == {"int8"}
    rows = {r["format"]: r for r in json.loads((pose_run / "export.json").read_text())["formats"]
            if r["model"] == "student"}
    assert rows["tflite_int8"]["xnnpack"]["fully_delegated"], rows["tflite_int8"]["xnnpack"]
    x = np.load(pose_run / "data.npz")["x_test"].astype(np.float32)
    ref = predict_all(load_model(str(pose_run / "student_fp32.tflite")), x)
    err = {name: float(np.sqrt(np.mean((predict_all(load_model(str(pose_run / name)), x) - ref) ** 2)))
           for name in ("student_int8.tflite", "student_int8_io.tflite")}
    assert 0 < err["student_int8.tflite"] <= 1.5 * err["student_int8_io.tflite"], err
