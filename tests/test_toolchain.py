"""The pinned toolchain: constraints.txt pins every requirement within pyproject's ranges, the
install under test is that toolchain, and the qemu-aarch64 sysroot runs the same versions."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from device_bench import qemu
from pipeline import toolchain
from tests.conftest import ROOT

CAPPED = ("onnx", "onnxruntime", "onnx2tf", "tensorflow-cpu", "tf-keras", "ai-edge-litert")


def _requirements() -> list[Requirement]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["dev"]]


def test_every_requirement_is_pinned_within_its_range():
    pins = toolchain.pins()
    for req in _requirements():
        name = toolchain.normalize(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt (run bash .ci/lock)"
        assert Version(pins[name]) in req.specifier, f"constraints.txt {req.name}=={pins[name]} violates {req}"


def test_packages_whose_internals_we_touch_have_upper_caps():
    reqs = {toolchain.normalize(r.name): r for r in _requirements()}
    for name in CAPPED:
        ops = {s.operator for s in reqs[name].specifier}
        assert "<" in ops or "==" in ops, f"{reqs[name]} has no upper cap"


def test_this_install_is_the_pinned_toolchain():
    """CI and the README install with -c constraints.txt: what runs is what is pinned."""
    info = toolchain.constraints_info()
    assert info["pins"] == len(toolchain.pins()) > 50
    assert info["installed_differs"] == {}, info["installed_differs"]


def test_qemu_sysroot_runs_the_pinned_versions():
    pins = toolchain.pins()
    for wheel in qemu.WHEELS:
        name, version = wheel.split("==")
        assert pins[toolchain.normalize(name)] == version, wheel


def test_readme_commands_install_with_the_constraints():
    text = (ROOT / "README.md").read_text()
    installs = re.findall(r"pip install [^\n&]*-e '\.\[dev\]'", text)
    assert len(installs) >= 2 and all("-c constraints.txt" in c for c in installs), installs
