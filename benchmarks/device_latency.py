"""Export accuracy and device latency: the full pipeline on the toy (MLP) and on the digits
rotation task (CNN), benched on the host and on aarch64 under qemu.

    python benchmarks/device_latency.py            # rewrites its section of docs/BENCHMARKS.md

Each case is a real ``python -m pipeline run`` into ``runs/bench-<case>`` with 1,000 timed runs
per file; the tables below are read from the run's export.json and bench/*.json. Latency under
qemu is emulated (it measures the emulator, not an ARM core); outputs and accuracy there are real
aarch64 onnxruntime / LiteRT results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, machine, write_section

CASES = {
    "sinusoid-mlp": [],
    "digits-cnn": ["--config", "configs/digits_rotation.yaml"],
}


def run_case(name: str, extra: list[str], runs: int) -> tuple[dict, dict, float]:
    out = ROOT / "runs" / f"bench-{name}"
    t0 = time.time()
    cmd = [sys.executable, "-m", "pipeline", "run", *extra, "--out", str(out), "--set", f"bench.runs={runs}",
           "--set", "bench.warmup=100"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    export = json.loads((out / "export.json").read_text())
    report = json.loads((out / "report.json").read_text())
    return export, report, time.time() - t0


def section(name: str, export: dict, report: dict) -> list[str]:
    lines = [f"### {name}", ""]
    s = report["students"]
    lines.append("PyTorch, clean test set: teacher RMSE {:.4g}; ".format(report["teacher"]["test"]["rmse"])
                 + "; ".join(f"{m} {v['test_label_head']['rmse']:.4g}" for m, v in s.items())
                 + f". Parameters: teacher {report['sizes']['teacher_params']:,}, deployed student "
                 f"{report['sizes']['deployed_params']:,}.")
    lines += ["", "| file | status | bytes | size / fp32 (same container) | max abs diff vs PyTorch | RMSE | RMSE / PyTorch "
              "| NNAPI as is (bundle) |", "|---|---|---|---|---|---|---|---|"]
    # like with like: .onnx files against student.onnx, .ort against student.ort, .tflite against the fp32 .tflite
    fp32 = {Path(r["file"]).suffix: r["size_bytes"] for r in export["formats"]
            if r["model"] == "student" and r["format"] in ("onnx_fp32", "ort_fp32", "tflite_fp32") and "file" in r}
    bundle = {r["format"]: r for r in export.get("android", [])}
    for r in export["formats"]:
        if r["model"] != "student" or "file" not in r:
            continue
        base = fp32.get(Path(r["file"]).suffix)
        nnapi = (bundle.get(r["format"], {}).get("mobile_usability") or {}).get("nnapi", "–")
        lines.append(f"| `{r['file']}` | {r['status']} | {r['size_bytes']:,} | "
                     f"{r['size_bytes'] / base:.3f} | {r['max_abs_diff_vs_torch']:.2g} | {r['rmse']:.4g} | "
                     f"{r['rmse_ratio_vs_torch']:.3f} | {nnapi} |")
    for target, b in report["bench"].items():
        res = b["results"]
        teacher = next((r for r in res if r["model"] == "teacher"), None)
        lines += ["", f"Latency on `{target}`" + (" — **emulated** (qemu-aarch64; not device latency)"
                                                  if b.get("emulated") else "")
                  + f": {res[0]['platform']['machine']}, {res[0]['platform']['cpu']}, batch 1, 1 thread, "
                  f"{res[0]['runs']} timed runs after {res[0]['warmup']} warm-up.", "",
                  "| file | p50 ms | p90 ms | p99 ms | speed-up vs teacher (p50) | RMSE from this target's outputs | max abs diff vs host |",
                  "|---|---|---|---|---|---|---|"]
        for r in res:
            lat = r["latency_ms"]
            sp = f"{teacher['latency_ms']['p50'] / lat['p50']:.1f}x" if teacher and r["model"] == "student" else "–"
            rm = f"{r['rmse']:.4g}" if "rmse" in r else "–"
            dh = f"{r['max_abs_diff_vs_host']:.2g}" if "max_abs_diff_vs_host" in r else "–"
            label = r["file"] if r["model"] != "floor" else f"{r['file']} (runtime floor)"
            lines.append(f"| `{label}` | {lat['p50']:.4f} | {lat['p90']:.4f} | {lat['p99']:.4f} | {sp} | {rm} | {dh} |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    lines = ["## Export accuracy and device latency (issues 2, 3, 4)", "",
             f"Regenerate: `python benchmarks/device_latency.py` (on {machine()}); runs land in `runs/bench-*`.", ""]
    for name in args.cases.split(","):
        export, report, secs = run_case(name, CASES[name], args.runs)
        lines += section(f"{name} ({secs / 60:.1f} min for this invocation; cached stages are skipped)", export, report)
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("device_latency", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
