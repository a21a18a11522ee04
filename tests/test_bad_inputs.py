"""Bad inputs, table-driven: every case ends in exit code 2, exactly one line on stderr, no traceback,
and leaves its working directory (inputs and the would-be output) byte for byte unchanged.

Cases are generated here (configs, CLI flags, data files, model files) and run in-process through the
CLIs' ``main(argv)`` with stderr (and log records) captured; a handful also run as real subprocesses.
Every case fails at validation: nothing trains. Also: two writers on one run directory, NaN data, and a
kill-and-resume run (SIGKILL at seeded random points, identical final metrics, no orphan process)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT

HOST = "--set=bench.targets=[host]"


# --------------------------------------------------------------------------- harness


def tree_digest(root: Path) -> dict[str, str]:
    """Every file, directory and symlink under ``root`` with its content hash (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                try:
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError as exc:
                    out[rel] = f"unreadable:{exc.errno}"
    return out


def run_in_process(tool: str, argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` of ``pipeline`` or ``device_bench`` with stdout/stderr and log records captured."""
    if tool == "pipeline":
        from pipeline.cli import main
    else:
        from device_bench.__main__ import main
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse --help and the like
                rc = exc.code
    finally:
        root.removeHandler(handler)
    return rc, err.getvalue()


def run_subprocess(tool: str, argv: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", tool, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
    return proc.returncode, proc.stderr


def assert_one_line_exit_2(rc: int, err: str, what: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{what}: exit {rc}, stderr:\n{err}"
    assert len(lines) == 1, f"{what}: {len(lines)} stderr lines:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err and 'File "' not in err, err


# --------------------------------------------------------------------------- workspace


class W:
    """One case's working directory: inputs are written here, ``out`` is the would-be run directory."""

    def __init__(self, root: Path):
        self.root = root
        self.out = root / "out"

    def p(self, name: str) -> Path:
        return self.root / name

    def text(self, name: str, text: str) -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def data(self, name: str, data: bytes) -> Path:
        path = self.p(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def cfg(self, tree_or_text, name: str = "cfg.yaml") -> Path:
        text = tree_or_text if isinstance(tree_or_text, str) else yaml.safe_dump(tree_or_text)
        return self.text(name, text)

    def run(self, *extra: str, cfg=None) -> list[str]:
        argv = ["run", "--out", str(self.out)]
        if cfg is not None:
            argv += ["--config", str(self.cfg(cfg))]
        if "targets" not in str(cfg):  # --set wins over the file: keep the file's bench.targets when it has them
            argv.append(HOST)
        return argv + list(extra)

    def csv(self, rows: list[str], name: str = "d.csv", header: str = "x1,x2,y") -> Path:
        return self.text(name, header + "\n" + "\n".join(rows) + "\n")

    def good_rows(self, n: int = 60) -> list[str]:
        rng = np.random.default_rng(0)
        return [f"{a:.4f},{b:.4f},{np.sin(a) + b:.4f}" for a, b in rng.normal(size=(n, 2))]

    def source_cfg(self, source: dict) -> dict:
        return {"data": {"name": "source", "source": source}}

    def csv_run(self, rows: list[str] | None = None, header: str = "x1,x2,y", **source) -> list[str]:
        self.csv(self.good_rows() if rows is None else rows, header=header)
        return self.run(cfg=self.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"], **source}))

    def npz_run(self, **arrays) -> list[str]:
        with open(self.p("d.npz"), "wb") as f:
            np.savez(f, **arrays)
        return self.run(cfg=self.source_cfg({"kind": "npz", "path": "d.npz"}))

    def images(self, n: int = 24, labels=None, files=None, **source) -> list[str]:
        from PIL import Image

        img = self.p("imgs")
        img.mkdir(exist_ok=True)
        names = []
        for i in range(n):
            Image.fromarray(np.full((8, 8), i * 9, np.uint8)).save(img / f"{i}.png")
            names.append(f"{i}.png")
        files = files or names
        labels = labels if labels is not None else [float(i) for i in range(len(files))]
        self.text("imgs/labels.csv", "file,angle\n" + "".join(f"{f},{y}\n" for f, y in zip(files, labels)))
        src = {"kind": "image_folder", "root": "imgs", "labels_csv": "labels.csv", "labels": ["angle"], "size": 8,
               **source}
        return self.run(cfg={**self.source_cfg(src), "student": {"backbone": "cnn", "hidden": [4], "channels": [2]},
                             "teacher": {"backbone": "cnn", "hidden": [64], "channels": [8, 16]}})

    def onnx(self, name: str = "m.onnx") -> Path:
        from tests.conftest import tiny_onnx_model

        path, _, _ = tiny_onnx_model(self.root)
        if name != "tiny.onnx":
            path = path.rename(self.p(name))
        return path

    def bench(self, model: Path | str, *extra: str) -> list[str]:
        return ["--model", str(model), "--runs", "2", "--warmup", "0", *extra]


CASES: dict[str, tuple[str, object]] = {}  # id -> (tool, build(w) -> argv)


def case(name: str, tool: str = "pipeline"):
    def register(fn):
        assert name not in CASES, name
        CASES[name] = (tool, fn)
        return fn
    return register


def add(name: str, build, tool: str = "pipeline") -> None:
    assert name not in CASES, name
    CASES[name] = (tool, build)


# --------------------------------------------------------------------------- config files

YAML_TEXT = {
    "dup-top-key": "seed: 1\nseed: 2\n",
    "dup-data-block": "data:\n  n_train: 100\ndata:\n  n_val: 50\n",
    "dup-nested-key": "teacher:\n  train:\n    epochs: 3\n    epochs: 4\n",
    "dup-key-in-flow-map": "student: {hidden: [4], hidden: [8]}\n",
    "dup-key-deep": "export:\n  int8:\n    per_channel: true\n    per_channel: false\n",
    "yaml-unclosed-bracket": "student: {hidden: [4\n",
    "yaml-tab-indent": "data:\n\tn_train: 100\n",
    "yaml-bad-indent": "data:\n  n_train: 100\n n_val: 3\n",
    "yaml-python-tag": "seed: !!python/object/apply:os.system ['true']\n",
    "yaml-top-list": "- seed\n- 1\n",
    "yaml-top-scalar": "just a string\n",
    "yaml-unknown-top-key": "sead: 1\n",
    "yaml-unknown-nested-key": "teacher:\n  hiden: [4]\n",
    "seed-text": "seed: abc\n",
    "seed-negative": "seed: -1\n",
    "seed-float": "seed: 1.5\n",
    "outlier-fraction-1.5": "data: {noise: {outlier_fraction: 1.5}}\n",
    "outlier-range-reversed": "data: {noise: {outlier_low: 5, outlier_high: -5}}\n",
    "x-range-reversed": "data: {x_min: 3, x_max: -3}\n",
    "n-train-tiny": "data: {n_train: 2}\n",
    "epochs-zero": "teacher: {train: {epochs: 0}}\n",
    "batch-negative": "distill: {train: {batch_size: -1}}\n",
    "lr-zero": "teacher: {train: {lr: 0}}\n",
    "method-unknown": "distill: {method: magic}\n",
    "baseline-unknown": "distill: {baselines: [scratch, nope]}\n",
    "method-wrong-task": "distill: {method: ka}\n",
    "student-too-big": "student: {hidden: [1024, 1024]}\n",
    "source-missing": "data: {name: source}\n",
    "source-with-sinusoid": "data: {source: {kind: csv, path: a.csv, labels: [y]}}\n",
    "source-kind-unknown": "data: {name: source, source: {kind: parquet, path: a.parquet}}\n",
    "format-unknown": "export: {formats: [onnx_fp64]}\n",
    "formats-empty": "export: {formats: []}\n",
    "target-unknown": "bench: {targets: [moon]}\n",
    "targets-empty": "bench: {targets: []}\n",
    "opset-12": "export: {opset: 12}\n",
    "teacher-onnx-missing": "teacher: {onnx: nowhere.onnx}\n",
    "teacher-checkpoint-missing": "teacher: {checkpoint: nowhere.pt}\n",
    "keep-head-unknown": "student: {keep_head: both}\n",
    "activation-unknown": "teacher: {activation: swish}\n",
    "cnn-on-vectors": "student: {backbone: cnn}\n",
    "hidden-zero": "teacher: {hidden: [0]}\n",
    "tor-mode-unknown": "distill: {tor: {mode: drop}}\n",
    "parity-atol-zero": "export: {parity_atol: 0}\n",
    "bench-runs-zero": "bench: {runs: 0}\n",
    "image-size-100": "data: {name: digits_rotation, image_size: 100}\n",
    "classification-teacher-head": "data: {name: digits}\nstudent: {keep_head: teacher}\n",
    "data-is-scalar": "data: 5\n",
    "ssh-target-malformed": "bench: {targets: ['ssh://']}\n",
}
for _name, _text in YAML_TEXT.items():
    add(f"config-{_name}", lambda w, t=_text: w.run(cfg=t))


@case("config-non-utf8")
def _(w):
    return w.run("--config", str(w.data("latin1.yaml", "seed: 1 # caf\xe9\n".encode("latin-1"))))


@case("config-binary-garbage")
def _(w):
    return w.run("--config", str(w.data("garbage.yaml", bytes(range(256)))))


@case("config-is-directory")
def _(w):
    w.p("cfgdir").mkdir()
    return w.run("--config", str(w.p("cfgdir")))


@case("config-missing")
def _(w):
    return w.run("--config", str(w.p("missing.yaml")))


@case("config-symlink-loop")
def _(w):
    os.symlink("loop.yaml", w.p("loop.yaml"))
    return w.run("--config", str(w.p("loop.yaml")))


@case("config-dangling-symlink")
def _(w):
    os.symlink("nothing.yaml", w.p("dangling.yaml"))
    return w.run("--config", str(w.p("dangling.yaml")))


@case("config-under-a-file")
def _(w):
    w.text("plain", "x")
    return w.run("--config", str(w.p("plain/cfg.yaml")))


# --------------------------------------------------------------------------- --set

for _i, _assignment in enumerate([
    "novalue", "=3", "a..b=1", "seed=-1", "data.n_train=abc", "seed.x=1", "data={n_train: 1, n_train: 2}",
    "distill.method=nope", "export.formats=[]", "bench.targets=[ssh://]", "student.hidden=[0]",
    "data.noise.outlier_fraction=2", "bogus.key=1", "teacher.train={epochs: 1, epochs: 2}",
]):
    add(f"set-{_i:02d}-{_assignment[:18]}", lambda w, a=_assignment: w.run("--set", a))


# --------------------------------------------------------------------------- CLI flags and paths


@case("out-empty")
def _(w):
    return ["run", "--out", "", HOST]


@case("out-blank")
def _(w):
    return ["run", "--out", "   ", HOST]


@case("out-is-a-file")
def _(w):
    w.text("out", "not a directory")
    return w.run()


@case("out-under-a-file")
def _(w):
    w.text("plain", "x")
    return ["run", "--out", str(w.p("plain/run")), HOST]


@case("out-symlink-loop")
def _(w):
    os.symlink("out", w.out)
    return w.run()


@case("out-foreign-nonempty-dir")
def _(w):
    w.text("out/notes.txt", "my own files")
    return w.run()


@case("out-dangling-symlink")
def _(w):
    os.symlink("elsewhere/run", w.out)
    return w.run()


@case("from-unknown-stage")
def _(w):
    return w.run("--from", "nope")


@case("only-unknown-stage")
def _(w):
    return w.run("--only", "nope")


@case("from-and-only")
def _(w):
    return w.run("--from", "export", "--only", "bench")


@case("only-export-new-out")
def _(w):
    return w.run("--only", "export")


@case("only-bench-new-out")
def _(w):
    return w.run("--only", "bench")


@case("only-report-new-out")
def _(w):
    return w.run("--only", "report")


@case("unknown-flag")
def _(w):
    return w.run("--bogus")


@case("no-subcommand")
def _(w):
    return []


@case("unknown-subcommand")
def _(w):
    return ["train"]


@case("out-without-value")
def _(w):
    return ["run", "--out"]


@case("report-without-run")
def _(w):
    return ["report"]


@case("report-run-missing")
def _(w):
    return ["report", "--run", str(w.p("nope"))]


@case("report-run-is-file")
def _(w):
    return ["report", "--run", str(w.text("f", "x"))]


@case("report-run-empty-dir")
def _(w):
    w.p("empty").mkdir()
    return ["report", "--run", str(w.p("empty"))]


@case("report-run-empty-string")
def _(w):
    return ["report", "--run", ""]


@case("export-run-missing")
def _(w):
    return ["export", "--run", str(w.p("nope"))]


@case("export-run-no-student")
def _(w):
    w.text("r/config.yaml", "seed: 0\n")
    return ["export", "--run", str(w.p("r")), "--out", str(w.out)]


@case("export-unknown-format")
def _(w):
    w.text("r/config.yaml", "seed: 0\n")
    for name in ("student.pt", "teacher.json", "data.npz"):
        w.text(f"r/{name}", "x")
    return ["export", "--run", str(w.p("r")), "--formats", "onnx_fp64", "--out", str(w.out)]


@case("config-reference-bad-config")
def _(w):
    return ["config", "--config", str(w.cfg("seed: [1\n"))]


# --------------------------------------------------------------------------- data files: CSV

add("csv-1e30-values", lambda w: w.csv_run([f"{i}e30,1,{i}" for i in range(1, 61)]))
add("csv-1e39-label", lambda w: w.csv_run(w.good_rows()[:-1] + ["1,2,1e39"]))
add("csv-nan-cell", lambda w: w.csv_run(w.good_rows()[:-1] + ["nan,2,3"]))
add("csv-inf-cell", lambda w: w.csv_run(w.good_rows()[:-1] + ["1,inf,3"]))
add("csv-empty-cell", lambda w: w.csv_run(w.good_rows()[:-1] + ["1,,3"]))
add("csv-text-in-number", lambda w: w.csv_run(w.good_rows()[:-1] + ["1,two,3"]))
add("csv-missing-label-column", lambda w: w.csv_run(header="x1,x2,z"))
add("csv-ragged-row", lambda w: w.csv_run(w.good_rows()[:-1] + ["1,2"]))
add("csv-semicolons", lambda w: w.csv_run([r.replace(",", ";") for r in w.good_rows()], header="x1;x2;y"))
add("csv-header-only", lambda w: w.csv_run([]))
add("csv-too-few-rows", lambda w: w.csv_run(w.good_rows(5)))
add("csv-duplicate-header", lambda w: w.csv_run(header="x1,x1,y"))
add("csv-constant-label", lambda w: w.csv_run([r.rsplit(",", 1)[0] + ",4.2" for r in w.good_rows()]))
add("csv-label-also-feature", lambda w: w.csv_run(features=["x1", "y"]))
add("csv-bad-split-values", lambda w: w.csv_run([r + ",maybe" for r in w.good_rows()], header="x1,x2,y,split",
                                                 split_column="split"))
add("csv-unknown-categorical", lambda w: w.csv_run(categorical=["colour"]))


@case("csv-empty-file")
def _(w):
    w.text("d.csv", "")
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"]}))


@case("csv-non-utf8")
def _(w):
    w.data("d.csv", ("x1,x2,y\n" + "\n".join(w.good_rows()) + "\ncaf\xe9,1,2\n").encode("latin-1"))
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"]}))


@case("csv-nul-bytes")
def _(w):
    w.data("d.csv", b"x1,x2,y\n1,2,3\x00\n")
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"]}))


@case("csv-missing-file")
def _(w):
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "absent.csv", "labels": ["y"]}))


@case("csv-path-is-directory")
def _(w):
    w.p("d.csv").mkdir()
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"]}))


@case("csv-symlink-loop")
def _(w):
    os.symlink("d.csv", w.p("d.csv"))
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "d.csv", "labels": ["y"]}))


@case("csv-under-a-file")
def _(w):
    w.text("plain", "x")
    return w.run(cfg=w.source_cfg({"kind": "csv", "path": "plain/d.csv", "labels": ["y"]}))


# --------------------------------------------------------------------------- data files: NPZ

_X = np.linspace(-1, 1, 80).reshape(-1, 1)
add("npz-nan-in-X", lambda w: w.npz_run(X=np.where(_X > 0.9, np.nan, _X), y=_X[:, 0]))
add("npz-1e30-in-y", lambda w: w.npz_run(X=_X, y=_X[:, 0] * 1e30))
add("npz-1e39-float64", lambda w: w.npz_run(X=_X * 1e39, y=_X[:, 0]))
add("npz-missing-y", lambda w: w.npz_run(X=_X))
add("npz-length-mismatch", lambda w: w.npz_run(X=_X, y=_X[:-3, 0]))
add("npz-string-X", lambda w: w.npz_run(X=np.array(["a"] * 80), y=_X[:, 0]))
add("npz-5d-X", lambda w: w.npz_run(X=np.zeros((80, 1, 1, 1, 1)), y=_X[:, 0]))
add("npz-empty-arrays", lambda w: w.npz_run(X=np.zeros((0, 1)), y=np.zeros(0)))
add("npz-constant-y", lambda w: w.npz_run(X=_X, y=np.ones(80)))
add("npz-3d-y", lambda w: w.npz_run(X=_X, y=np.zeros((80, 1, 1))))
add("npz-partial-presplit", lambda w: w.npz_run(X_train=_X, y_train=_X[:, 0]))
add("npz-object-array", lambda w: w.npz_run(X=np.array([[1.0]] * 79 + [[None]], dtype=object), y=_X[:, 0]))


@case("npz-not-a-zip")
def _(w):
    w.data("d.npz", b"definitely not a zip archive")
    return w.run(cfg=w.source_cfg({"kind": "npz", "path": "d.npz"}))


@case("npz-is-npy")
def _(w):
    with open(w.p("d.npz"), "wb") as f:
        np.save(f, _X)
    return w.run(cfg=w.source_cfg({"kind": "npz", "path": "d.npz"}))


@case("npz-truncated")
def _(w):
    buf = io.BytesIO()
    np.savez(buf, X=_X, y=_X[:, 0])
    w.data("d.npz", buf.getvalue()[:200])
    return w.run(cfg=w.source_cfg({"kind": "npz", "path": "d.npz"}))


# --------------------------------------------------------------------------- data files: image folder

add("images-parent-escape", lambda w: w.images(files=[f"{i}.png" for i in range(23)] + ["../outside.png"]))
add("images-absolute-path", lambda w: w.images(files=[f"{i}.png" for i in range(23)] + ["/etc/passwd"]))
add("images-etc-passwd", lambda w: w.images(files=[f"{i}.png" for i in range(23)] + ["../../../../etc/passwd"]))
add("images-missing-file", lambda w: w.images(files=[f"{i}.png" for i in range(23)] + ["gone.png"]))
add("images-constant-labels", lambda w: w.images(labels=[1.0] * 24))
add("images-nan-label", lambda w: w.images(labels=[float(i) for i in range(23)] + [float("nan")]))


@case("images-symlink-escape")
def _(w):
    argv = w.images(files=[f"{i}.png" for i in range(23)] + ["link.png"])
    w.p("outside.png").write_bytes(w.p("imgs/0.png").read_bytes())
    os.symlink(w.p("outside.png"), w.p("imgs/link.png"))
    return argv


@case("images-undecodable")
def _(w):
    argv = w.images()
    w.data("imgs/3.png", b"not a png at all")
    return argv


@case("images-root-is-file")
def _(w):
    w.text("notdir", "x")
    return w.run(cfg=w.source_cfg({"kind": "image_folder", "root": "notdir", "labels_csv": "l.csv",
                                   "labels": ["a"]}))


@case("images-root-symlink-loop")
def _(w):
    os.symlink("loop", w.p("loop"))
    return w.run(cfg=w.source_cfg({"kind": "image_folder", "root": "loop", "labels_csv": "l.csv",
                                   "labels": ["a"]}))


@case("mpiigaze-root-missing")
def _(w):
    return w.run(cfg=w.source_cfg({"kind": "mpiigaze", "root": "nowhere"}))


# --------------------------------------------------------------------------- given teacher files


def _teacher(w, key: str, name: str, data: bytes | None = None) -> list[str]:
    if data is not None:
        w.data(name, data)
    return w.run(cfg={"teacher": {key: name}})


add("teacher-onnx-random-bytes", lambda w: _teacher(w, "onnx", "t.onnx", np.random.default_rng(1).bytes(400)))
add("teacher-onnx-empty", lambda w: _teacher(w, "onnx", "t.onnx", b""))
add("teacher-onnx-is-tflite", lambda w: _teacher(w, "onnx", "t.onnx", b"\x1c\x00\x00\x00TFL3" + bytes(200)))
add("teacher-onnx-truncated", lambda w: _teacher(w, "onnx", "t.onnx", w.onnx().read_bytes()[:150]))
add("teacher-onnx-named-bin", lambda w: _teacher(w, "onnx", "t.bin", w.onnx().read_bytes()))
add("teacher-onnx-is-directory", lambda w: (w.p("t.onnx").mkdir(), w.run(cfg={"teacher": {"onnx": "t.onnx"}}))[1])
add("teacher-checkpoint-random", lambda w: _teacher(w, "checkpoint", "t.pt", np.random.default_rng(2).bytes(300)))
add("teacher-checkpoint-empty", lambda w: _teacher(w, "checkpoint", "t.pt", b""))


@case("teacher-onnx-wrong-outputs")
def _(w):
    import torch

    from export.onnx_export import export_onnx

    export_onnx(torch.nn.Linear(1, 3).eval(), w.p("t.onnx"), 1)
    return w.run(cfg={"teacher": {"onnx": "t.onnx"}})


@case("teacher-onnx-wrong-input-width")
def _(w):
    import torch

    from export.onnx_export import export_onnx

    export_onnx(torch.nn.Linear(5, 1).eval(), w.p("t.onnx"), 5)
    return w.run(cfg={"teacher": {"onnx": "t.onnx"}})


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@case("teacher-checkpoint-unsafe-pickle")
def _(w):
    import torch

    torch.save({"weight": _Payload()}, w.p("t.pt"))
    return w.run(cfg={"teacher": {"checkpoint": "t.pt"}})


@case("teacher-checkpoint-wrong-shapes")
def _(w):
    import torch

    torch.save(torch.nn.Linear(3, 3).state_dict(), w.p("t.pt"))
    return w.run(cfg={"teacher": {"checkpoint": "t.pt"}})


@case("teacher-checkpoint-a-list")
def _(w):
    import torch

    torch.save([torch.zeros(2)], w.p("t.pt"))
    return w.run(cfg={"teacher": {"checkpoint": "t.pt"}})


@case("teacher-checkpoint-is-onnx")
def _(w):
    return _teacher(w, "checkpoint", "t.pt", w.onnx().read_bytes())


# --------------------------------------------------------------------------- device_bench


def _bench_case(name: str, build) -> None:
    add(f"bench-{name}", build, tool="device_bench")


_bench_case("random-bytes-onnx", lambda w: w.bench(w.data("r.onnx", np.random.default_rng(3).bytes(512))))
_bench_case("random-bytes-onnx-2", lambda w: w.bench(w.data("r.onnx", b"\x08" + np.random.default_rng(4).bytes(64))))
_bench_case("empty-onnx", lambda w: w.bench(w.data("e.onnx", b"")))
_bench_case("empty-tflite", lambda w: w.bench(w.data("e.tflite", b"")))
_bench_case("empty-ort", lambda w: w.bench(w.data("e.ort", b"")))
_bench_case("truncated-onnx", lambda w: w.bench(w.data("t.onnx", w.onnx().read_bytes()[:120])))
_bench_case("tflite-named-onnx", lambda w: w.bench(w.data("x.onnx", b"\x1c\x00\x00\x00TFL3" + bytes(300))))
_bench_case("onnx-named-tflite", lambda w: w.bench(w.data("x.tflite", w.onnx().read_bytes())))
_bench_case("onnx-named-ort", lambda w: w.bench(w.data("x.ort", w.onnx().read_bytes())))
_bench_case("ort-named-onnx", lambda w: w.bench(w.data("x.onnx", b"\x14\x00\x00\x00ORTM" + bytes(300))))
_bench_case("random-ort", lambda w: w.bench(w.data("r.ort", b"\x00\x00\x00\x00" + np.random.default_rng(5).bytes(200))))
_bench_case("random-tflite", lambda w: w.bench(w.data("r.tflite", b"\xff" * 300)))
_bench_case("corrupt-tflite-body", lambda w: w.bench(w.data("c.tflite", b"\x1c\x00\x00\x00TFL3" + b"\xff" * 300)))
_bench_case("corrupt-ort-body", lambda w: w.bench(w.data("c.ort", b"\x14\x00\x00\x00ORTM" + b"\xff" * 300)))
_bench_case("model-bin", lambda w: w.bench(w.data("model.bin", w.onnx().read_bytes())))
_bench_case("no-extension", lambda w: w.bench(w.data("model", w.onnx().read_bytes())))
_bench_case("model-missing", lambda w: w.bench(w.p("absent.onnx")))
_bench_case("model-is-directory", lambda w: (w.p("d.onnx").mkdir(), w.bench(w.p("d.onnx")))[1])
_bench_case("model-symlink-loop", lambda w: (os.symlink("l.onnx", w.p("l.onnx")), w.bench(w.p("l.onnx")))[1])
_bench_case("json-under-a-file", lambda w: w.bench(w.onnx(), "--json", str(w.text("f", "x").parent / "f/r.json")))
_bench_case("json-is-directory", lambda w: (w.p("jd").mkdir(), w.bench(w.onnx(), "--json", str(w.p("jd"))))[1])
_bench_case("runs-zero", lambda w: w.bench(w.onnx(), "--runs", "0"))
_bench_case("threads-zero", lambda w: w.bench(w.onnx(), "--threads", "0"))
_bench_case("warmup-negative", lambda w: w.bench(w.onnx(), "--warmup", "-1"))
_bench_case("runs-not-a-number", lambda w: w.bench(w.onnx(), "--runs", "many"))
_bench_case("target-unknown", lambda w: w.bench(w.onnx(), "--target", "moon"))
_bench_case("unknown-flag", lambda w: w.bench(w.onnx(), "--bogus"))
_bench_case("no-model", lambda w: ["--runs", "2"])


def _data_case(name: str, make_x) -> None:
    def build(w):
        with open(w.p("x.npz"), "wb") as f:
            np.savez(f, **make_x())
        return w.bench(w.onnx(), "--data", str(w.p("x.npz")))
    _bench_case(f"data-{name}", build)


_data_case("wrong-rank-3", lambda: {"x": np.zeros((4, 1, 1), np.float32)})
_data_case("wrong-rank-1", lambda: {"x": np.zeros(4, np.float32)})
_data_case("wrong-width", lambda: {"x": np.zeros((4, 3), np.float32)})
_data_case("no-x", lambda: {"inputs": np.zeros((4, 1), np.float32)})
_data_case("nan", lambda: {"x": np.full((4, 1), np.nan, np.float32)})
_data_case("strings", lambda: {"x": np.array([["a"]] * 4)})
_data_case("no-rows", lambda: {"x": np.zeros((0, 1), np.float32)})
_bench_case("data-not-npz", lambda w: w.bench(w.onnx(), "--data", str(w.text("x.npz", "hello"))))
_bench_case("data-missing", lambda w: w.bench(w.onnx(), "--data", str(w.p("absent.npz"))))


# --------------------------------------------------------------------------- the table


def test_the_table_has_at_least_100_cases():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, monkeypatch):
    from pipeline.runner import Runner

    def no_work(*args, **kwargs):  # a case that passes validation must not train for minutes
        raise AssertionError(f"{name}: validation passed and the run started")

    monkeypatch.setattr(Runner, "run", no_work)
    tool, build = CASES[name]
    w = W(tmp_path)
    argv = build(w)
    before = tree_digest(tmp_path)
    rc, err = run_in_process(tool, argv)
    assert_one_line_exit_2(rc, err, name)
    assert tree_digest(tmp_path) == before, f"{name}: the working directory changed"
    assert not w.out.exists() or w.out.is_symlink() or before.get("out"), f"{name}: created {w.out}"


# a few through real processes: the whole stderr, interpreter start-up and logging included
SUBPROCESS_CASES = ["config-dup-top-key", "config-non-utf8", "out-empty", "csv-1e30-values", "bench-random-bytes-onnx",
                    "bench-data-wrong-rank-3", "teacher-checkpoint-unsafe-pickle", "from-and-only"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name, tmp_path):
    tool, build = CASES[name]
    argv = build(W(tmp_path))
    before = tree_digest(tmp_path)
    rc, err = run_subprocess(tool, argv, cwd=tmp_path)
    assert_one_line_exit_2(rc, err, name)
    assert tree_digest(tmp_path) == before
    assert "this must never run" not in err


# --------------------------------------------------------------------------- an existing run


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A run directory holding the finished data stage (cheap: no training)."""
    out = tmp_path_factory.mktemp("datarun") / "run"
    rc, err = run_in_process("pipeline", ["run", "--out", str(out), HOST, "--only", "data"])
    assert rc == 0, err
    return out


def _copy_run(data_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(data_run, out)
    return out


def test_only_refuses_inputs_that_differ_from_the_manifest(data_run, tmp_path):
    out = _copy_run(data_run, tmp_path)
    for tamper in ("flip", "delete", "unlisted"):
        shutil.rmtree(out)
        out = _copy_run(data_run, tmp_path)
        npz = out / "data.npz"
        if tamper == "flip":
            raw = bytearray(npz.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            npz.write_bytes(bytes(raw))
        elif tamper == "delete":
            npz.unlink()
        else:
            manifest = json.loads((out / "manifest.json").read_text())
            del manifest["files"]["data.npz"]
            (out / "manifest.json").write_text(json.dumps(manifest))
        before = tree_digest(tmp_path)
        rc, err = run_in_process("pipeline", ["run", "--out", str(out), HOST, "--only", "teacher"])
        assert_one_line_exit_2(rc, err, tamper)
        assert "data.npz" in err
        assert tree_digest(tmp_path) == before, tamper


def test_refused_rerun_leaves_the_run_directory_as_it_was(data_run, tmp_path):
    """A refused --only data (bad config) leaves data.npz, data.json and the manifest as they were."""
    out = _copy_run(data_run, tmp_path)
    before = tree_digest(out)
    rc, err = run_in_process("pipeline", ["run", "--out", str(out), HOST, "--only", "data",
                                          "--set", "data.n_train=3"])
    assert_one_line_exit_2(rc, err, "refused --only data")
    assert tree_digest(out) == before


def test_a_stage_that_fails_keeps_its_previous_outputs_and_the_manifest(tmp_path):
    """Write to temp, rename on success: a stage that raises half-way leaves the files of its last
    successful run and manifest.json byte for byte as they were, and the next run redoes it."""
    from pipeline.config import load_config
    from tests.test_runner import Calls, make_runner

    calls = Calls()
    runner, cfg = make_runner(calls), load_config()
    runner.run(tmp_path, cfg)
    before = tree_digest(tmp_path)
    entry = json.loads((tmp_path / "manifest.json").read_text())["stages"]["square"]
    calls.fail_in = "square"
    with pytest.raises(KeyboardInterrupt):
        runner.run(tmp_path, cfg, force=True)  # 'numbers' runs again (same bytes), then 'square' fails
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["square"] == entry
    calls.fail_in, calls.log[:] = None, []
    res, _ = runner.run(tmp_path, cfg)
    assert [r.status for r in res] == ["cached", "cached", "cached"]  # nothing was half-replaced


def test_marker_and_force(data_run, tmp_path):
    assert (data_run / ".pocketkd-run").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    rc, err = run_in_process("pipeline", ["run", "--out", str(foreign), HOST, "--only", "data", "--force"])
    assert rc == 0, err
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / ".pocketkd-run").is_file()


# --------------------------------------------------------------------------- two writers


def test_second_writer_gets_one_line_naming_the_holder(data_run, tmp_path):
    out = _copy_run(data_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.rundir import RunLock; "
         "RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_digest(out)
        rc, err = run_in_process("pipeline", ["run", "--out", str(out), HOST, "--only", "data"])
        assert_one_line_exit_2(rc, err, "second writer")
        assert f"PID {holder.pid}" in err
        assert tree_digest(out) == before
        rc, err = run_subprocess("pipeline", ["run", "--out", str(out), HOST, "--only", "data"], cwd=tmp_path)
        assert_one_line_exit_2(rc, err, "second writer (process)")
        assert f"PID {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the OS dropped its lock; the stale PID in the file is no obstacle
    rc, err = run_in_process("pipeline", ["run", "--out", str(out), HOST, "--only", "data"])
    assert rc == 0, err
    # report reads a run without taking the lock (it is free again here, but it must not need it)
    from pipeline.rundir import RunLock

    with RunLock(out):
        rc, err = run_in_process("pipeline", ["report", "--run", str(out)])
        assert "another pocketkd process" not in err


# --------------------------------------------------------------------------- NaN


def test_csv_with_1e30_values_stops_with_one_line(tmp_path):
    w = W(tmp_path)
    argv = w.csv_run([f"{i}e30,{i % 7},{np.sin(i):.3f}" for i in range(1, 61)])
    rc, err = run_subprocess("pipeline", argv, cwd=tmp_path)
    assert_one_line_exit_2(rc, err, "1e30 csv")
    assert "row 1" in err and "'x1'" in err and not w.out.exists()


def test_checks_fail_on_nan():
    """The comparisons that decide ok / failed are false for NaN, so NaN can never pass."""
    from pipeline.metrics import max_abs_diff

    diff = max_abs_diff(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert np.isnan(diff) and not diff <= 1e-4


def test_images_outside_root_load_when_the_config_allows_it(tmp_path):
    from pipeline.data.sources import ImageFolderSource, load_source

    w = W(tmp_path)
    w.images(files=[f"{i}.png" for i in range(23)] + ["../outside.png"])
    w.p("outside.png").write_bytes(w.p("imgs/0.png").read_bytes())
    src = {"kind": "image_folder", "root": str(w.p("imgs")), "labels_csv": "labels.csv", "labels": ["angle"],
           "size": 8}
    with pytest.raises(Exception, match="outside root"):
        load_source(ImageFolderSource(**src), 0)
    data = load_source(ImageFolderSource(**src, allow_outside_root=True), 0)
    assert sum(len(v) for v in data.x.values()) == 24


def test_constant_feature_is_a_warning_and_the_data_loads(tmp_path, caplog):
    from pipeline.data.sources import CsvSource, load_source

    w = W(tmp_path)
    w.csv([r.split(",")[0] + ",7," + r.split(",")[2] for r in w.good_rows()])
    with caplog.at_level(logging.WARNING, logger="pipeline.data.sources"):
        data = load_source(CsvSource(kind="csv", path=str(w.p("d.csv")), labels=["y"]), 0)
    assert data.x["train"].shape[1] == 2
    assert any("x2" in r.getMessage() and "zero variance" in r.getMessage() for r in caplog.records)


def test_fp16_onnx_is_topologically_sorted_and_passes_the_full_checker(tmp_path):
    """The float16 converter appends the input Cast at the end of the graph; to_fp16 sorts the nodes."""
    import onnx

    from export.onnx_export import full_check, to_fp16
    from tests.conftest import tiny_onnx_model

    src, _, _ = tiny_onnx_model(tmp_path)
    dst = to_fp16(src, tmp_path / "tiny.fp16.onnx")
    assert full_check(dst) == "ok"
    nodes = onnx.load(str(dst)).graph.node
    assert nodes[0].op_type == "Cast" and nodes[0].input[0] == "input"


def test_a_failed_training_loss_stops_with_one_line():
    import math

    from pipeline.errors import NonFiniteError
    from pipeline.train import _require_finite_loss

    with pytest.raises(NonFiniteError, match="teacher: loss is not finite at epoch 3"):
        _require_finite_loss("teacher", 2, math.nan, 0.1)


# --------------------------------------------------------------------------- kill and resume

TINY = {
    "seed": 5,
    "data": {"n_train": 200, "n_val": 60, "n_test": 80},
    "teacher": {"hidden": [64, 64], "train": {"epochs": 8, "patience": 4, "lr": 0.003}},
    "student": {"hidden": [8]},
    "distill": {"baselines": ["scratch"], "train": {"epochs": 8, "patience": 4}},
    "export": {"formats": ["onnx_fp32", "tflite_fp32"], "android": {"enabled": False}},
    "bench": {"targets": ["host"], "warmup": 2, "runs": 5},
}


def _metrics(out: Path) -> dict:
    export = json.loads((out / "export.json").read_text())
    return {
        "distill": {k: v["test_label_head"] for k, v in json.loads((out / "distill.json").read_text())["methods"].items()},
        "student": json.loads((out / "student.json").read_text())["test"],
        "export": {r["format"] + r["model"]: (r["status"], r.get("rmse"), r.get("sha256")) for r in export["formats"]},
        "bench": sorted((r["file"], r.get("rmse")) for r in json.loads((out / "bench/host.json").read_text())["results"]),
    }


def _ours(pid: int) -> list[str]:
    """Processes still alive that a run with PID ``pid`` started (their temp dirs carry its PID)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if f"-pid{pid}-" in cmd and state != "Z":
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_to_identical_metrics(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(out):
        return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(cfg), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)

    t0 = time.monotonic()
    ref = start(tmp_path / "ref")
    _, err = ref.communicate(timeout=900)
    assert ref.returncode == 0, err[-3000:]
    duration = time.monotonic() - t0
    rng = np.random.default_rng(13)
    out = tmp_path / "killed"
    for when in sorted(rng.uniform(0.5, 0.95 * duration, size=5)):
        proc = start(out)
        try:
            proc.wait(timeout=when)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"exit {proc.returncode} after a kill at {when:.1f}s: {proc.stderr.read()[-2000:]}")
        proc.stderr.close()
        deadline = time.monotonic() + 10
        while _ours(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ours(proc.pid), f"orphans after a SIGKILL at {when:.1f}s: {_ours(proc.pid)}"
    last = start(out)
    _, err = last.communicate(timeout=900)
    assert last.returncode == 0, err[-3000:]
    assert _metrics(out) == _metrics(tmp_path / "ref")
    import tempfile

    left = [p.name for p in Path(tempfile.gettempdir()).glob("pocketkd-*-pid*")
            if not Path(f"/proc/{p.name.split('-pid')[1].split('-')[0]}").exists()]
    assert not left, f"temp directories of dead runs left behind: {left}"
