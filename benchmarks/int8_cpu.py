"""int8 on every CPU: one run's int8 files (onnxruntime and LiteRT) judged four ways, from the run's own files.

    python -m pipeline run --out runs/default          # with the qemu-aarch64 target (the default)
    python benchmarks/int8_cpu.py runs/default [--write]

Columns, each an RMSE over the PyTorch student's:
* this host's own kernels: onnxruntime's int8 kernels (``host_kernels`` in export.json: they saturate
  16-bit sums on x86 without VNNI), LiteRT's for the .tflite files;
* the export's verdict: the exact int8 arithmetic (``export/int8_arith.py``) for onnxruntime files,
  LiteRT on this host for .tflite files;
* an x86 CPU without VNNI or AVX-512, emulated: this host's Python, onnxruntime and LiteRT under
  ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA only; both runtimes choose their kernels from CPUID, so
  they take their AVX2 int8 code paths), with the saturation probe run there too;
* real aarch64 onnxruntime / LiteRT under qemu (bench/qemu-aarch64.json).
The host's int8 flags and measured probe are printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


EMULATED_CPU = "Haswell"  # qemu's model of an AVX2 + FMA CPU: no AVX-512, no VNNI
# Runs under qemu-x86_64: every file in this host's own runtime, as the export loads it.
SCRIPT = """
import json, sys
import numpy as np
from device_bench.runner import load_model, predict_all
from export.int8_arith import exact_outputs
out = {}
for arg in sys.argv[1:]:
    path, x, exact = arg.split("=", 2)
    x = np.load(x)
    out[path] = {"kernels": predict_all(load_model(path, threads=1), x).tolist(),
                 "exact": exact_outputs(exact, x).tolist() if exact else None}
print(json.dumps(out))
"""


def emulated_outputs(files: dict[Path, str], x: np.ndarray) -> tuple[dict[Path, dict], float] | None:
    """Under ``qemu-x86_64 -cpu Haswell``: each file's outputs on ``x`` from this host's onnxruntime /
    LiteRT kernels, and where ``files`` names an .onnx for it, the export's own check there (that file's
    exact int8 arithmetic); the saturation probe's output. None without qemu-x86_64 or off x86_64."""
    from export.int8_arith import int8_probe_model, probe_input

    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None or os.uname().machine != "x86_64":
        return None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "x.npy", x.astype(np.float32))
        np.save(d / "probe_x.npy", probe_input())
        probe = int8_probe_model(d / "probe.onnx")
        args = [f"{f}={d / 'x.npy'}={exact}" for f, exact in files.items()] + [f"{probe}={d / 'probe_x.npy'}="]
        root = Path(__file__).resolve().parent.parent
        proc = subprocess.run([qemu, "-cpu", EMULATED_CPU, sys.executable, "-c", SCRIPT, *args],
                              capture_output=True, text=True, timeout=3600,
                              env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"qemu-x86_64 -cpu {EMULATED_CPU} failed: {proc.stderr[-1500:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        res = {f: {k: None if v is None else np.asarray(v, np.float32) for k, v in out[str(f)].items()} for f in files}
        return res, float(np.asarray(out[str(probe)]["kernels"]).ravel()[0])


def _exact_source(run: Path, row: dict) -> str:
    """The .onnx whose exact arithmetic the export judges a row's file by ("" for a LiteRT file): itself, or
    for an .ort file the int8 ONNX it is converted from (as ``ExportJob.ort_source``)."""
    from export.format_table import ROWS

    if row["runtime"] != "onnxruntime":
        return ""
    if row["file"].endswith(".ort"):
        return str(run / ROWS["onnx_int8"].file.format(stem=row["model"]))
    return str(run / row["file"])


def render(run: Path, emulate: bool = True) -> str:
    from common import machine

    from export.int8_arith import PROBE_EXACT
    from pipeline.data import Splits
    from pipeline.metrics import rmse

    export = json.loads((run / "export.json").read_text())
    torch_rmse = json.loads((run / "student.json").read_text())["test"]["rmse"]
    arm_file = run / "bench" / "qemu-aarch64.json"
    arm = {r["file"]: r for r in json.loads(arm_file.read_text())["results"]} if arm_file.exists() else {}
    rows = [r for r in export["formats"] if r.get("model") == "student" and r.get("precision") == "int8"
            and "file" in r and "/" not in r["file"]]
    splits = Splits.load(run / "data.npz")
    x, y = splits.x["test"], splits.y_clean["test"]
    emu = emulated_outputs({run / r["file"]: _exact_source(run, r) for r in rows}, x) if emulate else None
    p = export["host_int8"]
    lines = [f"Run `{run}`; PyTorch student RMSE {torch_rmse:.5f}. Host: {machine()}; probe "
             f"{p['probe_output']:,.0f} (exact {p['probe_exact']:,})."]
    if emu is not None:
        lines.append(f"Emulated: `qemu-x86_64 -cpu {EMULATED_CPU}` (AVX2 and FMA, no AVX-512, no VNNI), this "
                     f"host's onnxruntime and LiteRT; probe there {emu[1]:,.0f} "
                     f"({'saturates' if emu[1] != PROBE_EXACT else 'exact'}).")
    lines += ["", "| file | this host's kernels | export verdict | emulated x86 without VNNI: its kernels | "
              "emulated x86 without VNNI: the export's check | qemu-aarch64 |", "| --- | --- | --- | --- | --- | --- |"]
    cell = (lambda v: f"{v:.5f} ({v / torch_rmse:.3f}x)" if v is not None else "–")  # noqa: E731
    for r in rows:
        own = (r.get("host_kernels") or {}).get("rmse") if "host_kernels" in r else r.get("rmse")
        e = emu[0][run / r["file"]] if emu is not None else {}
        kernels = rmse(e["kernels"], y) if e else None
        check = rmse(e["exact"], y) if e and e["exact"] is not None else kernels  # LiteRT: its own outputs
        a = arm.get(r["file"], {}).get("rmse")
        lines.append(f"| {r['file']} | {cell(own)} | {cell(r.get('rmse'))} | {cell(kernels)} | {cell(check)} | "
                     f"{cell(a)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--write", action="store_true", help="rewrite the int8_cpu section of docs/BENCHMARKS.md")
    ap.add_argument("--no-emulation", action="store_true", help="skip the qemu-x86_64 column")
    args = ap.parse_args()
    text = render(args.run, emulate=not args.no_emulation)
    print(text)
    if args.write:
        from common import write_section

        write_section("int8_cpu", text)


if __name__ == "__main__":
    main()
