"""How the TOR defaults were chosen: tor_mt's test RMSE over its constants, by measurement.

    python benchmarks/tor_defaults.py          # rewrites its section of docs/BENCHMARKS.md

The TOR paper does not publish its constants, so the defaults in ``pipeline/default.yaml`` are the
best mean RMSE here over outlier fractions {0.1, 0.2, 0.4} x 3 seeds: outlier reading (reject /
substitute), threshold rule (k x MAD-scale of the residuals, or an absolute delta) and the weight
of the teacher head. One teacher per (fraction, seed) is shared by every setting.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
from tqdm.auto import tqdm

from common import ROOT, machine, mean_std, save_json, student_rmse, teacher_and_targets, write_section
from pipeline.config import load_config

SETTINGS = {
    "reject, k=2 x MAD": ["distill.tor.mode=reject", "distill.tor.delta_rule=mad", "distill.tor.k=2"],
    "reject, k=3 x MAD": ["distill.tor.mode=reject", "distill.tor.delta_rule=mad", "distill.tor.k=3"],
    "reject, k=5 x MAD": ["distill.tor.mode=reject", "distill.tor.delta_rule=mad", "distill.tor.k=5"],
    "substitute, k=3 x MAD": ["distill.tor.mode=substitute", "distill.tor.delta_rule=mad", "distill.tor.k=3"],
    "reject, delta=0.25": ["distill.tor.mode=reject", "distill.tor.delta_rule=absolute", "distill.tor.delta=0.25"],
    "reject, delta=0.5": ["distill.tor.mode=reject", "distill.tor.delta_rule=absolute", "distill.tor.delta=0.5"],
    "reject, delta=1.0": ["distill.tor.mode=reject", "distill.tor.delta_rule=absolute", "distill.tor.delta=1.0"],
    "reject, k=3, teacher weight 0.25": ["distill.tor.k=3", "distill.tor_mt.teacher_weight=0.25"],
    "reject, k=3, teacher weight 4": ["distill.tor.k=3", "distill.tor_mt.teacher_weight=4"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", default="0.1,0.2,0.4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    results = []
    for p in fractions:
        for seed in tqdm(seeds, desc=f"p={p}", unit="seed"):
            base = [f"seed={seed}", f"data.noise.outlier_fraction={p}"]
            splits, yt, _ = teacher_and_targets(load_config(None, base))
            for name, sets in SETTINGS.items():
                r = student_rmse(load_config(None, [*base, *sets]), splits, yt, "tor_mt")
                results.append({"fraction": p, "seed": seed, "setting": name, **r})
    elapsed = time.time() - t0
    lines = [
        "## TOR constants (issue 2): how the defaults were chosen",
        "",
        f"Regenerate: `python benchmarks/tor_defaults.py` ({elapsed / 60:.1f} min on {machine()}). "
        "tor_mt test RMSE, mean ± std over seeds "
        f"{seeds}; the last column is the share of training labels each rule flagged (true share = p).",
        "",
        "| setting | " + " | ".join(f"p={p:g}" for p in fractions) + " | mean | flagged share at p=0.2 |",
        "|---" * (len(fractions) + 3) + "|",
    ]
    means = {}
    for name in SETTINGS:
        rows = [r for r in results if r["setting"] == name]
        cells = [mean_std([r["rmse"] for r in rows if r["fraction"] == p]) for p in fractions]
        means[name] = float(np.mean([r["rmse"] for r in rows]))
        share = [r.get("train_outlier_share") for r in rows if r["fraction"] == 0.2]
        share_s = f"{np.mean(share):.3f}" if share and None not in share else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {means[name]:.4f} | {share_s} |")
    best = min(means, key=means.get)
    lines += ["", f"Best mean RMSE: **{best}**."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        save_json(ROOT / "benchmarks" / "results" / "tor_defaults.json", {"results": results, "seconds": elapsed})
        write_section("tor_defaults", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
