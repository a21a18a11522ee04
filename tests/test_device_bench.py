"""device_bench: the self-contained runner, the host target and the CLI, on real models."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from device_bench import TargetError, parse_target
from device_bench.host import run_local_jobs
from device_bench.jobs import Launched, run_resumable
from device_bench.runner import latency_stats
from device_bench.target_base import Job
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


def test_runner_benches_many_models_in_one_process_and_isolates_a_bad_one(tiny_onnx, tmp_path):
    path, x, ref = tiny_onnx
    np.savez(tmp_path / "in.npz", x=x)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, str(ROOT / "device_bench" / "runner.py"), "--models", str(path),
                           "bad.onnx", "nope.onnx", str(path), "--inputs", "in.npz", "--runs", "5", "--warmup", "1"],
                          capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["index"] for d in lines if d.get("started")] == [0, 1, 2, 3]  # a line before each model
    done = [d for d in lines if not d.get("started")]
    assert [d.get("exit") for d in done] == [None, 2, 2, None]
    assert "bad.onnx" in done[1]["error"] and "nope.onnx does not exist" in done[2]["error"]
    for d in (done[0], done[3]):
        assert d["latency_ms"]["n"] == 5 and d["peak_rss_mb"] > 0
        np.testing.assert_allclose(np.asarray(d["outputs"]), ref, atol=1e-5)


CRASHING_RUNNER = """\
import os, signal, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import runner
bench = runner.bench
def crash_on_some(path, *args, **kwargs):
    if "crash" in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGSEGV)  # as a runtime's segfault would
    return bench(path, *args, **kwargs)
runner.bench = crash_on_some
sys.argv = sys.argv[1:]
sys.exit(runner.main())
"""


def test_a_crash_on_one_file_keeps_the_others_results(tiny_onnx, tmp_path):
    """A process that dies on one file (a segfault) loses only that file: the runner starts again at
    the next one. Here the runner is wrapped so that files named crash* segfault it."""
    path, x, ref = tiny_onnx
    crash = tmp_path / "crash.onnx"
    shutil.copy(path, crash)
    wrapper = tmp_path / "crashing_runner.py"
    wrapper.write_text(CRASHING_RUNNER)
    jobs = [Job(path, x), Job(crash, x), Job(path, x[:4]), Job(crash, x), Job(path, x[:2])]
    results = run_local_jobs([sys.executable, str(wrapper)], jobs, where="on test", runs=3, warmup=0)
    assert [type(r).__name__ for r in results] == ["dict", "TargetError", "dict", "TargetError", "dict"]
    assert "runner failed on test for " in str(results[1]) and "crash.onnx" in str(results[1])
    assert "killed by signal 11" in str(results[1])
    assert [len(r["outputs"]) for r in results[::2]] == [len(x), 4, 2]
    np.testing.assert_allclose(np.asarray(results[0]["outputs"]), ref, atol=1e-5)


def test_resuming_after_a_crash_and_failing_before_the_first_file():
    calls = []

    def launch(first):
        calls.append(first)
        if first == 0:  # file 0 done, died inside file 1
            return Launched(-11, "Segmentation fault", [{"index": 0, "started": True}, {"index": 0, "model": "a"},
                                                        {"index": 1, "started": True}])
        return Launched(0, "", [{"index": 2, "started": True}, {"index": 2, "error": "bad", "exit": 2}])

    def error(i, code, text):
        return TargetError(f"{i}|{code}|{text}")

    results = run_resumable(3, launch, error)
    assert calls == [0, 2] and results[0] == {"model": "a"}
    assert str(results[1]) == "1|-11|Segmentation fault (killed by signal 11)" and str(results[2]) == "2|2|bad"
    with pytest.raises(TargetError, match=r"None\|1\|no numpy"):  # nothing started: the whole run
        run_resumable(2, lambda first: Launched(1, "Traceback ...\nerror: no numpy", []), error)
