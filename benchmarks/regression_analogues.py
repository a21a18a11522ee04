"""Regression analogues of the classification methods (issue 5) in the sinusoid noise sweep.

    python benchmarks/regression_analogues.py              # full run, rewrites its section of docs/BENCHMARKS.md
    python benchmarks/regression_analogues.py --fractions 0.2 --seeds 0 --no-write

Outlier fractions x methods x seeds on the default config: label revision (lr), data selection
(ds), both (lr_ds) and the mean / log-variance student that abstains on its predicted variance
(gaussian), next to scratch, kd and tor_mt and an oracle (scratch on clean labels). Cells: test
RMSE of the label head on the clean test set, mean ± std over seeds; for gaussian also the RMSE on
the 80 % and 50 % of test samples with the lowest predicted variance.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from tqdm.auto import tqdm

from common import RESULTS, machine, mean_std, save_json, teacher_and_targets, write_section
from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.metrics import task_metrics
from pipeline.stages.distill import train_student
from pipeline.train import predict

METHODS = ["scratch", "kd", "tor_mt", "lr", "ds", "lr_ds", "gaussian"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0,0.2,0.4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    rows, t0 = [], time.time()
    for p, seed in tqdm([(p, s) for p in fractions for s in seeds], desc="analogues", unit="cell"):
        cfg = load_config(None, [f"seed={seed}", f"data.noise.outlier_fraction={p}"])
        splits, yt, teacher_rmse = teacher_and_targets(cfg)
        row = {"fraction": p, "seed": seed, "teacher": teacher_rmse}
        for m in methods:
            student, _, method = train_student(cfg, splits, yt, m)
            pred, _ = predict(student, splits.x["test"])
            met = task_metrics(pred, splits.y_clean["test"], "regression", abstain=method.abstains())
            row[m] = met["rmse"]
            if "rmse_at_coverage" in met:
                row[m + "_cov"] = met["rmse_at_coverage"]
            if "selected_share" in method.describe():
                row[m + "_selected"] = method.describe()["selected_share"]
        clean = load_config(None, [f"seed={seed}", "data.noise.outlier_fraction=0", "data.noise.sigma=0"])
        cs = make_dataset(clean.data, seed)
        student, _, _ = train_student(clean, cs, {k: cs.y[k] for k in cs.y}, "scratch")
        row["oracle"] = task_metrics(predict(student, cs.x["test"])[0], cs.y_clean["test"])["rmse"]
        rows.append(row)
        tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                            if not k.endswith("_cov")))
    minutes = (time.time() - t0) / 60
    cols = ["oracle", "teacher", *methods]
    lines = [
        "Command: `python benchmarks/regression_analogues.py` "
        f"(fractions {fractions}, seeds {seeds}; {minutes:.0f} min on {machine()}); raw numbers in "
        "`benchmarks/results/regression_analogues.json`. Test RMSE on the clean test set, mean ± std over seeds.",
        "",
        "| outlier fraction | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for p in fractions:
        rs = [r for r in rows if r["fraction"] == p]
        lines.append(f"| {p:g} | " + " | ".join(mean_std([r[c] for r in rs]) for c in cols) + " |")
    if "gaussian" in methods:
        lines += ["", "gaussian student, RMSE on the test samples it keeps (lowest predicted variance first):", "",
                  "| outlier fraction | 100 % | 80 % | 50 % |", "|---|---|---|---|"]
        for p in fractions:
            rs = [r for r in rows if r["fraction"] == p]
            lines.append(f"| {p:g} | " + " | ".join(mean_std([r["gaussian_cov"][c] for r in rs])
                                                    for c in ("100", "80", "50")) + " |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        save_json(RESULTS / "regression_analogues.json", {"rows": rows, "minutes": minutes})
        write_section("regression_analogues", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
