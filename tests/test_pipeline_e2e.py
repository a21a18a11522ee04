"""End to end: the real CLI on a reduced config, through every stage, then what it produced."""

import json
import os

import numpy as np
import onnx
import pytest

from pipeline.io import sha256_file
from tests.conftest import run_cli

STUDENT_FILES = ["student.onnx", "student.fp16.onnx", "student.int8.onnx", "student.int8_dynamic.onnx",
                 "student.ort", "student.int8.ort", "student_fp32.tflite", "student_fp16.tflite",
                 "student_dynamic_range.tflite", "student_int8.tflite", "student_int8_io.tflite",
                 "android/student.onnx", "android/student.ort", "android/student_int8_io.tflite",
                 "android/metadata.json", "android/README.md", "android/required_operators.config"]


def test_run_produces_every_artifact(e2e_run):
    out, proc = e2e_run
    for name in ["config.yaml", "manifest.json", "data.npz", "teacher.pt", "student_mt.pt", "student.pt",
                 "teacher.onnx", *STUDENT_FILES, "export.json", "bench/host.json", "report.json", "report.md",
                 "report.html", "plots/fit.png", "plots/learning_curves.png", "plots/latency.png",
                 "baselines/scratch.pt", "baselines/kd.pt"]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "report:" in proc.stdout and "student tor_mt student.int8.onnx" in proc.stdout


def test_manifest_hashes_match_files(e2e_run):
    out, _ = e2e_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"data", "teacher", "distill", "student", "export", "bench", "report"}
    for rel, info in manifest["files"].items():
        assert sha256_file(out / rel) == info["sha256"], rel


def test_every_export_was_checked_against_pytorch(e2e_run):
    out, _ = e2e_run
    rows = json.loads((out / "export.json").read_text())["formats"]
    by = {(r["model"], r["format"]): r for r in rows}
    assert set(by) >= {("student", f) for f in ("onnx_fp32", "onnx_int8", "tflite_fp32", "tflite_fp16")}
    for (model, fmt), r in by.items():
        assert r["status"] in ("ok", "over_limit"), r
        assert r["n_outputs"] == 1
        assert r["non_finite_outputs"] == 0
        if r["file"].endswith(".onnx"):  # onnx.checker.check_model(full_check=True), e.g. fp16 nodes sorted
            assert r["onnx_checker"] == "ok", r
        if r["file"].endswith(".tflite"):  # TensorFlow's own interpreter loads it too, not only LiteRT
            assert r["tensorflow_interpreter"] == "ok", r
            # TensorFlow's static GPU-delegate check: an MLP of FULLY_CONNECTED / RELU (+ quantize ops) passes
            assert r["gpu_delegate"].startswith("compatible (static check, TensorFlow 2."), r
            # TensorFlow Lite's NNAPI delegate rules at Android API 27-30 (export/nnapi.py)
            assert set(r["nnapi_delegate"]["levels"]) == {"27", "28", "29", "30"}, r
        if fmt.endswith("fp32"):
            assert r["max_abs_diff_vs_torch"] <= 1e-4
    # FULLY_CONNECTED and RESHAPE in float: NNAPI 1.0 (Android 8.1) takes it all; full-integer int8 needs
    # NNAPI 1.2 (int8 layers) or 1.3 (int8 QUANTIZE / DEQUANTIZE of float I/O)
    assert by[("student", "tflite_fp32")]["nnapi_delegate"]["summary"].endswith("nodes from API 27")
    assert by[("student", "tflite_int8_io")]["nnapi_delegate"]["summary"].endswith("nodes from API 29")
    assert by[("student", "tflite_int8")]["nnapi_delegate"]["summary"].endswith("nodes from API 30")
    # int8 error is measured and reported, and is not zero (it really is quantized)
    assert 0 < by[("student", "onnx_int8")]["max_abs_diff_vs_torch"] < 0.5


def test_exported_student_has_one_output_named_and_dynamic_batch(e2e_run):
    out, _ = e2e_run
    for name in ("student.onnx", "student.int8.onnx"):
        m = onnx.load(str(out / name))
        assert [o.name for o in m.graph.output] == ["output"]
        assert [i.name for i in m.graph.input] == ["input"]
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
        assert any(op.version >= 17 for op in m.opset_import if op.domain in ("", "ai.onnx"))
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["producer"] == "pocketkd" and meta["kept_head"] == "label"
    ops = {n.op_type for n in onnx.load(str(out / "student.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_bench_accuracy_comes_from_each_runtime(e2e_run):
    out, _ = e2e_run
    bench = json.loads((out / "bench/host.json").read_text())
    exported = {r["file"]: r for r in json.loads((out / "export.json").read_text())["formats"]}
    assert {r["file"] for r in bench["results"] if r["model"] != "floor"} == set(exported)
    assert {r["file"] for r in bench["results"] if r["model"] == "floor"} == {"bench/floor.onnx",
                                                                            "bench/floor_fp32.tflite"}
    for r in bench["results"]:
        lat = r["latency_ms"]
        assert lat["n"] == 30 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["batch"] == 1 and r["threads"] == 1
        # RMSE from the runtime's own outputs equals what the export check measured in-process
        # (for onnxruntime int8 files: what this host's own int8 kernels gave; the export verdict
        # itself is on exact int8 arithmetic, see test_int8_arith.py)
        if r["model"] != "floor":
            row = exported[r["file"]]
            assert r["rmse"] == pytest.approx((row.get("host_kernels") or row)["rmse"], rel=1e-5)


def test_report_json_has_versions_hash_metrics_parity_latency(e2e_run):
    out, _ = e2e_run
    rep = json.loads((out / "report.json").read_text())
    assert rep["versions"]["torch"].startswith("2.13")
    assert len(rep["config_hash"]) == 64
    assert set(rep["students"]) == {"tor_mt", "scratch", "kd"}
    assert rep["students"]["tor_mt"]["deployed"] is True
    assert "host" in rep["bench"] and "host" in rep["summary"]
    md = (out / "report.md").read_text()
    assert "| student | onnx_int8 |" in md and "![fit](plots/fit.png)" in md
    html = (out / "report.html").read_text()
    assert "<table>" in html and "plots/latency.png" in html


def test_second_run_skips_every_stage_and_says_so(e2e_run, small_config_file):
    out, _ = e2e_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")
              if p.is_file() and p.name not in ("config.yaml", ".pocketkd.lock")}  # the lock file names its holder
    proc = run_cli("run", "--config", small_config_file, "--out", out)
    assert proc.returncode == 0, proc.stderr
    not_cached = [line for line in proc.stderr.splitlines() if " stage " in line and "cached" not in line]
    assert proc.stderr.count("cached (same config and inputs)") == 7, not_cached
    after = {p: p.stat().st_mtime_ns for p in before}
    changed = [p.name for p in before if before[p] != after[p]]
    assert changed == ["manifest.json"] or changed == [], changed


def test_same_seed_gives_the_same_run(e2e_run, small_config_file, tmp_path):
    """Again with the baselines trained in a worker process beside the deployed method: the same students."""
    out, _ = e2e_run
    other = tmp_path / "again"
    proc = run_cli("run", "--config", small_config_file, "--out", other, "--only", "data", "--only", "teacher",
                   "--only", "distill", "--only", "student", "--set", "distill.parallel=true")
    assert proc.returncode == 0, proc.stderr
    if len(os.sched_getaffinity(0)) >= 2:
        assert "worker process(es) beside tor_mt" in proc.stderr, proc.stderr[-2000:]
    for name in ("data.npz", "teacher_preds.npz"):
        a, b = np.load(out / name), np.load(other / name)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    d1 = json.loads((out / "distill.json").read_text())["methods"]
    d2 = json.loads((other / "distill.json").read_text())["methods"]
    for m in d1:
        assert d1[m]["test_label_head"] == d2[m]["test_label_head"]


def test_report_command_rebuilds_and_bad_run_dir_is_a_clear_error(e2e_run, tmp_path):
    out, _ = e2e_run
    proc = run_cli("report", "--run", out)
    assert proc.returncode == 0 and "report:" in proc.stdout
    proc = run_cli("report", "--run", tmp_path)
    assert proc.returncode == 2 and "not a pocketkd run directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_killed_run_resumes_without_redoing_finished_stages(small_config_file, tmp_path):
    """SIGKILL the real CLI while it distils, then run again: data and teacher are not redone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    out = tmp_path / "killed"
    slow = ["--set", "distill.train.epochs=100000", "--set", "distill.train.patience=100000"]
    quick_export = ["--set", "export.formats=[onnx_fp32]", "--set", "export.android.enabled=false",
                    "--set", "bench.targets=[host]"]  # what is resumed is the point, not the emulated bench
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(small_config_file),
                             "--out", str(out), *slow, *quick_export], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    manifest = out / "manifest.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if manifest.exists() and '"teacher"' in manifest.read_text():
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        time.sleep(0.5)  # well inside the 100000-epoch distillation
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    stages = json.loads(manifest.read_text())["stages"]
    assert set(stages) == {"data", "teacher"}
    assert not (out / "student_mt.pt").exists()
    teacher_mtime = (out / "teacher.pt").stat().st_mtime_ns
    done = run_cli("run", "--config", small_config_file, "--out", out, *quick_export)
    assert done.returncode == 0, done.stderr
    assert "stage data     cached" in done.stderr and "stage teacher  cached" in done.stderr
    assert "stage distill  running" in done.stderr
    assert (out / "teacher.pt").stat().st_mtime_ns == teacher_mtime
    assert (out / "report.json").exists()


def test_default_run_benches_on_emulated_arm_and_checks_parity_with_host(e2e_run):
    from device_bench.qemu import qemu_available

    out, proc = e2e_run
    if not qemu_available():
        assert "apt-get install qemu-user-static" in proc.stderr  # the run says how to enable it
        pytest.skip("qemu-aarch64-static is not installed here (.ci/run installs it)")
    arm = json.loads((out / "bench/qemu-aarch64.json").read_text())
    assert arm["emulated"] is True
    res = [r for r in arm["results"] if r["model"] != "floor"]
    assert res and all(r["platform"]["machine"] == "aarch64" for r in res)
    for r in res:
        assert "max_abs_diff_vs_host" in r
        if r["precision"] == "fp32":
            assert r["max_abs_diff_vs_host"] <= 1e-5, r["file"]
    rep = json.loads((out / "report.json").read_text())
    assert "qemu-aarch64" in rep["bench"] and "qemu-aarch64" in rep["summary"]
    assert "EMULATED" in (out / "report.md").read_text()
    assert (out / "plots/latency_cdf.png").stat().st_size > 0


def test_verdicts_say_where_they_come_from_and_strict_follows_them(e2e_run, small_config_file):
    out, _ = e2e_run
    rep = json.loads((out / "report.json").read_text())
    exported = json.loads((out / "export.json").read_text())
    limited = {r["file"] for r in exported["formats"] if r["model"] == "student" and not r["strict"]}
    verdicts = {v["file"]: v for v in rep["verdicts"]}
    assert limited <= set(verdicts)
    arm = out / "bench" / "qemu-aarch64.json"
    benched_on_arm = {r["file"] for r in json.loads(arm.read_text())["results"]} if arm.exists() else set()
    for f in limited:
        v = verdicts[f]
        if f in benched_on_arm:
            assert v["judged_on"] == "qemu-aarch64 outputs (ARM)", v
        else:
            assert v["judged_on"].startswith("export check: "), v
        assert v["status"] == ("ok" if v["value"] <= v["limit"] else "over_limit"), v
    assert rep["host_int8"]["probe_exact"] == 2_072_640 and "int8_flags" in rep["host_int8"]
    assert len(rep["constraints"]["sha256"]) == 64
    bad = sum(v["status"] != "ok" for v in rep["verdicts"])
    proc = run_cli("run", "--config", small_config_file, "--out", out, "--strict")  # every stage cached
    assert proc.returncode == (3 if bad else 0), proc.stderr[-2000:]
    assert "verdicts:" in proc.stdout


def test_strict_exits_3_when_a_file_is_over_its_limit(e2e_run, small_config_file, tmp_path):
    """int8 calibrated on a single training row clips most activations, so the file is far over its
    limit, and --strict says so with exit code 3 (without it: exit 0 and one verdicts line)."""
    import shutil

    out, _ = e2e_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    tight = ["--set", "export.formats=[onnx_fp32,onnx_int8]", "--set", "export.android.enabled=false",
             "--set", "export.int8.float_first_layer=false", "--set", "export.int8.calibration_samples=1",
             "--set", "bench.targets=[host]"]
    proc = run_cli("run", "--config", small_config_file, "--out", run, *tight, "--strict")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "error: --strict: 1 exported file(s) over their limit" in proc.stderr
    assert "verdicts: 1 over limit of 1 fp16/int8 files (student.int8.onnx)" in proc.stdout
    assert "cached" in proc.stderr and "stage teacher  cached" in proc.stderr  # no retraining
    proc = run_cli("run", "--config", small_config_file, "--out", run, *tight)
    assert proc.returncode == 0 and "verdicts: 1 over limit" in proc.stdout


def test_export_that_fails_leaves_no_new_out(e2e_run, tmp_path):
    """`pipeline export --run R --out NEW`: NEW (and its missing parents) appear only when the export succeeds."""
    import shutil

    out, _ = e2e_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("android", "bench", "plots", "*.tflite", "*.ort"))
    (run / "student.pt").write_bytes(b"not a checkpoint")  # consistent with the manifest, but unreadable
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"]["student.pt"]["sha256"] = sha256_file(run / "student.pt")
    (run / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("export", "--run", run, "--formats", "onnx_fp32", "--no-android", "--out", tmp_path / "new" / "exp")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "student.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directory left behind"


def test_student_curves_share_one_figure_in_label_units(e2e_run):
    """Each method's history records the label head's validation MAE in label units every epoch (the
    learning-curve plot's shared axis); at the best epoch it is the saved student's own validation MAE."""
    from pipeline.checkpoints import load_checkpoint
    from pipeline.config import load_config
    from pipeline.data import Splits
    from pipeline.train import predict

    out, _ = e2e_run
    cfg = load_config(out / "config.yaml")
    splits = Splits.load(out / "data.npz")
    for name, m in json.loads((out / "distill.json").read_text())["methods"].items():
        h = m["history"]
        assert len(h["val_metric"]) == len(h["val_loss"]) == h["epochs_run"]
        label_out = predict(load_checkpoint(out / m["file"], cfg), splits.x["val"])[0]
        mae = float(np.mean(np.abs(label_out[:, :1] - splits.y["val"].reshape(-1, 1))))
        assert h["val_metric"][h["best_epoch"]] == pytest.approx(mae, rel=1e-4), name


def test_flagged_labels_that_are_real_outliers_are_counted_from_the_run_files(e2e_run):
    """distill.json's TOR record, recomputed from the run's own files: a training label is flagged when
    |label - teacher| (standardised units) exceeds the threshold; "flagged_real" counts those among the
    injected outliers. The flags must also find outliers far above chance."""
    from pipeline.data import Splits

    out, _ = e2e_run
    splits = Splits.load(out / "data.npz")
    rec = json.loads((out / "distill.json").read_text())["methods"]["tor_mt"]["rejection"]
    with np.load(out / "teacher_preds.npz") as z:
        teacher = z["train"].reshape(-1)
    std = 1.0 if splits.y_std is None else float(splits.y_std.reshape(-1)[0])  # labels learned as they are, or standardised
    resid = np.abs(splits.y["train"].reshape(-1) - teacher) / std
    flagged = resid > rec["threshold_std_units"]
    real = splits.outlier["train"]
    assert rec["flagged"] == int(flagged.sum()) and rec["real_outliers"] == int(real.sum())
    assert rec["flagged_real"] == int((flagged & real).sum())
    precision = rec["flagged_real"] / rec["flagged"]
    assert precision > 2 * real.mean(), (precision, real.mean())  # far better than flagging at random


def test_a_student_whose_best_epoch_is_its_first_is_flagged(e2e_run, small_config_file, tmp_path):
    """A student that stops learning at once (here: a learning rate too small to move it) keeps its
    first epoch: distill.json names it in the method's warnings; a normal student has none."""
    import shutil

    from pipeline.config import load_config
    from pipeline.stages.distill import fit_method

    out, _ = e2e_run
    for name in ("data.npz", "teacher_preds.npz"):
        shutil.copy(out / name, tmp_path / name)
    cfg = load_config(small_config_file, ["distill.train.lr=1e-12", "distill.train.epochs=12",
                                          "distill.train.patience=10"])
    stalled = fit_method(cfg, tmp_path, "scratch")
    assert stalled["history"]["best_epoch"] == 0 and stalled["history"]["epochs_run"] == 11
    assert len(stalled["warnings"]) == 1 and "best validation epoch is 1 of 11" in stalled["warnings"][0]
    assert json.loads((out / "distill.json").read_text())["methods"]["tor_mt"]["warnings"] == []
