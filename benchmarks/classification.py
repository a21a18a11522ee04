"""Classification methods on real images (issue 5): scikit-learn's 8x8 digits with flipped labels.

    python benchmarks/classification.py                    # full run, rewrites its section of docs/BENCHMARKS.md
    python benchmarks/classification.py --rates 0.4 --seeds 0 --no-write   # a quick look

Label-noise rates x methods x seeds on ``configs/digits.yaml`` (CNN teacher trained with
self-regulated learning, MLP student). Per cell: test accuracy of the deployed (label) head on the
clean test set, the share of training samples back-propagated per epoch (methods that leave
samples out), and selective risk at the standard coverages: by softmax confidence for every
method and by the abstain output for the gambler student.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common import RESULTS, ROOT, machine, mean_std, save_json, write_section
from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.metrics import classification_metrics
from pipeline.stages.distill import train_student
from pipeline.stages.teacher import train_teacher
from pipeline.train import predict

METHODS = ["scratch", "kd", "lr", "ds", "lr_ds", "ka", "ka_gambler", "significance", "regulated", "hybrid",
           "kd_teacher_only"]
COVS = ["100", "95", "90", "80", "70", "50"]


# Reference rows beside the registry's methods: (row name, method, extra config overrides).
VARIANTS = {"kd_teacher_only": ("kd", ["distill.kd.alpha=0"])}


def knowledge_adjustment_audit(logits: np.ndarray, y: np.ndarray, y_clean: np.ndarray) -> dict:
    """Where would the probability shift act on the training set, and who was right there? The shift
    rewrites exactly the rows whose teacher argmax differs from the given label."""
    top = logits.argmax(1)
    shifted = top != y
    n = max(int(shifted.sum()), 1)
    return {"shifted_share": float(shifted.mean()),
            "label_wrong_on_shifted": float(np.sum(shifted & (y != y_clean)) / n),
            "teacher_right_on_shifted": float(np.sum(shifted & (top == y_clean)) / n)}


def run_cell(config_with, methods):
    """One noise rate and seed; ``config_with(extra)`` is the cell's config with extra overrides."""
    cfg = config_with([])
    splits = make_dataset(cfg.data, cfg.seed)
    _, _, yt, srl = train_teacher(cfg, splits)
    row = {"teacher": classification_metrics(yt["test"], splits.y_clean["test"]),
           "teacher_srl_share": float(np.mean(srl["share_per_epoch"])),
           "ka_audit": knowledge_adjustment_audit(np.asarray(yt["train"]), np.asarray(splits.y["train"]).reshape(-1),
                                                  np.asarray(splits.y_clean["train"]).reshape(-1)),
           "methods": {}}
    for name in methods:
        method, extra = VARIANTS.get(name, (name, None))
        student, _, m = train_student(config_with(extra) if extra else cfg, splits, yt, method, srl["significance"])
        logits, _ = predict(student, splits.x["test"])
        d = m.describe()
        row["methods"][name] = {**classification_metrics(logits, splits.y_clean["test"], abstain=m.abstains()),
                                "samples_used": d.get("samples_used_share_mean", 1.0)}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0,0.2,0.4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--json", help="where to save the raw numbers (default, unless --no-write: "
                    "benchmarks/results/classification.json)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="no training: merge result files of parallel runs (e.g. one per rate), save and render")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.json is None and not args.no_write:
        args.json = str(RESULTS / "classification.json")
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        out = {**parts[0], "minutes": max(p["minutes"] for p in parts), "parallel_processes": len(parts),
               "rates": sorted({r for p in parts for r in p["rates"]}),
               "cells": sorted((c for p in parts for c in p["cells"]), key=lambda c: (c["rate"], c["seed"]))}
        if args.json:
            save_json(Path(args.json), out)
        body = render(out, list(out["cells"][0]["methods"]))
        print(body)
        if not args.no_write:
            write_section("classification", body)
        return 0
    torch.set_num_threads(1)
    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    t0 = time.time()
    cells = []
    for rate, seed in tqdm([(r, s) for r in rates for s in seeds], desc="classification", unit="cell"):
        config_with = lambda extra, rate=rate, seed=seed: load_config(  # noqa: E731
            args.config, [*args.overrides, f"seed={seed}", f"data.noise.label_noise={rate}", *extra])
        cells.append({"rate": rate, "seed": seed, **run_cell(config_with, methods)})
        print(f"rate {rate} seed {seed}: teacher {cells[-1]['teacher']['accuracy']:.4f} "
              + " ".join(f"{k} {v['accuracy']:.4f}" for k, v in cells[-1]["methods"].items()), flush=True)
    minutes = (time.time() - t0) / 60
    out = {"machine": machine(), "minutes": minutes, "config": args.config, "overrides": args.overrides,
           "rates": rates, "seeds": seeds, "cells": cells}
    if args.json:
        save_json(Path(args.json), out)
    body = render(out, methods)
    print(body)
    if not args.no_write:
        write_section("classification", body)
    return 0


def render(out: dict, methods: list[str]) -> str:
    cells, rates = out["cells"], out["rates"]
    acc = lambda rate, m: [c["methods"][m]["accuracy"] for c in cells if c["rate"] == rate]  # noqa: E731
    lines = [
        "Command: `python benchmarks/classification.py` "
        f"({out['minutes']:.0f} min on {out['machine']}"
        + (f", as {out['parallel_processes']} processes of one noise rate each (`--rates R --json F`, then "
           "`--merge F...`)" if out.get("parallel_processes") else "")
        + "); raw numbers in `benchmarks/results/classification.json`.",
        "",
        f"`configs/digits.yaml`: digits 8x8, CNN teacher with SRL (tau 0.9), MLP student [32]; symmetric label "
        f"noise; seeds {out['seeds']}. Test accuracy (clean labels, 450 images) mean ± std over seeds; "
        "in brackets the share of training samples back-propagated per epoch where a method leaves samples out.",
        "",
        "| method | " + " | ".join(f"noise {r:g}" for r in rates) + " |",
        "| --- |" + " --- |" * len(rates),
        "| teacher (CNN) | " + " | ".join(mean_std([c["teacher"]["accuracy"] for c in cells if c["rate"] == r])
                                         for r in rates) + " |",
    ]
    names = {"kd_teacher_only": "kd, alpha = 0 (teacher only; reference)"}
    for m in methods:
        cols = []
        for r in rates:
            used = [c["methods"][m]["samples_used"] for c in cells if c["rate"] == r]
            cols.append(mean_std(acc(r, m)) + (f" [{np.mean(used):.2f}]" if np.mean(used) < 0.999 else ""))
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cols) + " |")
    if all("ka_audit" in c for c in cells):
        audit = lambda r, k: np.mean([c["ka_audit"][k] for c in cells if c["rate"] == r])  # noqa: E731
        lines += ["", "Where the probability shift (ka) acts: training rows whose teacher argmax differs from "
                  "the given label, mean over seeds:", "",
                  "| noise | rows shifted | label wrong on them | teacher right on them |", "| --- | --- | --- | --- |"]
        lines += [f"| {r:g} | {audit(r, 'shifted_share'):.3f} | {audit(r, 'label_wrong_on_shifted'):.3f} | "
                  f"{audit(r, 'teacher_right_on_shifted'):.3f} |" for r in rates]
    lines += ["", "Selective risk (error rate on the kept test samples) at each coverage, mean over seeds:", "",
              "| noise | model, abstains on | " + " | ".join(f"{c} %" for c in COVS) + " |",
              "| --- | --- |" + " --- |" * len(COVS)]
    for r in rates:
        rc = [c for c in cells if c["rate"] == r]
        for label, m, key in [("kd, softmax confidence", "kd", "risk_softmax"),
                              ("ka_gambler, softmax confidence", "ka_gambler", "risk_softmax"),
                              ("ka_gambler, abstain output", "ka_gambler", "risk_abstain")]:
            if m in methods:
                vals = [np.mean([c["methods"][m][key][cov] for c in rc]) for cov in COVS]
                lines.append(f"| {r:g} | {label} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
