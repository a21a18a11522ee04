"""Noise sweep: test RMSE of students trained with each method as the outlier fraction grows.

    python benchmarks/noise_sweep.py                      # full sweep (the 10 report seeds), rewrites its section
    python benchmarks/noise_sweep.py --fractions 0.2 --seeds 0 --no-write   # a quick look
    python benchmarks/noise_sweep.py --fractions 0,0.1,0.2 --json a.json --no-write &   # on two cores:
    python benchmarks/noise_sweep.py --fractions 0.3,0.4 --json b.json --no-write; wait
    python benchmarks/noise_sweep.py --merge a.json b.json                             # save and render

Outlier fractions x methods x seeds on the default config (the sinusoid toy), plus an *oracle*
student (``scratch`` on the clean labels: the same inputs, noise switched off). Each cell is the
mean ± std over seeds of the deployed (label) head's RMSE on the clean test set. "Gap closed" is
(RMSE_scratch - RMSE_method) / (RMSE_scratch - RMSE_oracle): 0 = no better than scratch, 1 = as
good as training on clean labels. The int8 column quantizes each tor_mt student (ORT static QDQ)
and reports int8 RMSE / fp32 RMSE.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from common import RESULTS, machine, mean_std, save_json, student_rmse, teacher_and_targets, write_section
from pipeline.config import load_config
from protocol import REPORT_SEEDS

METHODS = ["scratch", "kd", "tor", "tor_mt"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0,0.1,0.2,0.3,0.4")
    ap.add_argument("--seeds", default=",".join(map(str, REPORT_SEEDS)),
                    help="comma-separated (default: the report seeds)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--config", help="base config (default: the shipped default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-write", action="store_true",
                    help="leave docs/BENCHMARKS.md and benchmarks/results/ alone (unless --json names a file)")
    ap.add_argument("--json", help="also save the raw numbers here (for --merge)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="no training: merge the --json files of parallel runs, save and render")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        results = sorted((r for p in parts for r in p["results"]), key=lambda r: (r["fraction"], r["seed"]))
        return finish(results, max(p["seconds"] for p in parts), len(parts), args)
    import torch

    torch.set_num_threads(1)  # one core per process, so parallel runs over the fractions do not contend
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")

    results = []
    t0 = time.time()
    jobs = [(p, s) for p in fractions for s in seeds]
    for p, seed in tqdm(jobs, desc="noise sweep", unit="cell"):
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}", f"data.noise.outlier_fraction={p}"])
        splits, yt, teacher_rmse = teacher_and_targets(cfg)
        row = {"fraction": p, "seed": seed, "teacher": teacher_rmse}
        for m in methods:
            r = student_rmse(cfg, splits, yt, m, int8=(m == "tor_mt"))
            row[m] = r["rmse"]
            if "int8_rmse" in r:
                row["tor_mt_int8"] = r["int8_rmse"]
        # oracle: same inputs, clean labels, no teacher
        clean = load_config(args.config, [*args.overrides, f"seed={seed}", "data.noise.outlier_fraction=0",
                                          "data.noise.sigma=0"])
        from pipeline.data import make_dataset

        cs = make_dataset(clean.data, seed)
        row["oracle"] = student_rmse(clean, cs, {k: cs.y[k] for k in cs.y}, "scratch")["rmse"]
        results.append(row)
        tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        save_json(Path(args.json), {"results": results, "seconds": time.time() - t0})
    return finish(results, time.time() - t0, 1, args)


def finish(results: list[dict], elapsed: float, processes: int, args) -> int:
    fractions = sorted({r["fraction"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    methods = [m for m in METHODS if all(m in r for r in results)]
    cols = ["oracle", "teacher", *methods]
    lines = [
        "## Noise sweep (issue 2): test RMSE on the clean test set",
        "",
        "Regenerate: `python benchmarks/noise_sweep.py` "
        f"(fractions {fractions}, seeds {seeds}; {elapsed / 60:.1f} min on {machine()}"
        + (f", as {processes} processes over the fractions (`--json`, then `--merge`)" if processes > 1 else "")
        + ").",
        "Raw numbers: `benchmarks/results/noise_sweep.json`.",
        "",
        "| outlier fraction | " + " | ".join(cols) + " | tor_mt vs scratch | int8/fp32 RMSE (tor_mt) |",
        "|---" * (len(cols) + 3) + "|",
    ]
    gaps = {m: [] for m in methods}
    for p in fractions:
        rows = [r for r in results if r["fraction"] == p]
        cells = [mean_std([r[c] for r in rows]) for c in cols]
        sc = np.mean([r["scratch"] for r in rows])
        orc = np.mean([r["oracle"] for r in rows])
        mt = np.mean([r["tor_mt"] for r in rows]) if "tor_mt" in methods else float("nan")
        q = [r["tor_mt_int8"] / r["tor_mt"] for r in rows if "tor_mt_int8" in r]
        for m in methods:
            if p > 0 and sc - orc > 1e-9:
                gaps[m].append((sc - np.mean([r[m] for r in rows])) / (sc - orc))
        lines.append(f"| {p:g} | " + " | ".join(cells) + f" | {100 * (sc - mt) / sc:+.1f} % | "
                     + (f"{np.mean(q):.3f} (max {np.max(q):.3f})" if q else "–") + " |")
    lines += [
        "",
        "Share of the scratch → oracle gap closed (mean over outlier fractions > 0):",
        "",
        "| method | gap closed |",
        "|---|---|",
    ]
    lines += [f"| {m} | {np.mean(g):.2f} |" for m, g in gaps.items() if g]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        save_json(RESULTS / "noise_sweep.json", {"results": results, "seconds": elapsed})
        write_section("noise_sweep", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
