import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The conversion cache (export/conversion_cache.py) of a test session is its own, empty at the start
# (the CLI runs it starts inherit it): the tests convert for real and leave the user's cache alone.
if "POCKETKD_CONVERSION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="pocketkd-test-conversions-")
    os.environ["POCKETKD_CONVERSION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

# A reduced run: same stages and code paths as the default, sized for a test suite.
SMALL = {
    "seed": 3,
    "data": {"n_train": 400, "n_val": 100, "n_test": 200},
    "teacher": {"hidden": [64, 64], "train": {"epochs": 40, "patience": 10, "lr": 0.003}},
    "student": {"hidden": [8]},
    "distill": {"train": {"epochs": 40, "patience": 10}},
    "bench": {"warmup": 5, "runs": 30},
}


def tiny_onnx_model(directory, seed=0, rows=50):
    """A small real MLP exported to ONNX, its evaluation inputs and PyTorch's outputs on them."""
    import numpy as np
    import torch

    from export.onnx_export import export_onnx

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).eval()
    path = export_onnx(model, Path(directory) / "tiny.onnx", 1)
    x = np.linspace(-1, 1, rows, dtype=np.float32).reshape(-1, 1)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return path, x, ref


def run_cli(*args, cwd=None, timeout=900, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def small_config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory, small_config_file):
    """One real end-to-end run of the pipeline CLI on the reduced config, shared by many tests."""
    out = tmp_path_factory.mktemp("run") / "run"
    proc = run_cli("run", "--config", small_config_file, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
