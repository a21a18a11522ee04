import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

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


def run_cli(*args, cwd=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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


# --------------------------------------------------------------------------- parallel runs (pytest-xdist)
#
# `python -m pytest -n auto --dist loadgroup` (the README's test command) runs the suite on several
# worker processes. Module- and session-scoped fixtures are computed once per worker that needs them,
# so every test using one of the expensive run fixtures below is put in one xdist group: the group
# runs on a single worker and the fixture is computed once, as in a run without xdist (-n 0).
SHARED_RUNS = ("e2e_run", "pose_run", "cls_run", "csv_run", "sorted_run", "two_runs", "exported")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use, at most 4 (the suite's longest group,
    the end-to-end run and its tests, bounds the wall time beyond that)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in SHARED_RUNS:
            if name in item.fixturenames:
                param = getattr(item, "callspec", None) and item.callspec.params.get(name)
                item.add_marker(pytest.mark.xdist_group(f"{name}-{param}" if param else name))
                break
