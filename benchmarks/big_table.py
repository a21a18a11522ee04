"""Training that scales with the data: a 50,000-row, 26-feature CSV regression end to end, with the
shipped training defaults (``batch_size: auto``, ``max_steps``) against the previous defaults (batch
128, epochs alone), on the same generated table, same seed, same everything else.

The table: x ~ N(0, 1) in 26 columns, y = a fixed smooth function of 8 of them plus N(0, 0.1) noise;
the pipeline then replaces 20 % of the train/val labels by outliers drawn from [-6, 6] (test labels
stay clean). Each mode is one ``python -m pipeline run`` into its own run directory; wall time per
stage is read from ``manifest.json``, RMSE from ``student.json`` / ``distill.json``.

    python benchmarks/big_table.py                       # both modes; writes docs/BENCHMARKS.md
    python benchmarks/big_table.py --modes shipped --rows 5000   # a quick look
    python benchmarks/big_table.py --modes previous   # one mode; the table combines the saved other one
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

FEATURES = 26
PREVIOUS = {  # the training defaults before issue 16: epochs alone, batch 128
    f"{section}.train.{key}": value for section in ("teacher", "distill")
    for key, value in (("batch_size", 128), ("max_steps", None))
}


def make_table(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    y = (np.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + np.tanh(x[:, 3] - x[:, 4]) + 0.3 * x[:, 5] ** 2
         - 0.4 * np.abs(x[:, 6]) + 0.2 * x[:, 7] + rng.normal(0, 0.1, rows))
    header = ",".join([f"f{i}" for i in range(FEATURES)] + ["y"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")


def config(csv: Path) -> dict:
    return {
        "seed": 0,
        "data": {"name": "source", "source": {"kind": "csv", "path": str(csv), "labels": ["y"]},
                 "noise": {"sigma": 0.0, "outlier_fraction": 0.2, "outlier_low": -6.0, "outlier_high": 6.0}},
        "bench": {"targets": ["host"]},
    }


def run_mode(mode: str, cfg_file: Path, out: Path) -> dict:
    from common import pipeline_run, set_args

    sets = [] if mode == "shipped" else set_args(PREVIOUS)
    wall, manifest = pipeline_run(out, "--config", str(cfg_file), "--force", *sets)
    distill = json.loads((out / "distill.json").read_text())["methods"]
    teacher = json.loads((out / "teacher.json").read_text())
    return {"mode": mode, "wall_s": wall, "stages": {k: v["seconds"] for k, v in manifest["stages"].items()},
            "teacher_rmse": teacher["test"]["rmse"], "teacher_epochs": teacher["history"]["epochs_run"],
            "teacher_batch": teacher["history"].get("batch_size", 128),
            "rmse": {name: m["test_label_head"]["rmse"] for name, m in distill.items()},
            "deployed_rmse": json.loads((out / "student.json").read_text())["test"]["rmse"]}


def render(results: list[dict], rows: int, machine: str) -> str:
    lines = [f"{rows:,}-row, {FEATURES}-feature CSV (20 % outlier labels in train/val), seed 0, "
             "`bench.targets: [host]`, every other key at its default. Machine: " + machine + ".",
             "", "| training defaults | wall (s) | teacher (s) | distill (s) | export (s) | teacher batch / epochs "
             "| teacher RMSE | tor_mt RMSE | scratch RMSE | kd RMSE |", "|" + " --- |" * 10]
    for r in results:
        s = r["stages"]
        lines.append(f"| {r['mode']} | {r['wall_s']:.0f} | {s.get('teacher', 0):.0f} | {s.get('distill', 0):.0f} | "
                     f"{s.get('export', 0):.0f} | {r['teacher_batch']} / {r['teacher_epochs']} | "
                     f"{r['teacher_rmse']:.4f} | {r['rmse']['tor_mt']:.4f} | {r['rmse']['scratch']:.4f} | "
                     f"{r['rmse']['kd']:.4f} |")
    if len(results) == 2:
        a, b = results
        lines += ["", f"tor_mt RMSE shipped / previous defaults: {a['rmse']['tor_mt'] / b['rmse']['tor_mt']:.3f} "
                  f"(target ≤ 1.05); wall time {a['wall_s'] / b['wall_s']:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--modes", nargs="+", default=["shipped", "previous"], choices=["shipped", "previous"])
    ap.add_argument("--work", default="/tmp/pocketkd-big-table")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch docs/BENCHMARKS.md")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"table_{args.rows}.csv"
    if not csv.exists():
        make_table(csv, args.rows)
    cfg_file = work / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(config(csv)))
    saved = work / f"results_{args.rows}.json"  # modes run in separate invocations are combined
    results = [r for r in (json.loads(saved.read_text()) if saved.exists() else []) if r["mode"] not in args.modes]
    for mode in args.modes:
        results.append(run_mode(mode, cfg_file, work / f"run_{mode}_{args.rows}"))
        print(json.dumps(results[-1]), flush=True)
        saved.write_text(json.dumps(results, indent=1))
    results.sort(key=lambda r: r["mode"] != "shipped")
    from common import machine, write_section

    body = render(results, args.rows, machine())
    print(body)
    if not args.no_write:
        write_section("big_table", "Command: `python benchmarks/big_table.py`\n\n" + body)


if __name__ == "__main__":
    main()
