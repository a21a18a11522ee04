"""The claims table at the top of docs/BENCHMARKS.md (issue 18, item 6), from the saved results.

    python benchmarks/claims.py        # no training: reads benchmarks/results/*.json, rewrites its section

One row per (paper's claim, setting): the paired effect over the report seeds with its 95 % t
interval, the verdict (reproduced: the interval is on the claimed side of 0; not shown: it
includes 0; contradicted: it is on the other side) and the command that measured it.
"""

from __future__ import annotations

import json

import numpy as np

from common import RESULTS, write_section
from protocol import paired

POSE_COMMAND = "python benchmarks/pose.py --seeds S"  # one run per report seed S


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(p, lower_is_claimed: bool = True) -> str:
    if p.verdict == "no difference shown":
        return "not shown"
    return "reproduced" if (p.verdict == "better") == lower_is_claimed else "contradicted"


def _row(claim, setting, p, unit, command, lower_is_claimed=True, sign=1.0):
    """``p`` is a Paired of errors; ``sign`` -1 shows it as an accuracy difference."""
    lo, hi = sorted((sign * p.ci_low, sign * p.ci_high))
    digits = 2 if abs(p.mean) >= 1 else 4
    effect = (f"{sign * p.mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {unit} ({p.relative:+.1%} rel.), "
              f"{p.wins}/{p.n}")
    return f"| {claim} | {setting} | {effect} | {_verdict(p, lower_is_claimed)} | `{command}` |"


def tor_rows() -> list[str]:
    rows = []
    d = _load("tor_defaults.json")
    if d:
        seeds = d["report_seeds"]

        def errs(name, p):
            return [next(r["test_rmse"] for r in d["report"] if (r["name"], r["seed"], r["fraction"]) == (name, s, p))
                    for s in seeds]
        for p in (0.1, 0.4):
            rows.append(_row("TOR: rejecting labels far from the teacher beats training on them (tor_mt − scratch)",
                             f"toy, {p:.0%} gross outliers", paired(errs("tor_mt (selected)", p), errs("scratch", p)),
                             "RMSE", "python benchmarks/tor_defaults.py"))
        for p in (0.1, 0.2, 0.4):
            rows.append(_row("Multi-task: the teacher head helps the label head (tor_mt − tor)",
                             f"toy, {p:.0%} gross outliers", paired(errs("tor_mt (selected)", p), errs("tor", p)),
                             "RMSE", "python benchmarks/tor_defaults.py"))
    for task in ("toy", "digits_rotation", "pose"):
        t = _load(f"tor_settings_{task}.json")
        if not t:
            continue
        seeds = t["report_seeds"]
        unit = "RMSE" + {"digits_rotation": " (deg)", "pose": " (deg and log2, reduced scale)"}.get(task, "")

        def errs(kind, name):
            return [next(r["test_rmse"] for r in t["report"] if (r["kind"], r["name"], r["seed"]) == (kind, name, s))
                    for s in seeds]
        for kind in t["kinds"]:
            command = f"python benchmarks/tor_settings.py --tasks {task}" + (f" --kinds {kind}" if task == "pose"
                                                                              else "")
            robust = min(("scratch (huber)", "scratch (l1)"), key=lambda n: np.mean(errs(kind, n)))
            rows.append(_row("TOR beats scratch (tor_mt − scratch)", f"{task}, {kind}",
                             paired(errs(kind, "tor_mt"), errs(kind, "scratch")), unit,
                             command))
            rows.append(_row(f"TOR beats a robust loss (tor_mt − {robust}, the better one)", f"{task}, {kind}",
                             paired(errs(kind, "tor_mt"), errs(kind, robust)), unit,
                             command))
            rows.append(_row("Multi-task: the teacher head helps (tor_mt − tor)", f"{task}, {kind}",
                             paired(errs(kind, "tor_mt"), errs(kind, "tor")), unit,
                             command))
    pose = _load("pose.json")
    if pose and "accuracy" in pose:
        acc = pose["accuracy"]
        seeds = acc["seeds"]
        for student in sorted({r["student"] for r in acc["rows"] if "student" in r}):
            def errs(method, out):
                return [next(r["rmse"][out] for r in acc["rows"] if r.get("student") == student
                             and r["method"] == method and r["seed"] == s) for s in seeds]
            for out in acc["rows"][0]["rmse"]:  # each output in its unit (roll in degrees, log2 scale)
                rows.append(_row("TOR beats scratch (tor_mt − scratch)", f"pose, {student}, 20 % outliers, {out}",
                                 paired(errs("tor_mt", out), errs("scratch", out)), "RMSE", POSE_COMMAND))
                rows.append(_row("Multi-task: the teacher head helps (tor_mt − tor)", f"pose, {student}, {out}",
                                 paired(errs("tor_mt", out), errs("tor", out)), "RMSE", POSE_COMMAND))
    return rows


def classification_rows() -> list[str]:
    c = _load("classification_claims.json")
    if not c:
        return []
    rep = sorted(c["report"], key=lambda r: r["seed"])
    cmd = "python benchmarks/classification_claims.py"

    def err(setting, name, key="accuracy"):
        vals = [r["runs"][name][key] for r in rep if r["setting"] == setting]
        return [1 - v for v in vals] if key == "accuracy" else vals

    def acc_row(claim, setting, label, a, b):
        return _row(claim, label, paired(err(setting, a), err(setting, b)), "accuracy", cmd, sign=-1.0)

    rows = []
    if any(r["setting"] == "fallible" for r in rep):
        label = "digits, clean labels, fallible teacher"
        rows += [acc_row("Label revision improves KD (lr − kd)", "fallible", label, "lr", "kd"),
                 acc_row("Data selection improves KD (ds − kd), teacher log p(y) score", "fallible", label, "ds",
                         "kd"),
                 acc_row("Data selection improves KD (ds − kd), influence score", "fallible", label, "ds (influence)",
                         "kd"),
                 acc_row("Label revision + data selection improve KD (lr_ds − kd)", "fallible", label, "lr_ds", "kd"),
                 acc_row("Knowledge adjustment improves KD (ka − kd)", "fallible", label, "ka", "kd")]
    if any(r["setting"] == "srl" for r in rep):
        label = "digits, clean labels, SRL teacher"
        rows += [acc_row("Significance picks the samples worth distilling (significance − same weights shuffled)",
                         "srl", label, "significance", "significance (shuffled)"),
                 acc_row("Self-regulation picks the samples worth distilling (regulated − random share)", "srl",
                         label, "regulated", "kd_random @ regulated"),
                 acc_row("Hybrid picks the samples worth distilling (hybrid − random share)", "srl", label, "hybrid",
                         "kd_random @ hybrid"),
                 acc_row("An SRL teacher distils better (kd from SRL teacher − from plain teacher)", "srl", label,
                         "kd", "kd, teacher without SRL")]
    if any(r["setting"] == "abstain" for r in rep):
        rows.append(_row("The gambler's abstain output ranks errors last (AURC, abstain − softmax, same student)",
                         "digits, 40 % flipped labels", paired(err("abstain", "ka_gambler", "aurc_abstain"),
                                                               err("abstain", "ka_gambler", "aurc_softmax")),
                         "AURC", cmd))
    return rows


def main() -> int:
    lines = ["## Claims: each paper's idea in its own setting (issue 18)", "",
             "Regenerate: `python benchmarks/claims.py` (no training: it reads `benchmarks/results/`; each row's own "
             "command re-measures it). Effects are paired over the report seeds (the selection seeds never report): "
             "mean [95 % t interval] in the named unit, the change relative to the baseline's error (rel.), and "
             "the seeds where the claimed side won. For accuracy rows a positive effect means more accurate. "
             "*reproduced*: the interval is on the claimed side of 0; *not shown*: it includes 0; *contradicted*: "
             "it is on the other side.", "",
             "| claim | setting | paired effect | verdict | command |", "|---|---|---|---|---|",
             *tor_rows(), *classification_rows()]
    body = "\n".join(lines)
    print(body)
    write_section("claims", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
