"""ssh:// target against a real sshd on 127.0.0.1 (throwaway host and client keys, a free port)."""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from device_bench import TargetError, parse_target
from device_bench.target_base import Job
from tests.conftest import ROOT, tiny_onnx_model

SSHD = shutil.which("sshd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin")
NO_SSHD = "sshd not installed (apt-get install openssh-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# one worker for every test here (--dist loadgroup): they share one sshd, and the check that a run
# leaves no remote temp dir behind must not see another worker's ssh bench in /tmp at the same time
pytestmark = pytest.mark.xdist_group("sshd")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(NO_SSHD)
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if os.path.exists(p)), "internal-sftp")
    port = free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
StrictModes no
UsePAM no
Subsystem sftp {sftp}
""")
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
    user = getpass.getuser()
    base = f"ssh://{user}@127.0.0.1:{port}"
    opts = f"key={d / 'client_key'}&known_hosts={d / 'known_hosts'}"
    try:
        yield SimpleNamespace(dir=d, port=port, user=user, base=base, opts=opts,
                              spec=f"{base}?{opts}&python={sys.executable}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_onnx_model(tmp_path_factory.mktemp("ssh-model"), seed=1, rows=40)


@pytest.fixture(scope="module")
def pythons(tmp_path_factory):
    """Real interpreters the 'device' might have: one with no numpy, one with numpy but no runtimes."""
    d = tmp_path_factory.mktemp("pythons")
    bare, numpy_only = d / "bare", d / "numpy-only"
    for venv in (bare, numpy_only):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(numpy_only.glob("lib/python3*/site-packages"))
    np_dir = Path(np.__file__).parent
    for name in ("numpy", "numpy.libs"):
        if (np_dir.parent / name).exists():
            (site / name).symlink_to(np_dir.parent / name)
    check = subprocess.run([str(numpy_only / "bin/python"), "-c", "import numpy, importlib.util as u; "
                            "assert u.find_spec('onnxruntime') is None and u.find_spec('ai_edge_litert') is None"])
    assert check.returncode == 0
    return SimpleNamespace(bare=bare / "bin/python", numpy_only=numpy_only / "bin/python")


def remote_tmp_dirs():
    return set(Path("/tmp").glob("pocketkd-bench.*"))


def test_ssh_target_benches_a_real_model_and_cleans_up(sshd, tiny):
    path, x, ref = tiny
    before = remote_tmp_dirs()
    target = parse_target(sshd.spec)
    res = target.run(path, x, runs=20, warmup=2)
    assert res["target"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}" == target.label  # options left out
    assert res["emulated"] is False and res["runtime"] == "onnxruntime" and res["latency_ms"]["n"] == 20
    assert res["platform"]["machine"] == os.uname().machine
    np.testing.assert_allclose(np.asarray(res["outputs"]), ref, atol=1e-5)
    assert remote_tmp_dirs() == before  # the remote temp dir is gone
    host_key = (sshd.dir / "host_key.pub").read_text().split()[1]
    assert host_key in (sshd.dir / "known_hosts").read_text()  # accept-new recorded the new host's key


def logins(sshd) -> int:
    """Logins sshd accepted so far (multiplexed sessions over one connection are not logins)."""
    return (sshd.dir / "sshd.log").read_text().count("Accepted publickey")


def master_processes() -> list[str]:
    """ssh ControlMaster processes of this test process's runs still alive (their socket dir names our pid)."""
    mark = f"pocketkd-ssh-pid{os.getpid()}-"
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in text and "ControlMaster=yes" in text:
            found.append(text)
    return found


def test_many_files_over_one_login(sshd, tiny, tmp_path):
    """Five files (two with the same name, one broken, one missing): one login, one runner call,
    each file's own result or error, the remote temp dir and the shared connection gone after."""
    path, x, ref = tiny
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / path.name
    shutil.copy(path, twin)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    jobs = [Job(path, x), Job(broken, x), Job(twin, x[:7]), Job(tmp_path / "missing.onnx", x), Job(path, x[:3])]
    before, dirs = logins(sshd), remote_tmp_dirs()
    results = parse_target(sshd.spec).run_many(jobs, runs=5, warmup=1)
    time.sleep(0.2)  # sshd writes its log line before serving; this is only slack for the file
    assert logins(sshd) - before == 1  # today's per-file way was ~5 logins per file
    ok = [results[i] for i in (0, 2, 4)]
    assert all(isinstance(r, dict) and r["target"] == parse_target(sshd.spec).label for r in ok)
    assert [len(r["outputs"]) for r in ok] == [len(x), 7, 3] and all(r["model"] == "tiny.onnx" for r in ok)
    np.testing.assert_allclose(np.asarray(ok[0]["outputs"]), ref, atol=1e-5)
    assert len({r["platform"]["python"] for r in ok}) == 1
    assert isinstance(results[1], TargetError) and "broken.onnx" in str(results[1]) and "exit 2" in str(results[1])
    assert isinstance(results[3], TargetError) and "missing.onnx does not exist" in str(results[3])
    assert remote_tmp_dirs() == dirs and master_processes() == []


def test_cli_benches_over_ssh(sshd, tiny, tmp_path):
    path, _, _ = tiny
    proc = subprocess.run([sys.executable, "-m", "device_bench", "--model", str(path), "--target", sshd.spec,
                           "--runs", "10", "--warmup", "1", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert len(json.loads((tmp_path / "r.json").read_text())["outputs"]) == 256


def test_unreachable_port_names_host_and_port(sshd, tiny):
    path, x, _ = tiny
    port = free_port()  # nothing listens there
    spec = f"ssh://{sshd.user}@127.0.0.1:{port}?{sshd.opts}"
    with pytest.raises(TargetError, match=rf"cannot reach 127\.0\.0\.1:{port} over ssh \(.*refused"):
        parse_target(spec).run(path, x, runs=1, warmup=0)
    proc = subprocess.run([sys.executable, "-m", "device_bench", "--model", str(path), "--target", spec],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and f"127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr


def test_key_not_authorized_is_an_auth_error(sshd, tiny):
    path, x, _ = tiny
    spec = f"{sshd.base}?key={sshd.dir / 'stranger_key'}&known_hosts={sshd.dir / 'known_hosts'}"
    with pytest.raises(TargetError, match=r"ssh authentication to .*127\.0\.0\.1.* failed .*Permission denied"):
        parse_target(spec).run(path, x, runs=1, warmup=0)


def test_remote_without_python_says_install_python3(sshd, tiny):
    path, x, _ = tiny
    with pytest.raises(TargetError, match=r"no '/nonexistent/python3' on .*install python3"):
        parse_target(f"{sshd.base}?{sshd.opts}&python=/nonexistent/python3").run(path, x, runs=1, warmup=0)


def test_remote_python_without_numpy_says_pip_install_numpy(sshd, tiny, pythons):
    path, x, _ = tiny
    with pytest.raises(TargetError, match="has no numpy: on the device, pip install numpy"):
        parse_target(f"{sshd.base}?{sshd.opts}&python={pythons.bare}").run(path, x, runs=1, warmup=0)


def test_remote_without_runtime_says_which_to_install(sshd, tiny, pythons, tmp_path):
    path, x, _ = tiny
    target = parse_target(f"{sshd.base}?{sshd.opts}&python={pythons.numpy_only}")
    before = remote_tmp_dirs()
    with pytest.raises(TargetError, match=r"lacks the runtime for tiny\.onnx .*missing runtime.*pip install onnxruntime"):
        target.run(path, x, runs=1, warmup=0)
    # a .tflite needs LiteRT: a file with the TFLite identifier passes the magic-byte check, then the
    # runner looks for an interpreter before it parses the file
    tfl = tmp_path / "student_fp32.tflite"
    tfl.write_bytes(b"\0" * 4 + b"TFL3" + b"\0" * 56)
    with pytest.raises(TargetError, match=r"lacks the runtime for student_fp32\.tflite .*pip install ai-edge-litert"):
        target.run(tfl, x, runs=1, warmup=0)
    assert remote_tmp_dirs() == before  # cleaned up after failures too


def test_missing_key_file_is_clear(tiny, tmp_path):
    path, x, _ = tiny
    with pytest.raises(TargetError, match="ssh key .*nokey does not exist"):
        parse_target(f"ssh://pi@127.0.0.1:22?key={tmp_path / 'nokey'}").run(path, x, runs=1, warmup=0)


@pytest.mark.parametrize("spec, why", [
    ("ssh://", "no host"),
    ("ssh://host:notaport", "port must be a number"),
    ("ssh://host:70000", "port must be a number"),
    ("ssh://pi@host:", "no port after it"),
    ("ssh://@host", "no user before it"),
    ("ssh://pi:secret@host", "passwords are not supported"),
    ("ssh://host/some/path", "unexpected path"),
    ("ssh://host?identity=k", "unknown option"),
    ("ssh://host?key=", "exactly one non-empty value"),
])
def test_malformed_ssh_targets_list_the_allowed_forms(spec, why):
    with pytest.raises(TargetError, match=why) as err:
        parse_target(spec)
    assert "allowed: host, qemu-aarch64, ssh://[user@]host[:port]" in str(err.value)


def test_ssh_target_parsing():
    t = parse_target("ssh://pi@[fe80::1]:2222?python=/home/pi/venv/bin/python&key=~/.ssh/pi")
    assert (t.user, t.host, t.port, t.python) == ("pi", "fe80::1", 2222, "/home/pi/venv/bin/python")
    assert t.key == str(Path("~/.ssh/pi").expanduser()) and t.label == "ssh://pi@[fe80::1]:2222"
    t = parse_target("ssh://board")
    assert (t.user, t.port, t.python, t.label) == (None, 22, "python3", "ssh://board:22")
