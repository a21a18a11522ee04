"""The shape of the code: no import circle (counting function-local imports, so none can hide one),
no source file over the size one person holds in mind, and every module importable on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_graph import circles, graph
from tests.import_graph import modules as all_modules

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "export", "device_bench", "models")
MAX_LINES = 400
# the one exception: copied alone to a device and run there with only numpy and a runtime, so it
# cannot be split into modules (issue 14: "device_bench/runner.py stays one self-contained file")
SELF_CONTAINED = {"device_bench/runner.py": 460}


def modules() -> dict[str, Path]:
    return all_modules(ROOT, PACKAGES)


def test_the_graph_sees_real_imports():
    g = graph()
    assert "pipeline.runner" in g["pipeline.stages"]
    assert "pipeline.config.schema" in g["pipeline.config.load"]
    assert "pipeline.methods.self_regulation" in g["pipeline.stages.teacher"]


def test_no_import_circle_even_through_function_local_imports():
    found = circles(graph())  # the product's packages, benchmarks/ and tests/
    assert found == [], f"import circles: {found}"


def test_no_source_file_over_the_limit():
    long = {rel: n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > SELF_CONTAINED.get(rel := str(p.relative_to(ROOT)), MAX_LINES)}
    assert long == {}, f"files over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_module_imports_on_its_own_in_a_fresh_interpreter(pkg):
    names = sorted(n for n in modules() if n.split(".")[0] == pkg and not n.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for m in [m for m in sys.modules if m.split('.')[0] in ('pipeline', 'export', 'device_bench', "
            "'models')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_light_modules_stay_light():
    """The config schema's base and the Python API's entry point do not import torch on their own."""
    code = ("import sys, pipeline, pipeline.options, pipeline.version\n"
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr[-1000:]


def test_the_self_contained_runner_imports_nothing_of_ours():
    assert graph()["device_bench.runner"] == set()
