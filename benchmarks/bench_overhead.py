"""Bench overhead (issue 16): all files of a target in one runner process vs one process per file,
and whether host latency survives a qemu-aarch64 bench running at the same time.

    python benchmarks/bench_overhead.py RUN_DIR [--reps 3] [--runs 300] [--warmup 50] [--no-qemu]

``RUN_DIR`` is a run directory whose export and bench stages ran (e.g. ``runs/default``): its
exported files and the runtime floors under ``bench/`` are benched on the stage's inputs. Per
repetition: the host target file by file (``run``: one process per file, as before issue 16) and
all at once (``run_many``), the same for qemu-aarch64 (file by file in the first repetition only:
it is slow), and the host's ``run_many`` again while qemu's ``run_many`` runs beside it. Prints
Markdown: wall times, and each file's host p50 alone vs during qemu (median over repetitions).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_bench.target_base import Job  # noqa: E402
from device_bench.targets import parse_target  # noqa: E402
from pipeline.data import Splits  # noqa: E402
from pipeline.stages.bench import bench_inputs  # noqa: E402


def jobs_for(run_dir: Path, emulated: bool) -> tuple[list[str], list[Job]]:
    splits = Splits.load(run_dir / "data.npz")
    rows = [r for r in json.loads((run_dir / "export.json").read_text())["formats"]
            if r.get("status") in ("ok", "over_limit")]
    rows += [{"model": "floor", "file": f"bench/{name}"} for name in ("floor.onnx", "floor_fp32.tflite")
             if (run_dir / "bench" / name).exists()]
    return [r["file"] for r in rows], [Job(run_dir / r["file"], bench_inputs(r, splits, emulated, 64)) for r in rows]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def p50s(results) -> list[float]:
    return [r["latency_ms"]["p50"] if isinstance(r, dict) else float("nan") for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--no-qemu", action="store_true")
    args = ap.parse_args()
    opts = {"runs": args.runs, "warmup": args.warmup, "max_seconds": 60.0}
    host, qemu = parse_target("host"), parse_target("qemu-aarch64")
    names, host_jobs = jobs_for(args.run_dir, False)
    _, qemu_jobs = jobs_for(args.run_dir, True)
    wall: dict[str, list[float]] = {}
    alone: list[list[float]] = []
    beside: list[list[float]] = []
    for rep in range(args.reps):
        t, _ = timed(lambda: [host.run(j.model, j.x, **opts) for j in host_jobs])
        wall.setdefault("host, one process per file", []).append(t)
        t, res = timed(lambda: host.run_many(host_jobs, **opts))
        wall.setdefault("host, one process for all files", []).append(t)
        alone.append(p50s(res))
        if args.no_qemu:
            continue
        if rep == 0:
            t, _ = timed(lambda: [qemu.run(j.model, j.x, **opts) for j in qemu_jobs])
            wall.setdefault("qemu-aarch64, one process per file", []).append(t)
        t, _ = timed(lambda: qemu.run_many(qemu_jobs, **opts))
        wall.setdefault("qemu-aarch64, one process for all files", []).append(t)
        other = threading.Thread(target=lambda: qemu.run_many(qemu_jobs, **opts))
        other.start()
        time.sleep(2.0)  # qemu's interpreter is up and benching
        t, res = timed(lambda: host.run_many(host_jobs, **opts))
        beside.append(p50s(res))
        other.join()
        wall.setdefault("host, one process for all files, qemu-aarch64 beside it", []).append(t)
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    print("| what | wall s (median) | each repetition |\n|---|---|---|")
    for what, ts in wall.items():
        print(f"| {what} | {statistics.median(ts):.1f} | {', '.join(f'{t:.1f}' for t in ts)} |")
    if beside:
        print("\n| file | host p50 ms alone | host p50 ms with qemu beside | ratio |\n|---|---|---|---|")
        for i, name in enumerate(names):
            a, b = statistics.median(r[i] for r in alone), statistics.median(r[i] for r in beside)
            print(f"| `{name}` | {a:.4f} | {b:.4f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
