"""TOR and the teacher head under several kinds of annotation error (issue 18, item 2).

    python benchmarks/tor_settings.py --tasks toy               # each task is one benchmark (<= 15 min on
    python benchmarks/tor_settings.py --tasks digits_rotation   # 2 cores); each rewrites the shared section
    python benchmarks/tor_settings.py --tasks pose --kinds near    # pose: one kind of error per run
    python benchmarks/tor_settings.py --tasks toy --report-seeds 0,1 --no-write   # a quick look

Per task (the 1-D toy; 16x16 rotated digits, a CNN feature extractor; the pose task's face crops, a
ResNet-18 teacher and a MobileNetV3-Small student, at a reduced scale) and kind of error (Gaussian
noise only; *near* outliers, drawn from 1.5x the label range; *gross* outliers, from 10x it) the
rows are: scratch (MSE), scratch with a robust loss (Huber, L1), kd with alpha selected, tor (label
head only), two heads without rejection (tor_mt with a threshold nothing exceeds) and tor_mt. kd's
alpha is selected on the noisy validation split of the selection seeds with the shipped 0.5 as the
incumbent (benchmarks/protocol.py, rule 3); TOR's constants are the shipped ones (chosen by
benchmarks/tor_defaults.py). The report is the clean test RMSE of the report seeds, paired by seed,
and the teacher head's own RMSE against the clean test labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from common import RESULTS, ROOT, machine, protocol_arguments, replace_rows, run_jobs, save_json, write_section
from protocol import SELECTION_SEEDS, challenge, describe_seeds, paired, select, validation_score

TASKS = {  # config, overrides (for time), label half-range (for the outlier ranges), unit
    "toy": (None, [], 1.0, ""),
    "digits_rotation": (str(ROOT / "configs" / "digits_rotation.yaml"),
                        ["data.n_train=1200", "data.n_val=300", "teacher.train.epochs=25",
                         "distill.train.epochs=40", "distill.train.patience=10"], 45.0, "°"),
    # the shipped pose task (ResNet-18 teacher, MobileNetV3-Small 0.5 student) at a reduced scale for time;
    # its noise is in units of each output's std, and a uniform label's half-range is sqrt(3) std
    "pose": (str(ROOT / "configs" / "pose_mobilenet.yaml"),
             ["data.n_train=600", "data.n_val=150", "data.n_test=400", "teacher.train.epochs=10",
              "teacher.train.patience=4", "distill.train.epochs=10", "distill.train.patience=4"], 3 ** 0.5,
             "° and log2 units over both outputs, roll dominates"),
}
NOISE = {  # kind -> (Gaussian sigma in units of the label half-range, outlier fraction, outlier half-range)
    "gaussian": (0.15, 0.0, None),
    "near": (0.05, 0.2, 1.5),
    "gross": (0.05, 0.2, 10.0),
}
ALPHAS = {f"alpha {a:g}": [f"distill.kd.alpha={a}"] for a in (0.1, 0.5, 0.9)}
INCUMBENT = "alpha 0.5"
NO_REJECTION = ["distill.tor.delta_rule=absolute", "distill.tor.delta=1e9"]
ROWS = {  # row -> (method, overrides)
    "scratch": ("scratch", []),
    "scratch (huber)": ("scratch", ["distill.scratch.loss=huber"]),
    "scratch (l1)": ("scratch", ["distill.scratch.loss=l1"]),
    "kd": ("kd", None),  # the selected alpha
    "tor": ("tor", []),
    "two heads, no rejection": ("tor_mt", NO_REJECTION),
    "tor_mt": ("tor_mt", []),
}


def noise_overrides(task: str, kind: str) -> list[str]:
    half = TASKS[task][2]
    sigma, frac, out = NOISE[kind]
    sets = [f"data.noise.sigma={sigma * half:g}", f"data.noise.outlier_fraction={frac}"]
    if out is not None:
        sets += [f"data.noise.outlier_low={-out * half:g}", f"data.noise.outlier_high={out * half:g}"]
    return sets


def _job(task: str, kind: str, seed: int, kd_sets: list[str] | None) -> list[dict]:
    """One data draw and teacher; ``kd_sets`` None: the kd alpha grid (selection), else every row."""
    import torch

    torch.set_num_threads(1)  # one core per process
    from pipeline.config import load_config
    from pipeline.data import make_dataset
    from pipeline.metrics import rmse
    from pipeline.stages.distill import train_student
    from pipeline.stages.teacher import train_teacher
    from pipeline.train import predict

    path, fast, _, _ = TASKS[task]
    base = [*fast, f"seed={seed}", *noise_overrides(task, kind)]
    cfg = load_config(path, base)
    splits = make_dataset(cfg.data, cfg.seed)
    _, _, yt, _ = train_teacher(cfg, splits)
    rows = ({name: ("kd", sets) for name, sets in ALPHAS.items()} if kd_sets is None
            else {name: (m, kd_sets if sets is None else sets) for name, (m, sets) in ROWS.items()})
    out = []
    for name, (method, sets) in rows.items():
        student, _, _ = train_student(load_config(path, [*base, *sets]), splits, yt, method)
        val, test = predict(student, splits.x["val"]), predict(student, splits.x["test"])
        out.append({"task": task, "kind": kind, "seed": seed, "name": name,
                    "val_score": validation_score(val[0], splits.y["val"]),
                    "test_rmse": rmse(test[0], splits.y_clean["test"]),
                    "teacher_head_rmse": rmse(test[1], splits.y_clean["test"]),
                    "teacher_rmse": rmse(yt["test"], splits.y_clean["test"])})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", required=True, help=f"comma-separated, from {', '.join(TASKS)}; one task per run "
                    "keeps each run within 15 min on 2 cores")
    ap.add_argument("--kinds", default=",".join(NOISE))
    protocol_arguments(ap)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tasks, kinds = args.tasks.split(","), args.kinds.split(",")
    if unknown := [t for t in tasks if t not in TASKS]:
        ap.error(f"--tasks: unknown {', '.join(unknown)}; allowed: {', '.join(TASKS)}")
    report_seeds = args.report_seeds
    t0 = time.time()
    cells = [(t, k) for t in tasks for k in kinds]
    sel = run_jobs(_job, [(t, k, s, None) for t, k in cells for s in SELECTION_SEEDS], args.workers, "selection")
    chosen, duels = {}, {}
    for t, k in cells:
        score = {(r["name"], r["seed"]): r["val_score"] for r in sel if (r["task"], r["kind"]) == (t, k)}
        cell = lambda name, seed: score[(name, seed)]  # noqa: E731
        chosen[f"{t}/{k}"], means = select(ALPHAS, cell, incumbent=INCUMBENT)
        lowest = min(means, key=means.get)
        duels[f"{t}/{k}"] = challenge(cell, lowest, INCUMBENT).cell() if lowest != INCUMBENT else None
    rep = run_jobs(_job, [(t, k, s, ALPHAS[chosen[f"{t}/{k}"]]) for t, k in cells for s in report_seeds],
                   args.workers, "report")
    out = {"machine": machine(), "minutes": (time.time() - t0) / 60, "workers": args.workers, "selection": sel,
           "report": rep, "chosen": chosen, "duels": duels, "selection_seeds": list(SELECTION_SEEDS),
           "report_seeds": report_seeds, "tasks": tasks, "kinds": kinds}
    if args.no_write:
        print(render([out]))
        return 0
    for t in tasks:  # one results file per task: the tasks can be re-run (and timed) on their own
        save_json(RESULTS / f"tor_settings_{t}.json", merged(RESULTS / f"tor_settings_{t}.json", {
            **out, "tasks": [t], "report": [r for r in rep if r["task"] == t],
            "selection": [r for r in sel if r["task"] == t]}))
    body = render([json.loads((RESULTS / f"tor_settings_{t}.json").read_text()) for t in TASKS
                   if (RESULTS / f"tor_settings_{t}.json").exists()])
    print(body)
    write_section("tor_settings", body)
    return 0


def merged(path, out: dict) -> dict:
    """``out`` with the kinds of error a saved result of the same task and seeds has and ``out`` lacks (a task
    too slow for one 15-min run is run one ``--kinds`` at a time); ``minutes`` then adds up the runs."""
    if not path.exists():
        return {**out, "runs": [{"kinds": out["kinds"], "minutes": out["minutes"]}]}
    old = json.loads(path.read_text())
    if (old["report_seeds"], old["selection_seeds"]) != (out["report_seeds"], out["selection_seeds"]):
        return {**out, "runs": [{"kinds": out["kinds"], "minutes": out["minutes"]}]}
    keep = [k for k in old["kinds"] if k not in out["kinds"]]
    runs = [r for r in old.get("runs", [{"kinds": old["kinds"], "minutes": old["minutes"]}])
            if not set(r["kinds"]) & set(out["kinds"])] + [{"kinds": out["kinds"], "minutes": out["minutes"]}]
    return {**out, "kinds": [k for k in NOISE if k in keep or k in out["kinds"]], "runs": runs,
            "minutes": sum(r["minutes"] for r in runs),
            "report": replace_rows(old["report"], out["report"], lambda r: r["kind"]),
            "selection": replace_rows(old["selection"], out["selection"], lambda r: r["kind"]),
            "chosen": {**{c: v for c, v in old["chosen"].items() if c.split("/")[1] in keep}, **out["chosen"]},
            "duels": {**{c: v for c, v in old["duels"].items() if c.split("/")[1] in keep}, **out["duels"]}}


def render(outs: list[dict]) -> str:
    """The section from one result per task (each run of ``--tasks T`` saves its own)."""
    lines = ["## TOR under several kinds of annotation error (issue 18)", "",
             "Regenerate, one benchmark per task: `python benchmarks/tor_settings.py --tasks toy`, `--tasks "
             "digits_rotation`; the pose task one kind of error per run, `--tasks pose --kinds K` for K in "
             "gaussian, near, gross; raw numbers in "
             "`benchmarks/results/tor_settings_<task>.json`. "
             + "; ".join(f"{', '.join(o['tasks'])}: {_minutes(o)}, {o['workers']} processes, on "
                         f"{o['machine']}" for o in outs) + ".", "",
             describe_seeds(outs[0]["selection_seeds"], outs[0]["report_seeds"]), "",
             "Kinds of error (train and val labels; test labels clean): *gaussian*: noise of sigma 0.15 x the label "
             "half-range, no outliers; *near*: sigma 0.05 x, and 20 % outliers drawn uniformly from 1.5 x the label "
             "range; *gross*: the same with 10 x the range. Toy: labels in [-1, 1]; digits_rotation: angles in "
             "[-45, 45] degrees, 1,200 training images, at most 25 teacher / 40 student epochs (for time); pose: "
             "`configs/pose_mobilenet.yaml` (roll in [-30, 30] degrees and log2 scale in [-0.5, 0.5] of real face "
             "crops, ResNet-18 teacher, MobileNetV3-Small 0.5 student) with 600 training crops and at most 10 "
             "epochs each (for time), noise in units of each output's std (half-range sqrt(3) std). "
             "kd's alpha is selected per cell (0.5 the incumbent). Cells: clean test RMSE, mean over the report seeds; "
             "the paired difference against scratch, mean [95 % t interval] (relative), wins.", ""]
    for out in outs:
        lines += _task_lines(out)
    return "\n".join(lines).rstrip()


def _minutes(out: dict) -> str:
    runs = out.get("runs") or [{"kinds": out["kinds"], "minutes": out["minutes"]}]
    if len(runs) == 1:
        return f"{runs[0]['minutes']:.1f} min"
    return "one run per kind of error (`--kinds K`): " + ", ".join(f"{'+'.join(r['kinds'])} {r['minutes']:.1f} min"
                                                                  for r in runs)


def _task_lines(out: dict) -> list[str]:
    rep, seeds, lines = out["report"], out["report_seeds"], []

    def errs(t, k, name, key="test_rmse"):
        return [next(r[key] for r in rep if (r["task"], r["kind"], r["name"], r["seed"]) == (t, k, name, s))
                for s in seeds]

    for t in out["tasks"]:
        unit = TASKS[t][3]
        lines += [f"### {t}" + (f" (RMSE in {unit})" if unit else ""), "",
                  "| row | " + " | ".join(out["kinds"]) + " |", "|---" * (len(out["kinds"]) + 1) + "|"]
        lines.append("| teacher | " + " | ".join(f"{np.mean(errs(t, k, 'scratch', 'teacher_rmse')):.4g}"
                                                  for k in out["kinds"]) + " |")
        for name in ROWS:
            cells = []
            for k in out["kinds"]:
                e = errs(t, k, name)
                extra = f" (alpha {out['chosen'][f'{t}/{k}'].split()[-1]})" if name == "kd" else ""
                cells.append(f"{np.mean(e):.4g}{extra}" if name == "scratch"
                             else f"{np.mean(e):.4g}{extra}; {paired(e, errs(t, k, 'scratch')).cell(4)}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| tor_mt's teacher head | " + " | ".join(
            f"{np.mean(errs(t, k, 'tor_mt', 'teacher_head_rmse')):.4g}" for k in out["kinds"]) + " |")
        lines += ["", "Answers per kind of error: does tor_mt beat scratch, the best robust scratch, and does the "
                  "teacher head add anything over tor (tor_mt − tor)?", ""]
        for k in out["kinds"]:
            vs = paired(errs(t, k, "tor_mt"), errs(t, k, "scratch"))
            robust = min(("scratch (huber)", "scratch (l1)"), key=lambda n: np.mean(errs(t, k, n)))
            vr = paired(errs(t, k, "tor_mt"), errs(t, k, robust))
            head = paired(errs(t, k, "tor_mt"), errs(t, k, "tor"))
            lines.append(f"- {k}: vs scratch {vs.verdict} ({vs.relative:+.1%}, {vs.wins}/{vs.n}); vs {robust} "
                         f"{vr.verdict} ({vr.relative:+.1%}, {vr.wins}/{vr.n}); teacher head {head.verdict} "
                         f"({head.relative:+.1%}, {head.wins}/{head.n}).")
        lines.append("")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
