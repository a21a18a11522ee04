"""Real mobile networks on the pose task (issue 15): paired over seeds, and the shipped configs end to end.

    python benchmarks/pose.py                     # part 2: the end-to-end runs (15 min), alone on the machine
    for s in 0 1 2 3 4 5 6 7 8 9; do python benchmarks/pose.py --seeds $s; done   # part 1: 9-11 min per seed
    python benchmarks/pose.py --seeds 0 --no-write   # a quick look at one seed
    python benchmarks/pose.py --render            # no training: the section from the saved results

Each run rewrites its section of docs/BENCHMARKS.md from everything saved so far: a run of ``--seeds``
replaces those seeds' rows (for its ``--students``) and keeps the others, so the report grows one seed
per run (a seed of both students takes 9-11 min on 2 cores; all ten in one run would take 90).

1. **Accuracy over seeds.** For each report seed: one data draw of configs/pose_mobilenet.yaml
   (real LFW face crops rolled and scaled by known amounts, 20 % gross outlier labels, split by
   face), one ResNet-18 teacher, and from it the students scratch / tor / tor_mt of each student
   config (MobileNetV3-Small 0.5: configs/pose_mobilenet.yaml; MobileNetV2 0.35:
   configs/pose_mobilenet_v2.yaml). Runs of one seed share the data and the teacher; each
   output's test RMSE is against the clean labels, in its unit; comparisons are paired by seed
   (benchmarks/protocol.py) over the seeds every student has all rows of. Nothing is selected here:
   the configs' settings were fixed before this benchmark ran, and the report seeds are the
   protocol's (never the selection seeds).
2. **The shipped configs end to end** (``python -m pipeline run --config ...`` in a child process,
   run alone, log to a file): wall time, the int8 files' RMSE against the fp32 student on the
   qemu-aarch64 outputs, fp32 parity, XNNPACK delegation and the NNAPI delegate's verdict of every
   TFLite file and the emulated aarch64 p50 of the student's int8 files against the teacher's fp32 p50.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common import RESULTS, ROOT, machine, pipeline_run, replace_rows, run_jobs, save_json, write_section
from protocol import REPORT_SEEDS, describe_seeds, paired

STUDENTS = {"mobilenet_v3_small 0.5": ROOT / "configs" / "pose_mobilenet.yaml",
            "mobilenet_v2 0.35": ROOT / "configs" / "pose_mobilenet_v2.yaml"}
METHODS = ("scratch", "tor", "tor_mt")
TRAINING = ("data", "teacher", "distill", "student")  # the config sections a row's numbers depend on
RESULTS_FILE = RESULTS / "pose.json"
TARGET_RATIO = 0.8  # issue 15: tor_mt RMSE <= 0.8 x scratch, per output
INT8_TARGET = 1.03


def _teacher(seed: int, cache: str) -> list[dict]:
    """One data draw and its teacher; the teacher's predictions are saved for the student jobs."""
    import torch

    torch.set_num_threads(1)  # one core per process
    from pipeline.config import load_config
    from pipeline.data import make_dataset
    from pipeline.stages.teacher import train_teacher

    cfg = load_config(STUDENTS["mobilenet_v3_small 0.5"], [f"seed={seed}"])
    splits = make_dataset(cfg.data, seed)
    t0 = time.perf_counter()
    _, hist, yt, _ = train_teacher(cfg, splits)
    np.savez(Path(cache) / f"teacher_{seed}.npz", **yt)
    return [{"seed": seed, "what": "teacher", **_per_output(yt["test"], splits),
             "best_epoch": hist.best_epoch + 1, "seconds": time.perf_counter() - t0}]


def _student(seed: int, student: str, method: str, cache: str) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from pipeline.config import load_config
    from pipeline.data import make_dataset
    from pipeline.stages.distill import train_student
    from pipeline.train import predict

    cfg = load_config(STUDENTS[student], [f"seed={seed}", "distill.baselines=[]"])
    splits = make_dataset(cfg.data, seed)
    with np.load(Path(cache) / f"teacher_{seed}.npz") as z:
        yt = {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    model, hist, _ = train_student(cfg, splits, yt, method)
    return [{"seed": seed, "what": f"{student} {method}", "student": student, "method": method,
             **_per_output(predict(model, splits.x["test"])[0], splits),
             "best_epoch": hist.best_epoch + 1, "seconds": time.perf_counter() - t0}]


def _per_output(pred: np.ndarray, splits) -> dict:
    y = splits.y_clean["test"]
    pred = np.asarray(pred).reshape(y.shape)
    return {"rmse": {name: float(np.sqrt(np.mean((pred[:, i] - y[:, i]) ** 2)))
                     for i, name in enumerate(splits.output_names)}}


def accuracy(seeds: list[int], workers: int, students: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="pocketkd-pose-bench-") as cache:
        rows = run_jobs(_teacher, [(s, cache) for s in seeds], workers, "teachers")
        jobs = [(s, st, m, cache) for st in students for m in METHODS for s in seeds]
        rows += run_jobs(_student, jobs, workers, "students")
    return rows


def config_digests() -> dict[str, str]:
    """Each student config's training sections (data, teacher, distill, student; the seed aside) and the
    pipeline's version, hashed: saved rows of a config that changed since are dropped."""
    from pipeline.config import load_config
    from pipeline.version import __version__

    return {st: hashlib.sha256(f"{__version__}:{load_config(path, ['seed=0']).section_hash(*TRAINING)}".encode())
            .hexdigest()[:12] for st, path in STUDENTS.items()}


def merge_accuracy(old: dict | None, rows: list[dict], run: dict, digests: dict[str, str]) -> dict:
    """The saved accuracy part with one more run: its rows replace the saved rows of the same seed and
    ``what`` (the teacher rows come from the first student's config), saved rows of a config whose digest
    changed are dropped, and ``seeds`` lists the seeds with a teacher row and every student x method row."""
    teacher_digest = digests[next(iter(STUDENTS))]

    def current(r: dict) -> bool:
        return r.get("config") == (digests.get(r["student"]) if "student" in r else teacher_digest)

    rows = [{**r, "config": digests[r["student"]] if "student" in r else teacher_digest} for r in rows]
    kept = [r for r in (old or {}).get("rows", []) if current(r)]
    merged = sorted(replace_rows(kept, rows, lambda r: (r["seed"], r["what"])),
                    key=lambda r: (r["seed"], r["what"] != "teacher", r["what"]))
    have = {(r["seed"], r["what"]) for r in merged}
    needed = ["teacher"] + [f"{st} {m}" for st in STUDENTS for m in METHODS]
    seeds = sorted({s for s, _ in have if all((s, w) in have for w in needed)})
    runs = [r for r in (old or {}).get("runs", []) if not (set(r["seeds"]) <= set(run["seeds"])
                                                            and set(r["students"]) <= set(run["students"]))]
    return {"seeds": seeds, "rows": merged, "runs": runs + [run]}


def runs_note(acc: dict) -> str:
    """Where the rows come from: the runs that made them (seeds, students, minutes, machine)."""
    machines = sorted({r["machine"] for r in acc["runs"]})
    parts = [f"seeds {','.join(map(str, r['seeds']))}"
             + ("" if set(r["students"]) == set(STUDENTS) else f" ({', '.join(r['students'])})")
             + f" {r['minutes']:.1f} min" for r in acc["runs"]]
    return (f"{len(acc['runs'])} runs, {acc['runs'][0]['workers']} processes each: " + "; ".join(parts)
            + "; on " + " / ".join(machines))


def _errs(rows: list[dict], what: str, output: str, seeds: list[int]) -> list[float]:
    return [next(r["rmse"][output] for r in rows if r["what"] == what and r["seed"] == s) for s in seeds]


def accuracy_lines(res: dict) -> list[str]:
    seeds, rows = res["seeds"], res["rows"]
    outputs = list(rows[0]["rmse"])
    lines = [describe_seeds(None, seeds) + " No constant is selected here (the configs were fixed before).", "",
             "Test RMSE per output against the clean labels (mean over seeds), and the paired difference "
             "against scratch / against single-head tor (mean [95 % t interval] (relative), wins):", "",
             "| student | method | " + " | ".join(f"{o} RMSE" for o in outputs) + " | "
             + " | ".join(f"{o} vs scratch" for o in outputs) + " | "
             + " | ".join(f"{o} vs tor" for o in outputs) + " |",
             "|---" * (2 + 3 * len(outputs)) + "|"]
    teacher = [f"{np.mean(_errs(rows, 'teacher', o, seeds)):.4f}" for o in outputs]
    lines.append("| ResNet-18 teacher | l1 | " + " | ".join(teacher) + " |" + " |" * (2 * len(outputs)))
    verdicts = []
    for st in STUDENTS:
        for m in METHODS:
            what = f"{st} {m}"
            means = [f"{np.mean(_errs(rows, what, o, seeds)):.4f}" for o in outputs]
            vs = []
            for base in ("scratch", "tor"):
                for o in outputs:
                    if m == base or (base == "tor" and m != "tor_mt"):
                        vs.append("")
                        continue
                    p = paired(_errs(rows, what, o, seeds), _errs(rows, f"{st} {base}", o, seeds))
                    vs.append(p.cell(4))
            lines.append(f"| {st} | {m} | " + " | ".join(means + vs) + " |")
        for o in outputs:
            mt, sc = np.array(_errs(rows, f"{st} tor_mt", o, seeds)), np.array(_errs(rows, f"{st} scratch", o, seeds))
            per_seed = mt / sc
            mt, sc = mt.mean(), sc.mean()
            head = paired(_errs(rows, f"{st} tor_mt", o, seeds), _errs(rows, f"{st} tor", o, seeds))
            verdicts.append(f"- {st}, {o}: tor_mt / scratch = {mt / sc:.3f} (per seed {per_seed.min():.3f}–"
                            f"{per_seed.max():.3f}; target ≤ {TARGET_RATIO}: "
                            f"{'met' if per_seed.max() <= TARGET_RATIO else 'not met on every seed'}); "
                            f"teacher head (tor_mt vs tor): {head.verdict}, {head.wins}/{head.n} wins, "
                            f"{head.relative:+.1%}.")
    return lines + [""] + verdicts


def end_to_end(config: Path, workdir: Path) -> dict:
    out = workdir / config.stem
    seconds, manifest = pipeline_run(out, "--config", str(config), log=workdir / f"{config.stem}.log")
    exp = json.loads((out / "export.json").read_text())
    arm = json.loads((out / "bench" / "qemu-aarch64.json").read_text())
    rows = [r for r in exp["formats"] if r["model"] == "student" and r.get("file")]
    arm_rows = {r["file"]: r for r in arm["results"]}
    fp32_arm = arm_rows["student.onnx"]["rmse"]
    files = []
    for r in rows:
        a = arm_rows.get(r["file"], {})
        files.append({"format": r["format"], "file": r["file"], "precision": r.get("precision"),
                      "status": r["status"], "max_abs_diff_vs_torch": r.get("max_abs_diff_vs_torch"),
                      "arm_rmse": a.get("rmse"), "arm_ratio": a["rmse"] / fp32_arm if "rmse" in a else None,
                      "arm_p50_ms": (a.get("latency_ms") or {}).get("p50"), "xnnpack": r.get("xnnpack"),
                      "nnapi": (r.get("nnapi_delegate") or {}).get("summary")})
    teacher = arm_rows["teacher.onnx"]
    return {"config": str(config.relative_to(ROOT)), "seconds": seconds, "files": files,
            "teacher_arm_p50_ms": teacher["latency_ms"]["p50"],
            "y_scale": float(np.abs(np.load(out / "data.npz")["y_clean_test"]).max()),
            "stages": {k: v.get("seconds") for k, v in manifest["stages"].items()}}


def end_to_end_lines(runs: list[dict]) -> list[str]:
    lines = []
    for run in runs:
        lines += [f"**`python -m pipeline run --config {run['config']}`**: {run['seconds'] / 60:.1f} min wall "
                  f"(target ≤ 10 min; stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in run["stages"].items())
                  + f"); teacher fp32 p50 on qemu-aarch64 {run['teacher_arm_p50_ms']:.1f} ms.", "",
                  "| file | status | max abs diff vs PyTorch | RMSE / fp32 on qemu-aarch64 | qemu-aarch64 p50 ms "
                  "| / teacher fp32 p50 | XNNPACK nodes | NNAPI delegate (export/nnapi.py) |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in run["files"]:
            x = f["xnnpack"] or {}
            xn = f"{x['delegated']}/{x['nodes']} in {x['partitions']}" if x else "–"
            ratio = f"{f['arm_ratio']:.3f}" if f["arm_ratio"] is not None else "–"
            p50 = f["arm_p50_ms"]
            lines.append(f"| {f['file']} | {f['status']} | {f['max_abs_diff_vs_torch']:.1e} | {ratio} | "
                         + (f"{p50:.2f} | {p50 / run['teacher_arm_p50_ms']:.4f}" if p50 else "– | –")
                         + f" | {xn} | {f.get('nnapi') or '–'} |")
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", help="part 1 instead of the end-to-end runs: train these report seeds (comma-"
                    "separated; their rows replace those seeds' saved rows; one seed takes 9-11 min on 2 cores)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--render", action="store_true", help="no training: rewrite the section from the saved results")
    ap.add_argument("--students", default=",".join(STUDENTS),
                    help="re-run these students (their seeds and their config's end-to-end run) only; the other "
                         "students' rows are kept from the saved file (the teachers of --seeds are trained again)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else []
    except ValueError:
        ap.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    students = args.students.split(",")
    if unknown := set(students) - set(STUDENTS):
        ap.error(f"--students: unknown {sorted(unknown)}; allowed: {', '.join(STUDENTS)}")
    saved = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    if not (args.render or seeds):  # alone on the machine: their wall time is a result
        with tempfile.TemporaryDirectory(prefix="pocketkd-pose-runs-") as work:
            fresh = [end_to_end(STUDENTS[st], Path(work)) for st in students]
        configs = {r["config"] for r in fresh}
        saved["runs"] = fresh + [r for r in saved.get("runs", []) if r["config"] not in configs]
        saved["runs_machine"] = machine() + ("" if set(students) == set(STUDENTS) else
                                             f" ({', '.join(students)} re-run; the other kept)")
    if seeds and not args.render:
        if unknown := set(seeds) - set(REPORT_SEEDS):
            ap.error(f"--seeds: {sorted(unknown)} are not report seeds; allowed: {list(REPORT_SEEDS)}")
        t1 = time.time()
        rows = accuracy(seeds, args.workers, students)
        run = {"seeds": seeds, "students": students, "minutes": round((time.time() - t1) / 60, 1),
               "workers": args.workers, "machine": machine()}
        saved["accuracy"] = merge_accuracy(saved.get("accuracy"), rows, run, config_digests())
        saved.pop("accuracy_machine", None)
    if not (args.no_write or args.render):
        save_json(RESULTS_FILE, saved)
    lines = ["## Real mobile networks on the pose task (issue 15)", "",
             "Regenerate: `python benchmarks/pose.py --seeds S` for S in 0 … 9 (one seed per run, 9–11 min; each "
             "run keeps the other seeds' saved rows and rewrites this section), and `python benchmarks/pose.py` "
             "(the end-to-end runs, alone on the machine, 15 min).", ""]
    if saved.get("accuracy", {}).get("seeds"):
        lines += [f"### tor_mt, tor and scratch over seeds ({runs_note(saved['accuracy'])})", "",
                  *accuracy_lines(saved["accuracy"]), ""]
    if "runs" in saved:
        lines += [f"### The shipped pose configs end to end (on {saved['runs_machine']})", "",
                  "Accuracy of each file on the qemu-aarch64 outputs (ARM arithmetic), against the fp32 "
                  "student's own RMSE there; emulated latency is not device latency (compare files, not "
                  "devices).", "", *end_to_end_lines(saved["runs"])]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("pose", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
