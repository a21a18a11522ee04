"""Issue 3: every format row for an MLP and a CNN student, the Android bundle, damaged files."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from device_bench.runner import load_model as load_runtime
from export import FORMATS, ExportJob, export_all
from export.android import verify_bundle, write_bundle
from export.onnx_export import read_metadata
from export.tflite import read_embedded_metadata
from models import TwoHeadStudent, build_backbone, drop_teacher_head
from pipeline.config import ALL_FORMATS, load_config
from pipeline.data import make_dataset
from pipeline.errors import UserError


def _fit(student, x, y, steps=150):
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(student(xt)[0], yt).backward()
        opt.step()
    return drop_teacher_head(student)


@pytest.fixture(scope="module")
def mlp_case():
    cfg = load_config(None, ["data.n_train=300", "data.n_val=50", "data.n_test=100"])
    s = make_dataset(cfg.data, 0)
    torch.manual_seed(0)
    model = _fit(TwoHeadStudent(build_backbone("mlp", (1,), [16, 16])), s.x["train"], s.y_clean["train"])
    return cfg, s, model, (1,)


@pytest.fixture(scope="module")
def cnn_case():
    cfg = load_config("configs/digits_rotation.yaml", ["data.n_train=300", "data.n_val=50", "data.n_test=100"])
    s = make_dataset(cfg.data, 0)
    torch.manual_seed(0)
    shape = (1, cfg.data.image_size, cfg.data.image_size)
    backbone = build_backbone("cnn", shape, cfg.student.hidden, channels=cfg.student.channels)
    model = _fit(TwoHeadStudent(backbone), s.x["train"], s.y_clean["train"] / 45.0)
    return cfg, s, model, shape


def _job(case, out_dir, batch=None):
    cfg, s, model, shape = case
    return ExportJob(model=model, out_dir=out_dir, input_shape=shape, x_eval=s.x["test"], y_eval=s.y_clean["test"],
                     x_calib=s.x["train"], cfg=cfg.export, metadata={"producer": "pocketkd-test"}, batch=batch)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def exported(request, tmp_path_factory):
    case = request.getfixturevalue(f"{request.param}_case")
    out = tmp_path_factory.mktemp(request.param)
    rows = export_all(_job(case, out), list(ALL_FORMATS))
    return request.param, case, out, {r["format"]: r for r in rows}


def test_every_format_row_is_written_checked_and_has_one_output(exported):
    kind, _, out, rows = exported
    assert set(rows) == set(ALL_FORMATS) == set(FORMATS)
    for name, r in rows.items():
        assert r["status"] in ("ok", "over_limit"), (kind, name, r.get("error"))
        assert (out / r["file"]).stat().st_size == r["size_bytes"] > 0
        assert r["n_outputs"] == 1
        if FORMATS[name].strict:
            assert r["max_abs_diff_vs_torch"] <= 1e-4, (kind, name)
        else:
            assert 0 < r["max_abs_diff_vs_torch"] < 5 and "rmse_ratio_limit" in r
    for name in ("tflite_fp32", "tflite_fp16", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"):
        assert rows[name]["builtin_ops_only"] is True, rows[name]["tflite_ops"]
    for name in ("onnx_fp32", "onnx_fp16", "onnx_int8", "onnx_int8_dynamic"):
        assert set(rows[name]["mobile_usability"]) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram"}
    assert (out / "required_operators.config").read_text().count("ai.onnx;") >= 1


def test_layouts_are_recorded_per_file(exported):
    kind, _, _, rows = exported
    onnx_layout = rows["onnx_fp32"]["io"]["input"]["layout"]
    tfl_layout = rows["tflite_fp32"]["io"]["input"]["layout"]
    if kind == "cnn":
        assert (onnx_layout, tfl_layout) == ("NCHW", "NHWC")
        assert rows["onnx_fp32"]["io"]["input"]["shape"][1:] == [1, 16, 16]
        assert rows["tflite_fp32"]["io"]["input"]["shape"][1:] == [16, 16, 1]
    else:
        assert onnx_layout == tfl_layout == "NC"
    q = rows["tflite_int8_io"]["io"]
    assert q["input"]["dtype"] == "int8" and q["input"]["quantization"]["scale"] > 0
    assert q["output"]["dtype"] == "int8" and "zero_point" in q["output"]["quantization"]


def test_int8_input_files_report_what_rounding_the_input_alone_costs(exported):
    kind, case, out, rows = exported
    _, s, model, _ = case
    grid = rows["tflite_int8_io"]["input_rounding"]
    assert grid["scale"] == pytest.approx(rows["tflite_int8_io"]["io"]["input"]["quantization"]["scale"])
    assert (grid["dtype"], grid["min"], grid["max"]) == ("int8", -128, 127)
    # the float-I/O full-integer file quantizes its input inside the graph, to the same grid
    assert rows["tflite_int8"]["input_rounding"]["scale"] == pytest.approx(grid["scale"])
    for name in ("tflite_fp32", "tflite_dynamic_range", "onnx_int8", "ort_int8"):
        assert "input_rounding" not in rows[name]
    # the diagnostic is what it says: the int8 file's outputs are nearer the PyTorch student on the
    # rounded inputs than on the exact ones (for the 1-D toy, input rounding is most of the int8 error)
    x = s.x["test"].astype(np.float32)
    xq = ((np.clip(np.round(x / grid["scale"]) + grid["zero_point"], -128, 127) - grid["zero_point"])
          * grid["scale"]).astype(np.float32)
    with torch.no_grad():
        exact, rounded = model(torch.from_numpy(x)).numpy(), model(torch.from_numpy(xq)).numpy()
    assert np.abs(rounded - exact).max() > 0
    from device_bench.runner import predict_all

    got = predict_all(load_runtime(str(out / rows["tflite_int8_io"]["file"])), x)
    y = s.y_clean["test"]
    assert grid["rmse"] == pytest.approx(float(np.sqrt(np.mean((rounded - y) ** 2))), rel=1e-5)
    if kind == "mlp":
        assert np.abs(got - rounded).mean() < np.abs(got - exact).mean()


def test_quantized_files_are_really_smaller_for_the_cnn(exported):
    kind, _, _, rows = exported
    if kind != "cnn":
        pytest.skip("size ratio is a CNN target (an MLP this small is dominated by graph overhead)")
    fp32 = rows["tflite_fp32"]["size_bytes"]
    assert rows["tflite_int8"]["size_bytes"] < fp32 / 2
    assert rows["onnx_int8"]["size_bytes"] < rows["onnx_fp32"]["size_bytes"]


def test_android_bundle_fixed_shapes_metadata_and_hashes(mlp_case, cnn_case, tmp_path):
    for case in (mlp_case, cnn_case):
        cfg = case[0]
        bundle = tmp_path / cfg.data.name
        rows = export_all(_job(case, bundle, batch=1), cfg.export.bundle_formats())
        meta = {"batch": 1, "task": "test", "input_layout": "NCHW" if len(case[3]) == 3 else "NC",
                "input_normalization": {"mean": case[1].x_mean.tolist(), "std": case[1].x_std.tolist()},
                "output_meaning": "angle", "kept_head": "label", "config_hash": "abc",
                "output_columns": [{"name": "angle", "unit": "deg", "meaning": "rotation"}],
                "input_shape": [1, *case[3]]}
        written = write_bundle(bundle, rows, meta)
        assert verify_bundle(bundle) == []
        for f in written["files"]:
            assert f["io"]["input"]["shape"][0] == 1  # fixed batch, NNAPI can take it
        by = {f["format"]: f for f in written["files"]}
        assert by["onnx_fp32"]["mobile_usability"]["nnapi"] == "YES"
        assert by["onnx_int8"]["mobile_usability"]["nnapi"] == "YES"
        embedded = json.loads(read_metadata(bundle / "student.onnx")["pocketkd_metadata"])
        assert embedded["input_normalization"]["mean"] == meta["input_normalization"]["mean"]
        assert read_embedded_metadata(bundle / "student_fp32.tflite")["format"] == "tflite_fp32"
        # the files still load and run after metadata was embedded
        for name in ("student.onnx", "student_fp32.tflite", "student.ort"):
            m = load_runtime(str(bundle / name))
            x = case[1].x["test"][:1]
            assert np.isfinite(m(x)).all()
        readme = (bundle / "README.md").read_text()
        kotlin = {p.name: p.read_text() for p in (bundle / "kotlin").glob("*.kt")}
        assert "import ai.onnxruntime.OrtSession" in kotlin["StudentOrt.kt"]
        assert "import org.tensorflow.lite.Interpreter" in kotlin["StudentInterpreter.kt"]
        assert "import com.google.ai.edge.litert.CompiledModel" in kotlin["StudentLiteRt.kt"]
        assert "student.ort" in readme and f"{case[1].x_std[0]:.9g}f" in kotlin["StudentModel.kt"]


def test_a_damaged_bundle_file_is_detected(mlp_case, tmp_path):
    bundle = tmp_path / "b"
    rows = export_all(_job(mlp_case, bundle, batch=1), ["onnx_fp32", "tflite_fp32"])
    write_bundle(bundle, rows, {"batch": 1, "task": "t", "input_layout": "NC", "output_meaning": "y",
                                "input_normalization": {"mean": [0.0], "std": [1.0]}, "kept_head": "label",
                                "input_shape": [1, 1], "output_columns": [{"name": "y", "unit": "u", "meaning": "y"}]})
    data = (bundle / "student.onnx").read_bytes()
    (bundle / "student.onnx").write_bytes(data[: len(data) // 2])
    (bundle / "student_fp32.tflite").unlink()
    problems = verify_bundle(bundle)
    assert any("student.onnx: sha256 does not match" in p for p in problems)
    assert any("student_fp32.tflite: missing" in p for p in problems)


def test_truncated_model_files_give_clear_errors(mlp_case, tmp_path):
    from pipeline.checkpoints import load_checkpoint, save_model

    cfg, s, model, shape = mlp_case
    good = tmp_path / "student.pt"
    save_model(good, model, "teacher", shape, 1)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(UserError, match="bad.pt is damaged"):
        load_checkpoint(bad, cfg)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", cfg)
    # a truncated ONNX file is refused by onnxruntime with an error naming the problem
    rows = export_all(_job(mlp_case, tmp_path / "e"), ["onnx_fp32"])
    onnx_file = tmp_path / "e" / rows[0]["file"]
    onnx_file.write_bytes(onnx_file.read_bytes()[:-40])
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        load_runtime(str(onnx_file))
    shutil.rmtree(tmp_path / "e")


def test_export_cli_reexports_without_training(e2e_run, tmp_path):
    from tests.conftest import run_cli

    out, _ = e2e_run
    proc = run_cli("export", "--run", out, "--formats", "onnx_fp32", "tflite_fp32", "--out", tmp_path / "x",
                   "--no-android")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "x" / "export.json").read_text())["formats"]
    assert [r["format"] for r in rows if r["model"] == "student"] == ["onnx_fp32", "tflite_fp32"]
    onnx.checker.check_model(str(tmp_path / "x" / "student.onnx"))
    proc = run_cli("export", "--run", out, "--formats", "nope")
    assert proc.returncode == 2 and "unknown format 'nope'" in proc.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "student.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("export", "--run", damaged, "--formats", "onnx_fp32", "--no-android")
    # the manifest notices the edited file before anything is loaded: one line naming it and the fix
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "student.pt differs from what stage 'student' wrote" in proc.stderr and "--from student" in proc.stderr
