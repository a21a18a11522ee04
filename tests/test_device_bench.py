"""device_bench: the self-contained runner, the host target and the CLI, on real models."""

import json
import subprocess
import sys

import numpy as np
import pytest

from device_bench import TargetError, parse_target
from device_bench.runner import latency_stats
from tests.conftest import ROOT, tiny_onnx_model


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return tiny_onnx_model(tmp_path_factory.mktemp("m"), seed=0, rows=50)


def test_runner_script_runs_standalone_with_only_numpy_and_a_runtime(tiny_onnx, tmp_path):
    path, x, ref = tiny_onnx
    np.savez(tmp_path / "in.npz", x=x)
    # run the file by path, from an unrelated directory, with no pocketkd on the path
    proc = subprocess.run([sys.executable, str(ROOT / "device_bench" / "runner.py"), "--model", str(path),
                           "--inputs", str(tmp_path / "in.npz"), "--runs", "25", "--warmup", "3"],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["runtime"] == "onnxruntime" and res["platform"]["machine"]
    assert res["latency_ms"]["n"] == 25
    for k in ("min", "p50", "p90", "p95", "p99", "max", "mean", "std"):
        assert k in res["latency_ms"]
    for k in ("session_create_ms", "first_inference_ms", "throughput_per_s", "peak_rss_mb"):
        assert res[k] > 0
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)


def test_host_target_matches_pytorch(tiny_onnx):
    path, x, ref = tiny_onnx
    res = parse_target("host").run(path, x, runs=20, warmup=2)
    assert res["target"] == "host" and res["emulated"] is False
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)


def test_latency_stats_are_order_statistics():
    s = latency_stats(list(range(1, 101)))
    assert s["min"] == 1 and s["max"] == 100 and s["p50"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)


def test_bad_target_and_missing_model_are_clear_errors(tiny_onnx, tmp_path):
    with pytest.raises(TargetError, match="unknown bench target 'phone'.*allowed: host"):
        parse_target("phone")
    with pytest.raises(TargetError, match="does not exist"):
        parse_target("host").run(tmp_path / "nope.onnx", np.zeros((1, 1), np.float32))


def test_cli_benches_a_model_and_rejects_bad_input(tiny_onnx, tmp_path):
    path, x, _ = tiny_onnx
    env_cmd = [sys.executable, "-m", "device_bench"]
    proc = subprocess.run([*env_cmd, "--model", str(path), "--runs", "10", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["target"] == "host" and summary["latency_ms"]["p50"] > 0
    assert len(json.loads((tmp_path / "r.json").read_text())["outputs"]) == 256
    proc = subprocess.run([*env_cmd, "--model", str(tmp_path / "missing.onnx")], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "missing.onnx" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*env_cmd, "--model", str(path), "--target", "ssh:/bad"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown bench target" in proc.stderr
