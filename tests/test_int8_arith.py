"""int8 verdicts that do not depend on the CPU that checks them.

The saturating side is reproduced on any machine by running this host's own onnxruntime under
``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI: onnxruntime picks its u8s8 AVX2 kernels, whose 16-bit
pair sums saturate); the non-saturating side by the qemu-aarch64 target (real aarch64 onnxruntime).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from export.int8_arith import PROBE_EXACT, exact_outputs, host_int8_profile, int8_probe_model, probe_input
from export.onnx_export import export_onnx
from export.quantize import quantize_int8_dynamic, quantize_int8_static
from tests.conftest import ROOT

QEMU_X86 = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
needs_qemu_x86 = pytest.mark.skipif(QEMU_X86 is None or os.uname().machine != "x86_64",
                                    reason="qemu-x86_64 (apt-get install qemu-user-static) on an x86_64 host")

# Runs under qemu-x86_64: this host's onnxruntime, optimized (its int8 kernels) and exact.
SCRIPT = """
import json, sys
import numpy as np, onnxruntime as ort
from export.int8_arith import exact_outputs
out = {}
for path in sys.argv[2:]:
    x = np.full((1, 64), 255, np.float32) if "probe" in path else np.load(sys.argv[1])
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out[path] = {"kernels": s.run(None, {s.get_inputs()[0].name: x})[0].tolist(),
                 "exact": exact_outputs(path, x).tolist()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def saturating(tmp_path_factory):
    """The probe, and a real dynamic-int8 layer whose u8 activations x s8 weights overflow 16-bit pair sums."""
    d = tmp_path_factory.mktemp("sat")
    probe = int8_probe_model(d / "probe.onnx")
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.0)  # all positive: many pairs near 255 x 127
    export_onnx(layer.eval(), d / "fp32.onnx", (64,))
    dyn = quantize_int8_dynamic(d / "fp32.onnx", d / "int8_dynamic.onnx", per_channel=True)
    x = np.random.default_rng(0).uniform(0, 1, (32, 64)).astype(np.float32)
    x[0] = 1.0
    np.save(d / "x.npy", x)
    with torch.no_grad():
        ref = layer(torch.from_numpy(x)).numpy()
    return {"dir": d, "probe": probe, "dyn": dyn, "x": x, "ref": ref}


def test_exact_arithmetic_is_exact_on_this_host(saturating):
    """Whatever this CPU is, the exact path gives the probe's true value and the dynamic file stays
    within its quantization error of fp32 (a saturated sum is off by up to half its value)."""
    assert exact_outputs(saturating["probe"], probe_input())[0, 0] == PROBE_EXACT
    exact = exact_outputs(saturating["dyn"], saturating["x"])
    rel = np.abs(exact - saturating["ref"]).max() / np.abs(saturating["ref"]).max()
    assert rel < 0.01, rel


def test_host_profile_is_measured_and_consistent():
    p = host_int8_profile()
    assert p["probe_exact"] == PROBE_EXACT
    assert p["probe_output"] in (PROBE_EXACT, 1_048_544.0)  # exact, or 32 saturated pair sums of 32,767
    assert p["u8s8_saturates"] == (p["probe_output"] != PROBE_EXACT)
    if p["u8s8_saturates_expected"] is not None:  # the flags predict what the probe measures
        assert p["u8s8_saturates"] == p["u8s8_saturates_expected"], p


@needs_qemu_x86
def test_saturating_x86_cpu_is_reproduced_and_the_exact_path_is_immune(saturating, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    files = [str(saturating["probe"]), str(saturating["dyn"])]
    proc = subprocess.run([QEMU_X86, "-cpu", "Haswell", sys.executable, str(script),
                           str(saturating["dir"] / "x.npy"), *files],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    probe = res[files[0]]
    assert probe["kernels"][0][0] == 1_048_544.0  # 32 pair sums, each saturated at 32,767
    assert probe["exact"][0][0] == PROBE_EXACT
    dyn = {k: np.asarray(v, np.float32) for k, v in res[files[1]].items()}
    scale = np.abs(saturating["ref"]).max()
    assert np.abs(dyn["kernels"] - saturating["ref"]).max() > 0.05 * scale  # the saturated verdict is wrong
    # the exact path under the emulated CPU gives what it gives natively here
    np.testing.assert_allclose(dyn["exact"], exact_outputs(saturating["dyn"], saturating["x"]),
                               rtol=0, atol=1e-5 * scale)


def test_arm_target_agrees_with_the_exact_path(saturating):
    """A real aarch64 onnxruntime (no saturation on ARM) computes what the exact path computes."""
    from device_bench import qemu
    from device_bench.targets import parse_target

    if qemu.find_qemu() is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    arm = parse_target("qemu-aarch64")
    x = saturating["x"]
    probe = arm.run(saturating["probe"], probe_input(), runs=1, warmup=0)
    assert probe["outputs"][0][0] == PROBE_EXACT
    assert probe["platform"]["u8s8_saturates_expected"] is False and "ARM" in probe["platform"]["int8_path"]
    out = np.asarray(arm.run(saturating["dyn"], x, runs=1, warmup=0)["outputs"], np.float32)
    scale = np.abs(saturating["ref"]).max()
    np.testing.assert_allclose(out, exact_outputs(saturating["dyn"], x), rtol=0, atol=1e-5 * scale)


def test_static_qdq_exact_path_matches_arm(saturating, tmp_path):
    """Static QDQ: the unfused graph (exact QDQ semantics) is what the ARM int8 kernels compute."""
    from device_bench import qemu
    from device_bench.targets import parse_target

    if qemu.find_qemu() is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    x = saturating["x"]
    q = quantize_int8_static(saturating["dir"] / "fp32.onnx", tmp_path / "s.onnx", x, "input", prepare=False)
    out = np.asarray(parse_target("qemu-aarch64").run(q, x, runs=1, warmup=0)["outputs"], np.float32)
    exact = exact_outputs(q, x)
    step = np.abs(saturating["ref"]).max() / 127  # one output quantization step, roughly
    assert np.abs(out - exact).max() <= step, np.abs(out - exact).max()
