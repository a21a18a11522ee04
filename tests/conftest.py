import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# One intra-op thread for torch (OpenMP), MKL and OpenBLAS: in this process and in every CLI run the
# tests start (they inherit the environment). With two test processes on 2 cores, two OpenMP threads
# per process spin-wait for each other and a small CNN's training step takes 15-20x longer (measured:
# the pose student, 6 steps of batch 64: 1.4 s with 1 thread, 19-28 s with 2). Set for every run of
# the suite, with or without pytest-xdist, so both compute the same numbers (in a whole-suite run the
# in-process tests already ran single-threaded: test_mobile_models.py sets it at import). An explicit
# value in the environment wins.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# The conversion cache (export/conversion_cache.py) of a test session is its own, empty at the start
# (the CLI runs it starts inherit it): the tests convert for real and leave the user's cache alone.
# Made by the first process that imports this file (the xdist controller); its workers inherit the
# variable, so they share one cache (entries are written in a temp directory and renamed into place).
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
    # baselines one after another: a worker process (a second torch import) costs more than these
    # tiny students; tests/test_pipeline_e2e.py checks that parallel training gives the same students
    "distill": {"train": {"epochs": 40, "patience": 10}, "parallel": False},
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


# --------------------------------------------------------------------------- parallel runs (pytest-xdist)
#
# The README's test command runs the suite on several worker processes:
#   python -m pytest -q -n auto --dist loadgroup --durations=25
# Module- and session-scoped fixtures are computed once per worker that uses them, so every test
# using one of the expensive shared run fixtures below goes to one xdist group (as does a test with
# an explicit xdist_group mark): a group runs on one worker, and its fixture is computed once, as
# in a run without xdist (-n 0 or -p no:xdist, where none of this applies).
#
# pytest-xdist's own `--dist loadgroup` puts the group name into the test's node id, which pytest
# 9.2 no longer lets a plugin change (pytest-dev/pytest-xdist#1386: the groups are silently
# ignored). So the workers write their groups to a file and the scheduler below reads them; it also
# hands out the longest work first (EXPECTED_SECONDS), so that no long test starts last.
SHARED_RUNS = ("e2e_run", "pose_run", "cls_run", "csv_run", "sorted_run", "two_runs", "exported", "android_bundles")

# Rough seconds of the longest work units (a group: its fixture and all its tests; or one test by
# its function name), measured on 2 cores. Only their order matters; anything not listed is short.
EXPECTED_SECONDS = {
    "e2e_run": 350,
    "test_sigkill_at_random_points_resumes_to_identical_metrics": 230,
    "pose_run": 220,
    "csv_run": 130,
    "cls_run": 125,
    "two_runs": 105,
    "test_android_bundle_fixed_shapes_metadata_and_hashes": 100,
    "test_a_killed_run_resumes_without_redoing_finished_stages": 100,
    "exported-mlp": 70,
    "android_bundles-rotation": 60,  # tests/test_android_bundle.py: one bundle per task (export + its tests)
    "android_bundles-digits_gambler": 45,
    "android_bundles-digits": 45,
    "android_bundles-csv2": 40,
    "android_bundles-toy": 40,
    "android_bundles-pose": 40,
    "sshd": 40,
    "test_mpiigaze_layout_runs_end_to_end_with_angular_error": 65,
    "sorted_run": 60,
    "exported-cnn": 50,
    "test_int8_cnn_on_emulated_arm_agrees_with_host": 37,
    "test_tflite_model_runs_on_aarch64_litert_under_qemu": 35,
    "test_a_damaged_bundle_file_is_detected": 33,
    "test_tflite_formats_match_pytorch": 31,
    "test_tight_tolerance_is_enforced": 30,
}


def _xdist_group(item) -> str | None:
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    if names:
        return "_".join(names)
    for name in SHARED_RUNS:
        if name in item.fixturenames:
            param = item.callspec.params.get(name) if hasattr(item, "callspec") else None
            return f"{name}-{param}" if param else name
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this process may use, at most 4 (beyond that the longest
    work unit, the end-to-end run and its tests, bounds the wall time)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Controller, `--dist loadgroup`: tell each worker where to write its groups."""
    import tempfile

    config = node.config
    if config.getvalue("dist") != "loadgroup":
        return
    if not hasattr(config, "_pocketkd_groups_dir"):
        config._pocketkd_groups_dir = tempfile.mkdtemp(prefix="pytest-xdist-groups-")
    node.workerinput["pocketkd_groups_dir"] = config._pocketkd_groups_dir


def pytest_unconfigure(config):
    import shutil

    if hasattr(config, "_pocketkd_groups_dir"):
        shutil.rmtree(config._pocketkd_groups_dir, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Controller, `--dist loadgroup`: the groups the workers wrote, longest work first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        """Work units are groups (or single tests), handed out in the workers' collection order."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # first called once every worker has finished collecting
                self._groups = {}
                for f in sorted(Path(config._pocketkd_groups_dir).glob("*.json")):
                    self._groups.update(json.loads(f.read_text()))
            if nodeid in self._groups:
                return self._groups[nodeid]
            if nodeid.rfind("@") > nodeid.rfind("]"):  # a pytest-xdist that can mark node ids again
                return nodeid.split("@")[-1]
            return nodeid

    config.option.loadscopereorder = False  # keep the longest-first order (it would sort by test count)
    return SharedRunScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Worker under `--dist loadgroup`: write the groups and put the longest work units first."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput or "pocketkd_groups_dir" not in workerinput:
        return
    import json

    groups = {item.nodeid: g for item in items if (g := _xdist_group(item))}
    unit = [groups.get(item.nodeid, item.nodeid) for item in items]
    first = {}
    for i, u in enumerate(unit):
        first.setdefault(u, i)
    seconds = [EXPECTED_SECONDS.get(groups.get(item.nodeid) or getattr(item, "originalname", item.name), 0)
               for item in items]
    order = sorted(range(len(items)), key=lambda i: (-seconds[i], first[unit[i]], i))
    items[:] = [items[i] for i in order]
    out = Path(workerinput["pocketkd_groups_dir"]) / f"{workerinput['workerid']}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(out)


@contextlib.contextmanager
def torch_threads(n: int):
    """PyTorch's intra-op threads set to ``n`` for a block (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
