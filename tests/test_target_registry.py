"""Bench targets register themselves: adding one is a module + one registry entry + tests.

This file follows that recipe once for real: ``LocalSubprocessTarget`` below is a complete target
(it runs ``runner.py`` with this Python in isolated mode, the way the host target does), registered
from here, parsed from its spec with ``parse_target`` and used to bench a real ONNX model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from device_bench.host import run_local_runner
from device_bench.target_base import Job, Target, TargetError, register_target, unregister_target
from device_bench.targets import BUILTIN, TARGETS, allowed_forms, parse_target
from tests.conftest import tiny_onnx_model
from tests.import_graph import circles, graph


class LocalSubprocessTarget(Target):
    """Test-only: this machine, ``python -I runner.py`` (no PYTHONPATH, no user site, no cwd on sys.path)."""

    scheme = "test-local"
    forms = "test-local"
    exact = True

    def run(self, model: Path, x: np.ndarray, *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
            max_seconds=None) -> dict:
        model = self.existing_model(model)
        result = run_local_runner([sys.executable, "-I"], model, x, where="on test-local", threads=threads,
                                  warmup=warmup, runs=runs, batch=batch, timeout=timeout, max_seconds=max_seconds)
        result.update(target=self.label, emulated=self.emulated)
        return result


@pytest.fixture
def test_local():
    register_target(LocalSubprocessTarget)
    try:
        yield LocalSubprocessTarget
    finally:
        unregister_target(LocalSubprocessTarget.scheme)


def test_a_target_registered_from_a_test_file_benches_a_real_model(test_local, tmp_path):
    path, x, ref = tiny_onnx_model(tmp_path)
    target = parse_target("test-local")
    assert isinstance(target, LocalSubprocessTarget)
    res = target.run(path, x, runs=5, warmup=1)
    assert res["target"] == "test-local" and res["emulated"] is False and res["runtime"] == "onnxruntime"
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)
    assert res["latency_ms"]["p50"] > 0
    assert allowed_forms().endswith(", test-local")  # error messages and --help list it
    with pytest.raises(TargetError, match="written exactly 'test-local'; allowed: host, .*test-local"):
        parse_target("test-local://x")


def test_a_target_with_only_run_benches_a_list_file_by_file(test_local, tmp_path):
    """``run_many``'s default loops over ``run``, so a target that implements only ``run`` works in the
    bench stage; a failing file is an error in its place, not the end of the list."""
    path, x, ref = tiny_onnx_model(tmp_path)
    results = parse_target("test-local").run_many([Job(path, x), Job(tmp_path / "nope.onnx", x), Job(path, x[:3])],
                                                  runs=3, warmup=0)
    assert isinstance(results[1], TargetError) and "does not exist" in str(results[1])
    assert [len(r["outputs"]) for r in (results[0], results[2])] == [len(x), 3]
    np.testing.assert_allclose(np.asarray(results[0]["outputs"]), ref, atol=1e-5)

    class Neither(Target):
        scheme = "neither"

    with pytest.raises(NotImplementedError, match="implements neither run nor run_many"):
        Neither("neither").run(path, x)


def test_unregistered_and_duplicate_schemes(test_local):
    unregister_target("test-local")
    with pytest.raises(TargetError, match=r"unknown bench target 'test-local'; allowed: host, qemu-aarch64, ssh://"):
        parse_target("test-local")

    class Impostor(Target):
        scheme = "host"

    with pytest.raises(ValueError, match="'host' is already taken by HostTarget"):
        register_target(Impostor)
    with pytest.raises(TypeError, match="not a Target subclass"):
        register_target(object)
    assert list(TARGETS) == [cls.scheme for cls in BUILTIN]


def test_callers_import_the_same_names_as_before():
    import device_bench
    from device_bench import targets

    assert device_bench.parse_target is targets.parse_target and device_bench.TargetError is TargetError
    assert [c.__name__ for c in BUILTIN] == ["HostTarget", "QemuAarch64Target", "SshTarget"]
    for name in ("RUNNER", "Target", "TargetError", "allowed_forms", "max_seconds_args", "runner_error",
                 "parse_target", "TARGETS"):
        assert hasattr(targets, name)


def test_device_bench_has_no_import_circle():
    """Read from source: every import, module-level or function-local, relative ones resolved."""
    g = graph()
    bad = [c for c in circles(g) if any(m.startswith(("device_bench", "export.format_table")) for m in c)]
    assert not bad, bad
    # the target modules know the base, never the registry or each other
    for mod in ("device_bench.host", "device_bench.qemu", "device_bench.ssh", "device_bench.target_base"):
        assert not g[mod] & {"device_bench.targets", "device_bench.host", "device_bench.qemu", "device_bench.ssh"}, mod
    assert not {m for m in g["device_bench.runner"] if m.startswith(("device_bench", "pipeline", "export"))}


def test_import_graph_finds_a_circle_and_a_function_local_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import x\n")
    (pkg / "c.py").write_text("from .a import y\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    g = graph(tmp_path, ("pkg",))
    assert g["pkg.b"] == {"pkg.c"} and g["pkg.d"] == {"pkg.a"}
    assert circles(g) == [["pkg.a", "pkg.b", "pkg.c"]]
