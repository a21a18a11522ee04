"""qemu-aarch64 target: real aarch64 CPython, NumPy, onnxruntime and LiteRT under qemu-user.

The first test in a session builds the sysroot into the cache (Debian arm64 packages and PyPI
aarch64 wheels, well under a minute on a good link); later sessions reuse it.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from device_bench import TargetError, parse_target
from device_bench import qemu
from export.onnx_export import export_onnx
from export.tflite import onnx_to_tflite
from tests.conftest import ROOT

needs_qemu = pytest.mark.skipif(qemu.find_qemu() is None,
                                reason="qemu-aarch64-static not installed (apt-get install qemu-user-static)")


@pytest.fixture(scope="session")
def sysroot():
    if qemu.find_qemu() is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    t0 = time.monotonic()
    root = qemu.ensure_sysroot()
    print(f"qemu-aarch64 sysroot {root} ready in {time.monotonic() - t0:.1f}s")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 1)).eval()
    d = tmp_path_factory.mktemp("arm")
    path = d / "tiny.onnx"
    export_onnx(model, path, 1)
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(-1, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return path, x, ref


@needs_qemu
def test_onnx_model_runs_on_aarch64_under_qemu_and_matches_host(sysroot, tiny):
    path, x, ref = tiny
    res = parse_target("qemu-aarch64").run(path, x, runs=30, warmup=3)
    host = parse_target("host").run(path, x, runs=30, warmup=3)
    assert res["target"] == "qemu-aarch64" and res["emulated"] is True
    assert res["platform"]["machine"] == "aarch64"  # reported by the aarch64 interpreter itself
    assert host["platform"]["machine"] != "aarch64" or os.uname().machine == "aarch64"
    assert "qemu" in res["platform"]["cpu"] and "qemu-aarch64" in res["emulator"]
    assert res["runtime"] == "onnxruntime" and res["latency_ms"]["n"] == 30 and res["latency_ms"]["p50"] > 0
    np.testing.assert_allclose(np.asarray(res["outputs"]), np.asarray(host["outputs"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)


@needs_qemu
def test_tflite_model_runs_on_aarch64_litert_under_qemu(sysroot, tiny, tmp_path):
    path, x, ref = tiny
    files = onnx_to_tflite(path, tmp_path)
    res = parse_target("qemu-aarch64").run(files["fp32"], x, runs=20, warmup=2)
    assert res["runtime"] == "ai-edge-litert" and res["platform"]["machine"] == "aarch64"
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)
    res16 = parse_target("qemu-aarch64").run(files["fp16"], x, runs=5, warmup=1)
    np.testing.assert_allclose(np.asarray(res16["outputs"]), ref, atol=2e-2)


@needs_qemu
def test_sysroot_is_cached_complete_and_keyed_by_recipe(sysroot):
    assert sysroot.name == f"sysroot-aarch64-{qemu.recipe_hash()}"
    manifest = json.loads((sysroot / qemu.MARKER).read_text())
    assert manifest["recipe_hash"] == qemu.recipe_hash() and len(manifest["wheels"]) == len(qemu.WHEELS)
    assert (sysroot / "usr/bin/python3.11").is_file()
    assert "CPU implementer" in (sysroot / "proc/cpuinfo").read_text()  # onnxruntime needs an ARM cpuinfo
    assert not list(sysroot.parent.glob(f".{sysroot.name}.build-*"))  # no half-built leftovers
    t0 = time.monotonic()
    assert qemu.ensure_sysroot() == sysroot and time.monotonic() - t0 < 1  # reused, not rebuilt
    assert qemu.qemu_available()


@needs_qemu
def test_cli_benches_under_qemu(sysroot, tiny, tmp_path):
    path, x, _ = tiny
    np.savez(tmp_path / "eval.npz", x=x)
    proc = subprocess.run([sys.executable, "-m", "device_bench", "--model", str(path), "--data", str(tmp_path / "eval.npz"),
                           "--target", "qemu-aarch64", "--runs", "10", "--warmup", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["target"] == "qemu-aarch64" and summary["emulated"] is True
    assert summary["platform"]["machine"] == "aarch64"


def test_missing_qemu_is_a_clear_error(tiny, tmp_path, monkeypatch):
    path, x, _ = tiny
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no qemu on it
    assert qemu.find_qemu() is None and not qemu.qemu_available()
    with pytest.raises(TargetError, match="apt-get install qemu-user-static"):
        parse_target("qemu-aarch64").run(path, x, runs=1, warmup=0)


def test_malformed_qemu_targets_list_the_allowed_forms():
    with pytest.raises(TargetError, match=r"unknown bench target 'qemu-arm'.*allowed: host, qemu-aarch64, ssh://"):
        parse_target("qemu-arm")
    with pytest.raises(TargetError, match="written exactly 'qemu-aarch64'"):
        parse_target("qemu-aarch64://board")
    with pytest.raises(TargetError, match="written exactly 'host'"):
        parse_target("host://x")


@needs_qemu
def test_int8_cnn_on_emulated_arm_agrees_with_host(sysroot, tmp_path):
    """int8 kernels differ by CPU; they must still compute the same function. Under qemu's default
    'max' CPU they did not (garbage outputs): the target emulates a Cortex-A76 instead."""
    from export.quantize import quantize_int8_dynamic

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 8 * 8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).eval()
    src = export_onnx(model, tmp_path / "cnn.onnx", (1, 16, 16))
    x = np.random.default_rng(0).standard_normal((64, 1, 16, 16)).astype(np.float32)
    files = {"onnx_int8_dynamic": quantize_int8_dynamic(src, tmp_path / "cnn.int8_dynamic.onnx")}
    files.update(onnx_to_tflite(src, tmp_path, "cnn", ("int8",), x.transpose(0, 2, 3, 1)))
    for name, path in files.items():
        arm = np.asarray(parse_target("qemu-aarch64").run(path, x, runs=3, warmup=1)["outputs"])
        host = np.asarray(parse_target("host").run(path, x, runs=3, warmup=1)["outputs"])
        spread = host.std()
        assert np.sqrt(np.mean((arm - host) ** 2)) < 0.1 * spread, (name, arm[:4].ravel(), host[:4].ravel())
