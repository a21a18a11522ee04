"""int8 on every CPU: one run's onnxruntime int8 files judged three ways, from the run's own files.

    python -m pipeline run --out runs/default          # with the qemu-aarch64 target (the default)
    python benchmarks/int8_cpu.py runs/default [--write]

Columns: RMSE from this host's onnxruntime int8 kernels (``host_kernels`` in export.json: they
saturate 16-bit sums on x86 without VNNI), from the exact int8 arithmetic the export judges
(``export/int8_arith.py``), and from real aarch64 onnxruntime under qemu (bench/qemu-aarch64.json),
each over the PyTorch student's RMSE; the host's int8 flags and measured probe are printed with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def render(run: Path) -> str:
    from common import machine

    export = json.loads((run / "export.json").read_text())
    torch_rmse = json.loads((run / "student.json").read_text())["test"]["rmse"]
    arm_file = run / "bench" / "qemu-aarch64.json"
    arm = {r["file"]: r for r in json.loads(arm_file.read_text())["results"]} if arm_file.exists() else {}
    p = export["host_int8"]
    lines = [f"Run `{run}`; PyTorch student RMSE {torch_rmse:.5f}. Host: {machine()}; probe "
             f"{p['probe_output']:,.0f} (exact {p['probe_exact']:,}).", "",
             "| file | host int8 kernels | exact int8 arithmetic (export verdict) | qemu-aarch64 onnxruntime |",
             "| --- | --- | --- | --- |"]
    for r in export["formats"]:
        if "host_kernels" not in r:
            continue
        a = arm.get(r["file"], {}).get("rmse")
        cell = (lambda v: f"{v:.5f} ({v / torch_rmse:.3f}x)" if v is not None else "–")  # noqa: E731
        lines.append(f"| {r['file']} | {cell(r['host_kernels'].get('rmse'))} | {cell(r['rmse'])} | {cell(a)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--write", action="store_true", help="rewrite the int8_cpu section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    text = render(args.run)
    print(text)
    if args.write:
        from common import write_section

        write_section("int8_cpu", text)


if __name__ == "__main__":
    main()
