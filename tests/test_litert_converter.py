"""Issue 16, item 6: litert-torch as the second TFLite converter (``export.tflite.converter``).

The conversion tests need the optional extra (``pip install -e '.[litert]'``), which the test
install (``.[dev]``) leaves out: it adds ~850 MB (jax, jaxlib, transformers, litert-converter) and
needs an older typing_extensions than constraints.txt pins. Without it they are skipped with that
reason; the "not installed" tests run everywhere.
"""

import importlib.util

import numpy as np
import pytest
import torch

from export import ExportJob, export_all, litert
from export.formats import raise_on_strict
from models import TwoHeadStudent, build_backbone, drop_teacher_head
from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.errors import ParityError, UserError
from pipeline.preflight import check_tflite_converter
from pipeline.report.verdicts import count, file_verdicts

INSTALLED = not litert.missing()
needs_extra = pytest.mark.skipif(not INSTALLED, reason="litert-torch is not installed (optional extra: "
                                 "pip install -e '.[litert]'; not in .[dev], see the module docstring)")
TFLITE = ["tflite_fp32", "tflite_fp16", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]


@pytest.fixture(scope="module")
def toy():
    """The toy data set (sin regression) and a briefly trained MLP student, as the pipeline deploys it."""
    cfg = load_config(None, ["data.n_train=300", "data.n_val=50", "data.n_test=200",
                             "export.tflite.converter=litert_torch"])
    s = make_dataset(cfg.data, 0)
    torch.manual_seed(0)
    student = TwoHeadStudent(build_backbone("mlp", (1,), [16, 16]))
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    x, y = torch.as_tensor(s.x["train"]), torch.as_tensor(s.y_clean["train"])
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.mse_loss(student(x)[0], y).backward()
        opt.step()
    return cfg, s, drop_teacher_head(student).eval()


def _job(toy, out_dir, batch):
    cfg, s, model = toy
    return ExportJob(model=model, out_dir=out_dir, input_shape=(1,), x_eval=s.x["test"], y_eval=s.y_clean["test"],
                     x_calib=s.x["train"], y_calib=s.y["train"], cfg=cfg.export, batch=batch)


@needs_extra
def test_toy_student_converted_by_litert_torch_matches_pytorch(toy, tmp_path):
    rows = {r["format"]: r for r in export_all(_job(toy, tmp_path, 1), TFLITE)}
    fp32 = rows["tflite_fp32"]
    assert fp32["status"] == "ok" and fp32["max_abs_diff_vs_torch"] <= 1e-4, fp32.get("error")
    with torch.no_grad():  # the file itself, run here, against PyTorch
        from device_bench.runner import load_model, predict_all

        ref = toy[2](torch.as_tensor(toy[1].x["test"])).numpy()
        out = predict_all(load_model(str(tmp_path / fp32["file"])), toy[1].x["test"])
    assert np.abs(out - ref).max() <= 1e-4
    for name in TFLITE:
        r = rows[name]
        assert r["status"] in ("ok", "over_limit"), (name, r.get("error"))
        assert r["builtin_ops_only"] and r["n_outputs"] == 1 and r["batch"] == 1
        assert r["xnnpack"]["nodes"] >= 1
    assert rows["tflite_int8"]["io"]["input"]["dtype"] == "float32"  # int8 compute, float I/O
    assert rows["tflite_int8_io"]["io"]["input"]["dtype"] == "int8"
    assert rows["tflite_int8"]["rmse_ratio_vs_torch"] < 1.5
    assert "DEQUANTIZE" in rows["tflite_fp16"]["tflite_ops"]  # float16 weights, widened at load


@needs_extra
def test_a_parity_failure_stops_the_export(toy, tmp_path):
    """The litert files go through the same strict check as onnx2tf's: a file that does not match
    PyTorch is a failed row and a ParityError, not a quiet number."""
    job = _job(toy, tmp_path, 1)
    job.torch_outputs = job.torch_outputs + 1e-3  # what the file is compared with is off by 10x parity_atol
    with pytest.raises(ParityError, match="tflite_fp32"):
        export_all(job, ["tflite_fp32"])


def test_dynamic_batch_is_a_not_supported_row_not_a_failure(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(litert, "missing", lambda: [])  # the row says why whether or not the extra is there
    rows = export_all(_job(toy, tmp_path, None), ["tflite_fp32", "tflite_int8"])
    for r in rows:
        assert r["status"] == "not_supported" and "file" not in r
        assert r["error"].startswith("not supported by litert_torch: no dynamic batch axis"), r["error"]
    raise_on_strict(rows)  # a strict row the converter cannot make is not a parity failure
    verdicts = file_verdicts({"formats": [{**r, "model": "student"} for r in rows]}, {}, {"rmse": 1.0})
    assert [v["status"] for v in verdicts] == ["not_supported", "not_supported"]
    assert not any(count(verdicts).values())  # --strict does not count them


def test_not_installed_is_one_user_error(toy, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a))
    with pytest.raises(UserError, match=r"^export.tflite.converter is litert_torch but litert_torch (and \w+ )?"
                                        r"(is|are) not installed: pip install -e '\.\[litert\]'"):
        check_tflite_converter(toy[0])
    check_tflite_converter(load_config(None, []))  # onnx2tf (the default) needs nothing more
    only_onnx = load_config(None, ["export.tflite.converter=litert_torch", "export.formats=[onnx_fp32]",
                                   "export.android.enabled=false"])
    check_tflite_converter(only_onnx)  # no TFLite file asked for: nothing to convert
