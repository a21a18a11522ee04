"""Knob sweep for the classification methods: settings compared on the NOISY validation split
(what a user has), test accuracy shown beside it. The defaults in pipeline/config/ were chosen by
the validation column (distill.lr.eta = 0.5; distill.ka.payoff automatic = (1 + m) / 2).

    python benchmarks/classification_knobs.py 0.4 '{"kd": ["kd", []], "lr_ds eta 0.5": ["lr_ds", ["distill.lr.eta=0.5"]]}'

Arguments: the label-noise rate, and a JSON map name -> [method, [--set overrides]]; seeds 0, 1, 2.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import torch

from common import ROOT
from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.metrics import classification_metrics
from pipeline.stages.distill import train_student
from pipeline.stages.teacher import train_teacher
from pipeline.train import predict


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    rate, settings = float(sys.argv[1]), json.loads(sys.argv[2])
    config = str(ROOT / "configs" / "digits.yaml")
    res: dict[str, dict[str, list[float]]] = {}
    for seed in (0, 1, 2):
        base = load_config(config, [f"seed={seed}", f"data.noise.label_noise={rate}"])
        splits = make_dataset(base.data, seed)
        _, _, yt, srl = train_teacher(base, splits)
        for name, (method, overrides) in settings.items():
            cfg = load_config(config, [f"seed={seed}", f"data.noise.label_noise={rate}", *overrides])
            student, _, m = train_student(cfg, splits, yt, method, srl["significance"])
            abstain = m.abstains()
            test = classification_metrics(predict(student, splits.x["test"])[0], splits.y_clean["test"], abstain)
            val = classification_metrics(predict(student, splits.x["val"])[0], splits.y["val"], abstain)
            r = res.setdefault(name, {"val": [], "test": [], "r80s": [], "r80a": []})
            r["val"].append(val["accuracy"])
            r["test"].append(test["accuracy"])
            r["r80s"].append(test["risk_softmax"]["80"])
            r["r80a"].append(test.get("risk_abstain", {}).get("80", np.nan))
    print("| rate | setting | val accuracy (noisy labels) | test accuracy | risk@80 % softmax | risk@80 % abstain |")
    print("|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {rate:g} | {name} | {np.mean(r['val']):.4f} | {np.mean(r['test']):.4f} | {np.mean(r['r80s']):.4f} | "
              f"{np.mean(r['r80a']):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
