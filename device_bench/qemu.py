"""The ``qemu-aarch64`` target: real aarch64 Python, NumPy, onnxruntime and LiteRT under qemu-user.

Nothing here is cross-compiled or faked: the sysroot holds Debian bookworm's arm64 build of
CPython 3.11 and the manylinux aarch64 wheels from PyPI, and ``qemu-aarch64-static`` executes
those binaries instruction by instruction. Results carry ``emulated: True``: the *timings* are
of the emulator (useful for relative comparisons and for proving the files load and compute the
same numbers on ARM), never of a real ARM core.

The sysroot is built on first use and cached::

    ${POCKETKD_CACHE:-~/.cache/pocketkd}/sysroot-aarch64-<hash of the recipe>/

1. Debian arm64 ``.deb`` packages (``DEBS``) are fetched with the host's own ``apt-get`` pointed
   at a private state directory with ``APT::Architecture=arm64`` (no ``dpkg --add-architecture``,
   nothing of the host's apt state is touched, no root needed) and unpacked with ``dpkg-deb -x``.
   Needs a Debian/Ubuntu host with ``debian-archive-keyring`` (Debian has it; on Ubuntu
   ``apt-get install debian-archive-keyring``). ``POCKETKD_DEBIAN_MIRROR`` overrides the mirror.
2. aarch64 wheels (``WHEELS``, pinned) are fetched with ``pip download --platform ...`` and
   unzipped into ``usr/lib/python3/dist-packages`` (Debian's site directory for that prefix).
3. ``proc/cpuinfo`` describing ARM cores is written into the sysroot: qemu's ``-L SYSROOT``
   looks absolute paths up in the sysroot first, and without it onnxruntime's CPU detection reads
   the host's x86 ``/proc/cpuinfo`` and the process dies with SIGSEGV on ``import onnxruntime``.

It is built in a temporary directory next to the cache entry and renamed into place when
complete, so an interrupted build never leaves a half sysroot behind. The first build downloads
about 60 MB and takes well under a minute on a fast link. ``POCKETKD_QEMU_SYSROOT=DIR`` uses a
sysroot you built yourself instead. Pre-build it (e.g. in CI or a Docker layer) with
``python -m device_bench --prepare-qemu``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Sequence

from device_bench.jobs import JOBS, RESULTS, bench_present, launch_local, run_resumable, write_jobs
from device_bench.target_base import RUNNER, Job, Target, TargetError, settings_args
from pipeline.toolchain import pinned

log = logging.getLogger(__name__)

RECIPE_VERSION = 2  # 2: wheel versions from constraints.txt
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PYTHON = "python3.11"
PYTHON_VERSION = "3.11"
# The interpreter and the shared libraries that it and the wheels load (found by running them).
DEBS = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1",
    "zlib1g", "libffi8", "libstdc++6", "libgcc-s1", "libbz2-1.0", "liblzma5", "libssl3", "libuuid1",
)
# Pinned, with every dependency pinned too, so that a recipe hash means one set of files. The
# versions come from constraints.txt (pipeline.toolchain), the same pins as the host install, so the
# ARM target runs the onnxruntime / LiteRT / NumPy versions that exported and checked the files.
WHEEL_NAMES = ("numpy", "onnxruntime", "ai-edge-litert", "flatbuffers", "protobuf", "packaging", "ml-dtypes",
               "typing-extensions", "backports-strenum", "tqdm")
WHEELS = tuple(pinned(WHEEL_NAMES))
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                   "manylinux2014_aarch64")
CPU_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                "lrcpc dcpop asimddp ssbs")
# The emulated core: a Cortex-A76 (the big core of many Android phones; dotprod, fp16). Not qemu's
# default "max" CPU: with "max" (which adds i8mm/SVE/SME) the int8 kernels of onnxruntime and LiteRT
# returned garbage under qemu (digits CNN: RMSE 25 degrees instead of 3.2), while cortex-a53 and
# cortex-a76 matched the host. POCKETKD_QEMU_CPU picks another qemu CPU model.
CPU_MODEL = os.environ.get("POCKETKD_QEMU_CPU", "cortex-a76")
CPU_PART = {"cortex-a53": "0xd03", "cortex-a55": "0xd05", "cortex-a72": "0xd08", "cortex-a76": "0xd0b"}
MARKER = "pocketkd-sysroot.json"
QEMU_BINARIES = ("qemu-aarch64-static", "qemu-aarch64")


def recipe() -> dict:
    return {"version": RECIPE_VERSION, "suite": DEBIAN_SUITE, "debs": list(DEBS), "wheels": list(WHEELS),
            "platforms": list(WHEEL_PLATFORMS), "python": PYTHON_VERSION, "cpu_features": CPU_FEATURES,
            "cpu_model": CPU_MODEL}


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("POCKETKD_CACHE") or Path.home() / ".cache" / "pocketkd").expanduser()


def sysroot_path() -> Path:
    override = os.environ.get("POCKETKD_QEMU_SYSROOT")
    if override:
        return Path(override).expanduser()
    return cache_root() / f"sysroot-aarch64-{recipe_hash()}"


def find_qemu() -> str | None:
    for name in QEMU_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _can_build() -> bool:
    return all(shutil.which(c) for c in ("apt-get", "dpkg-deb")) and KEYRING.is_file()


def qemu_available() -> bool:
    """True when this machine can run the qemu-aarch64 target without further installs.

    That is: qemu-aarch64(-static) is on PATH, and the sysroot is cached or can be built here
    (apt-get, dpkg-deb and Debian's archive keyring present). Network access is not probed.
    """
    if find_qemu() is None:
        return False
    root = sysroot_path()
    return (root / MARKER).is_file() or (not os.environ.get("POCKETKD_QEMU_SYSROOT") and _can_build())


# --------------------------------------------------------------------------- building the sysroot


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 600) -> str:
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except FileNotFoundError as exc:
        raise TargetError(f"{what}: {cmd[0]} not found ({exc})") from None
    except subprocess.TimeoutExpired:
        raise TargetError(f"{what}: timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise TargetError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _apt_options(apt: Path) -> list[str]:
    """apt-get options for a private arm64 package universe under ``apt`` (the host's is untouched)."""
    for d in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    (apt / "state/status").touch()
    mirror = os.environ.get("POCKETKD_DEBIAN_MIRROR", DEFAULT_MIRROR).rstrip("/")
    (apt / "etc/sources.list").write_text(f"deb [arch=arm64 signed-by={KEYRING}] {mirror} {DEBIAN_SUITE} main\n")
    opts = {
        "APT::Architecture": "arm64",
        "Dir::State": apt / "state",
        "Dir::State::status": apt / "state/status",
        "Dir::Cache": apt / "cache",
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
        "Dir::Etc::SourceList": apt / "etc/sources.list",
        "Dir::Etc::SourceParts": apt / "etc/sources.list.d",
        "Dir::Etc::Preferences": apt / "etc/preferences",
        "Dir::Etc::PreferencesParts": apt / "etc/preferences.d",
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
    }
    if os.geteuid() == 0:
        opts["APT::Sandbox::User"] = "root"  # the _apt user could not write into our temp dirs
    lines = [f'{k} "{v}";' for k, v in opts.items()]
    # The host's own settings (proxies, mirrors' quirks) still apply; its hooks (PackageKit,
    # docker-clean, ...) and extra index targets are about the host's apt, not this one.
    lines += ["#clear APT::Architectures;", 'APT::Architectures { "arm64"; };',
              "#clear APT::Update::Post-Invoke;", "#clear APT::Update::Post-Invoke-Success;",
              "#clear DPkg::Post-Invoke;", "#clear Acquire::IndexTargets::deb::DEP-11;",
              "#clear Acquire::IndexTargets::deb::DEP-11-icons;",
              "#clear Acquire::IndexTargets::deb::DEP-11-icons-small;",
              "#clear Acquire::IndexTargets::deb::DEP-11-icons-large;",
              "#clear Acquire::IndexTargets::deb::DEP-11-icons-hidpi;",
              "#clear Acquire::IndexTargets::deb::DEP-11-icons-large-hidpi;"]
    conf = apt / "etc/apt.conf"
    conf.write_text("\n".join(lines) + "\n")
    return ["-c", str(conf)]


def _fetch_debs(apt: Path, debs_dir: Path) -> list[Path]:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise TargetError("building the qemu-aarch64 sysroot needs apt-get and dpkg-deb (a Debian or Ubuntu "
                          "host); or point POCKETKD_QEMU_SYSROOT at a prebuilt sysroot")
    if not KEYRING.is_file():
        raise TargetError(f"building the qemu-aarch64 sysroot needs Debian's archive keyring ({KEYRING}): "
                          "apt-get install debian-archive-keyring")
    opts = _apt_options(apt)
    log.info("qemu-aarch64 sysroot: reading the Debian %s arm64 package index", DEBIAN_SUITE)
    _run(["apt-get", *opts, "-q", "update"], "apt-get update (Debian arm64 package index)", timeout=900)
    log.info("qemu-aarch64 sysroot: downloading %d Debian arm64 packages", len(DEBS))
    debs_dir.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", *opts, "-q", "download", *(f"{p}:arm64" for p in DEBS)], "apt-get download (arm64 .debs)",
         cwd=debs_dir, timeout=900)
    files = sorted(debs_dir.glob("*.deb"))
    if len(files) != len(DEBS):
        raise TargetError(f"apt-get download fetched {len(files)} of {len(DEBS)} arm64 packages")
    return files


def _fetch_wheels(wheels_dir: Path) -> list[Path]:
    log.info("qemu-aarch64 sysroot: downloading %d aarch64 wheels from PyPI", len(WHEELS))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", PYTHON_VERSION, "--dest", str(wheels_dir)]
    for plat in WHEEL_PLATFORMS:
        cmd += ["--platform", plat]
    _run([*cmd, *WHEELS], "pip download (aarch64 wheels)", timeout=1200)
    files = sorted(wheels_dir.glob("*.whl"))
    if len(files) != len(WHEELS):
        raise TargetError(f"pip download fetched {len(files)} wheels, expected {len(WHEELS)}: "
                          + ", ".join(f.name for f in files))
    return files


def cpuinfo_text(cores: int) -> str:
    host = os.uname().machine
    block = ("processor\t: {i}\nmodel name\t: {model} (qemu-aarch64, emulated on {host})\nBogoMIPS\t: 100.00\n"
             "Features\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
             "CPU part\t: {part}\nCPU revision\t: 3\n")
    return "\n".join(block.format(i=i, host=host, features=CPU_FEATURES, model=CPU_MODEL,
                                   part=CPU_PART.get(CPU_MODEL, "0xd0b")) for i in range(cores))


def _write_cpuinfo(root: Path) -> None:
    (root / "proc").mkdir(exist_ok=True)
    # cover every host CPU the process may be scheduled on (qemu-user threads are host threads)
    (root / "proc" / "cpuinfo").write_text(cpuinfo_text(max(os.cpu_count() or 1, 1)))


def build_sysroot(dest: Path | None = None) -> Path:
    """Build the sysroot at ``dest`` (default: the cache entry for this recipe) unless already there."""
    dest = Path(dest) if dest else sysroot_path()
    if (dest / MARKER).is_file():
        return dest
    if os.environ.get("POCKETKD_QEMU_SYSROOT") and dest == sysroot_path():
        raise TargetError(f"POCKETKD_QEMU_SYSROOT={dest} has no {MARKER}; build one with "
                          f"POCKETKD_QEMU_SYSROOT= python -m device_bench --prepare-qemu, or unset the variable")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.build-*"):  # left by a killed build (a live one is younger)
        if time.time() - stale.stat().st_mtime > 6 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    t0 = time.monotonic()
    log.info("building the qemu-aarch64 sysroot (first use; cached afterwards) in %s", dest)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    try:
        root = work / "root"
        root.mkdir()
        debs = _fetch_debs(work / "apt", work / "debs")
        log.info("qemu-aarch64 sysroot: unpacking %d packages", len(debs))
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        if not (root / "usr/bin" / PYTHON).is_file():
            raise TargetError(f"the unpacked Debian packages have no usr/bin/{PYTHON}")
        wheels = _fetch_wheels(work / "wheels")
        site = root / "usr/lib/python3/dist-packages"
        site.mkdir(parents=True, exist_ok=True)
        log.info("qemu-aarch64 sysroot: unpacking %d wheels", len(wheels))
        for whl in wheels:
            with zipfile.ZipFile(whl) as z:
                z.extractall(site)
        _write_cpuinfo(root)
        manifest = {"recipe": recipe(), "recipe_hash": recipe_hash(), "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "build_seconds": round(time.monotonic() - t0, 1),
                    "debs": [d.name for d in debs], "wheels": [w.name for w in wheels]}
        (root / MARKER).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(root, dest)
        except OSError:
            if not (dest / MARKER).is_file():  # not a concurrent build that finished first
                raise
            log.info("another process finished the same sysroot first; using it")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("qemu-aarch64 sysroot ready in %.0fs: %s", time.monotonic() - t0, dest)
    return dest


def ensure_sysroot() -> Path:
    root = sysroot_path()
    if (root / MARKER).is_file():
        return root
    return build_sysroot(root)


# --------------------------------------------------------------------------- the target


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


class QemuAarch64Target(Target):
    """aarch64 CPython + wheels under qemu-user (``qemu-aarch64``)."""

    scheme = "qemu-aarch64"
    emulated = True
    forms = "qemu-aarch64"
    exact = True

    def fingerprint(self) -> str:
        return f"qemu-aarch64:{recipe_hash()}"  # the sysroot recipe, emulated CPU model included

    def run_many(self, jobs: Sequence[Job], *, threads=1, warmup=50, runs=300, batch=1, timeout=600,
                 max_seconds=None) -> list[dict | TargetError]:
        """Every file in one emulated aarch64 Python process (again from the next file after a crash)."""
        qemu = find_qemu()
        if qemu is None:
            raise TargetError("the qemu-aarch64 target needs qemu-aarch64-static: apt-get install qemu-user-static")
        root = ensure_sysroot()
        settings = settings_args(threads=threads, warmup=warmup, runs=runs, batch=batch, max_seconds=max_seconds)
        results = bench_present(jobs, lambda present: self._run_present(qemu, root, present, settings, timeout))
        emulator = qemu_version(qemu) if any(isinstance(r, dict) for r in results) else ""
        for result in results:
            if not isinstance(result, dict):
                continue
            machine = result.get("platform", {}).get("machine")
            if machine != "aarch64":
                raise TargetError(f"the qemu-aarch64 runner reported machine {machine!r}, not 'aarch64'")
            result.update(target=self.label, emulated=self.emulated, emulator=emulator, emulated_cpu=CPU_MODEL)
        return results

    @staticmethod
    def _run_present(qemu: str, root: Path, present: list[Job], settings: list[str], timeout: float) -> list:
        def error(i, code, text):
            name = present[i].model.name if i is not None else None
            if code is None:
                return TargetError(f"runner under qemu-aarch64 timed out after {timeout}s "
                                   f"{'on ' + name if name else 'before the first file'}; "
                                   "emulation is slow: lower --runs/--warmup")
            if code < 0 or code >= 128 or "uncaught target signal" in text:
                text += f" (signal; check {root}/proc/cpuinfo exists)"
            return TargetError(f"runner failed under qemu-aarch64 {'for ' + name if name else 'before the first file'} "
                               f"(exit {code}): {text}")

        with tempfile.TemporaryDirectory(prefix="pocketkd-qemu-") as tmp:
            work = Path(tmp)
            shutil.copy2(RUNNER, work / "runner.py")
            write_jobs(present, work, ship=True)
            env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "TMPDIR": str(work)}
            cmd = [qemu, "-cpu", CPU_MODEL, "-L", str(root), str(root / "usr/bin" / PYTHON), "-I", "runner.py",
                   "--jobs", JOBS, *settings, "--json", RESULTS]
            log.debug("qemu-aarch64: benching %d files in one emulated process", len(present))
            return run_resumable(len(present), lambda first: launch_local(
                [*cmd, "--first", str(first)], work, timeout * (len(present) - first), cwd=work, env=env), error)
