"""The default run's wall time (issue 16 targets): ``python -m pipeline run`` on the default config
into a new run directory with an empty conversion cache (host + qemu-aarch64 bench; the aarch64
sysroot already built), then the same run directory re-run with only ``export.limits`` changed.

Each repeat uses a new run directory and a new, empty conversion cache. Stage seconds come from
``manifest.json``; the load average before and after each run is printed with it, because a
loaded machine stretches every figure.

    python benchmarks/default_run.py              # 3 repeats; writes its section of docs/BENCHMARKS.md
    python benchmarks/default_run.py --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ("data", "teacher", "distill", "student", "export", "bench", "report")


def run(out: Path, cache: Path, *sets: str) -> dict:
    from common import pipeline_run

    before = json.loads((out / "manifest.json").read_text())["stages"] if (out / "manifest.json").exists() else {}
    load0 = os.getloadavg()[0]
    wall, manifest = pipeline_run(out, *sets, env={"POCKETKD_CONVERSION_CACHE": str(cache)})
    # a stage the run skipped as cached keeps its old manifest entry: count it as 0 s
    stages = {k: 0.0 if before.get(k) == v else v.get("seconds", 0.0) for k, v in manifest["stages"].items()}
    return {"wall_s": wall, "stages": stages, "load": [load0, os.getloadavg()[0]]}


def render(cold: list[dict], limits: list[dict], machine: str) -> str:
    def med(rows, key):
        return statistics.median(r["stages"].get(key, 0.0) if key in STAGES else r[key] for r in rows)

    def cells(rows, key):
        vals = [r["stages"].get(key, 0.0) if key in STAGES else r[key] for r in rows]
        return f"**{med(rows, key):.1f}** ({', '.join(f'{v:.1f}' for v in vals)})"

    loads = [x for r in cold + limits for x in r["load"]]
    lines = [f"Machine: {machine}. Load average (1 min) around the runs: {min(loads):.1f}–{max(loads):.1f}.",
             "", "| seconds, median (each repeat) | new run, empty conversion cache | only `export.limits` changed |",
             "|---|---|---|"]
    for key in ("wall_s", *STAGES):
        name = "whole run (wall)" if key == "wall_s" else key
        lines.append(f"| {name} | {cells(cold, key)} | {cells(limits, key)} |")
    lines += ["", f"Targets: whole run ≤ 60 s (median here {med(cold, 'wall_s'):.1f} s), export ≤ 20 s "
              f"({med(cold, 'export'):.1f} s), export with only limits changed ≤ 3 s "
              f"({med(limits, 'export'):.1f} s)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/BENCHMARKS.md")
    args = ap.parse_args()
    cold, limits = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="pocketkd-default-run-") as tmp:
            out, cache = Path(tmp) / "run", Path(tmp) / "conversions"
            cold.append(run(out, cache))
            limits.append(run(out, cache, "--set", "export.limits.int8_rmse_ratio=1.06"))
        print(json.dumps({"repeat": i, "cold": cold[-1], "limits_only": limits[-1]}), flush=True)
    from common import machine, write_section

    body = render(cold, limits, machine())
    print(body)
    if not args.no_write:
        write_section("default_run", "Command: `python benchmarks/default_run.py`\n\n" + body)


if __name__ == "__main__":
    main()
