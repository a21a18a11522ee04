"""PTQ vs quantization-aware fine-tuning (QAT): int8 RMSE / fp32 RMSE per format, same distilled student.

    python -m pipeline run --out R --set seed=S --set data.noise.outlier_fraction=F \\
        --set distill.baselines=[] --only data --only teacher --only distill --only student
    python benchmarks/qat.py R... [--qemu R] [--write]

For each trained run the distilled two-head student (``student_mt.pt``) is deployed twice: as today
(post-training quantization with ``export.int8.prepare``) and after ``pipeline.qat.qat_finetune``
(``qat.enabled=true``, prepare skipped); both are exported with ``pipeline.stages.export_student``
(server files, every int8 format). The RMSE ratios are against the *distilled* fp32 student (before
QAT), so a QAT that only degrades the float model cannot look good. Judged on

* ``exact``: the static QDQ ONNX in an onnxruntime session with ``ORT_DISABLE_ALL`` (Quantize/
  DequantizeLinear + float ops run literally: the int8 arithmetic of a CPU whose int8 sums do not
  saturate), the other ORT int8 files as the export judges them (``export.int8_arith``: the same
  integers without saturation), and the LiteRT files on the host (LiteRT's kernels do not saturate);
* ``qemu``: onnxruntime / LiteRT for aarch64 under qemu (``--qemu`` runs), every int8 file.

The host's own ORT int8 kernels (x86 without VNNI saturates u8s8 sums) are not used for a verdict.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

INT8 = ["onnx_int8", "onnx_int8_dynamic", "ort_int8", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]
OUT = Path(__file__).parent / "results" / "qat.json"


def exact_qdq(path: Path, x: np.ndarray) -> np.ndarray:
    """The QDQ file's exact int8 arithmetic (unfused, as ARM computes it): ``export.int8_arith``."""
    from export.int8_arith import exact_outputs

    return exact_outputs(path, x)


def overrides(use_qat: bool, extra: list[str]) -> list[str]:
    """The run's saved config with QAT switched on or off, at today's default epochs / lr (a saved
    config.yaml may carry older ones) unless ``extra`` (``--set KEY=VALUE``) says otherwise."""
    from pipeline.config import QATConfig

    d = QATConfig()
    return [f"qat.enabled={str(use_qat).lower()}", f"qat.epochs={d.epochs}", f"qat.lr={d.lr}", *extra]


def deploy(run: Path, work: Path, use_qat: bool, extra: list[str]) -> tuple[dict, float]:
    """Write ``work/student.pt`` from the run's two-head student (with or without QAT); (qat record, seconds)."""
    import torch

    from models import drop_teacher_head
    from pipeline import qat
    from pipeline.config import load_config
    from pipeline.data import Splits
    from pipeline.checkpoints import load_checkpoint, save_model

    torch.set_num_threads(1)
    cfg = load_config(run / "config.yaml", overrides(use_qat, extra))
    splits = Splits.load(run / "data.npz")
    two_head = load_checkpoint(run / "student_mt.pt", cfg)
    record, t0 = None, time.perf_counter()
    if use_qat:
        with np.load(run / "teacher_preds.npz") as z:
            yt = {s: z[s] for s in ("train", "val")}
            sig = z["significance_train"] if "significance_train" in z.files else None
        record = qat.qat_finetune(cfg, splits, yt, two_head, sig)
        record["grid_costs"] = grid_costs(cfg, splits, two_head)
    deployed = drop_teacher_head(two_head, cfg.student.keep_head)
    save_model(work / "student.pt", deployed, "deployed", tuple(splits.x["train"].shape[1:]),
               deployed.head.out_features)
    return record, time.perf_counter() - t0


def grid_costs(cfg, splits, student) -> dict | None:
    """Where the int8 error of a QAT'd MLP / CNN student comes from: the clean-test RMSE of its fake-quantized
    function (``pipeline.qat.FakeQuant``, the ranges the exporters calibrate) with every activation grid, and
    with each grid alone, over its float RMSE (the weights are already on their int8 grid, so the float twin
    is the int8-weight model). None for image backbones (``pipeline.qat_graph``)."""
    import copy

    import torch

    from models import ARCHITECTURES
    from pipeline import qat
    from pipeline.metrics import rmse

    if cfg.student.backbone in ARCHITECTURES:
        return None
    m, q = copy.deepcopy(student).eval(), cfg.export.int8
    fq = qat.FakeQuant(m, cfg.student.keep_head, q.float_first_layer, q.float_last_layer)
    fq.calibrate(qat.calibration_rows(cfg, splits.x["train"], splits.y["train"], splits.task))
    x, head = torch.as_tensor(np.ascontiguousarray(splits.x["test"]), dtype=torch.float32), int(
        cfg.student.keep_head != "label")

    def test_rmse(keep: set[int]) -> float:
        for i, (g, qp) in enumerate(zip(fq.grids, saved)):
            g.qparams = qp if i in keep else None
        with torch.no_grad():
            return rmse(m(x)[head].numpy(), splits.y_clean["test"])

    saved = fq.qparams
    base = test_rmse(set())
    return {"fake_quant": test_rmse(set(range(len(saved)))) / base,
            "alone": [test_rmse({i}) / base for i in range(len(saved))]}


def evaluate(run: Path, use_qat: bool, qemu: bool, extra: list[str]) -> dict:
    from pipeline.config import load_config
    from pipeline.data import Splits
    from pipeline.metrics import rmse
    from pipeline.stages.export import export_student

    cfg = load_config(run / "config.yaml", overrides(use_qat, extra))
    splits = Splits.load(run / "data.npz")
    x, y = splits.x["test"], splits.y_clean["test"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("data.npz", "teacher.json", "teacher.pt", "config.yaml"):
            if (run / name).exists():
                shutil.copy(run / name, work / name)
        record, seconds = deploy(run, work, use_qat, extra)
        rows = {r["format"]: r for r in export_student(cfg, work, work / "out", ["onnx_fp32"] + INT8, android=False)
                ["formats"] if r["model"] == "student"}
        out = {"qat": record, "seconds": seconds, "fp32_rmse": rows["onnx_fp32"]["rmse"], "host": {}, "exact": {},
               "qemu": {}, "input_rounding": {f: (rows.get(f, {}).get("input_rounding") or {}).get("rmse_ratio_vs_torch")
                                              for f in ("tflite_int8", "tflite_int8_io")}}
        for f in INT8:
            r = rows.get(f, {})
            if "file" not in r:
                out["host"][f] = None
                continue
            out["host"][f] = r.get("rmse")
            path = work / "out" / r["file"]
            if f == "onnx_int8":
                out["exact"][f] = rmse(exact_qdq(path, x), y)
            else:  # LiteRT on the host; ORT int8 rows: the export's exact int8 arithmetic (export.int8_arith)
                out["exact"][f] = r.get("rmse")
            if qemu:
                from device_bench.targets import parse_target

                res = parse_target("qemu-aarch64").run(path, x, threads=1, warmup=1, runs=1, batch=len(x),
                                                       max_seconds=5, timeout=900)
                out["qemu"][f] = rmse(np.asarray(res["outputs"], dtype=np.float32), y)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--qemu", nargs="*", type=Path, default=[], help="runs also judged on qemu-aarch64 outputs")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--set", action="append", default=[], help="config override for both variants, e.g. qat.lr=1e-4")
    ap.add_argument("--write", action="store_true", help="rewrite the qat section of docs/BENCHMARKS.md")
    ap.add_argument("--render", action="store_true", help="no exports: render --out's saved results")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else []  # runs given again are replaced
    if not args.render:
        for run in dict.fromkeys(list(args.runs) + list(args.qemu)):
            import yaml

            c = yaml.safe_load((run / "config.yaml").read_text())
            from common import machine

            entry = {"run": str(run), "data": c["data"]["name"], "seed": c["seed"],
                     "outliers": c["data"]["noise"]["outlier_fraction"], "machine": machine()}
            for variant in ("ptq", "qat"):
                entry[variant] = evaluate(run, variant == "qat", run in args.qemu, args.set)
            entry["overrides"] = overrides(True, args.set)
            results = [e for e in results if e["run"] != str(run)] + [entry]
            print(json.dumps({k: entry[k] for k in ("run", "seed", "outliers")}),
                  {v: {j: {f: round(r / entry["ptq"]["fp32_rmse"], 3) for f, r in entry[v][j].items() if r}
                       for j in ("exact", "qemu")} for v in ("ptq", "qat")}, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    if args.write or args.render:
        from common import write_section

        write_section("qat", render(results))


def judged(variant: dict, judge: str) -> dict:
    """RMSE per format on ``judge``; for "exact", the ORT int8 rows the export judged on exact int8
    arithmetic (results saved before they were copied into "exact") come from "host"."""
    if judge != "exact":
        return variant[judge]
    return {**{f: variant["host"].get(f) for f in ("onnx_int8_dynamic", "ort_int8")}, **variant["exact"]}


def full_int(variant: dict, judge: str) -> str:
    """The worse full-integer TFLite file's RMSE / own fp32 RMSE / its input_rounding ratio ("–" if unknown)."""
    bounds = variant.get("input_rounding") or {}
    got = [judged(variant, judge).get(f) / variant["fp32_rmse"] / bounds[f]
           for f in ("tflite_int8", "tflite_int8_io") if bounds.get(f) and judged(variant, judge).get(f)]
    return f"{max(got):.3f}" if got else "–"


def grids(variant: dict) -> str:
    """The fake-quantized function / own fp32 with every activation grid; with each alone ("–" if not measured)."""
    g = (variant.get("qat") or {}).get("grid_costs")
    return f"{g['fake_quant']:.3f}; " + " · ".join(f"{a:.3f}" for a in g["alone"]) if g else "–"


def render(results: list[dict]) -> str:
    machines = {}
    for e in results:
        machines.setdefault(e["machine"], []).append(e["data"])
    lines = ["## Quantization-aware distillation vs PTQ (issue 12)", "",
             "Machines: " + "; ".join(f"{', '.join(dict.fromkeys(d))} runs on {m}" for m, d in machines.items())
             + " (the host's own ORT int8 kernels are not used for these figures).",
             "Command: train each run with `python -m pipeline run --out R --set seed=S "
             "--set data.noise.outlier_fraction=F --set distill.baselines=[] --only data --only teacher "
             "--only distill --only student` (pose: `--config configs/pose_mobilenet.yaml`, the outlier fraction "
             "its own), then `python benchmarks/qat.py R... --qemu R0 --write`; raw numbers in "
             "`benchmarks/results/qat.json`.", "",
             "int8 RMSE / RMSE of the *distilled* fp32 student (before QAT), clean test set: PTQ (today: "
             "`export.int8.prepare`) → **QAT** (`qat.enabled=true`, default epochs / lr). *exact*: static QDQ ONNX "
             "in an `ORT_DISABLE_ALL` session, the dynamic ONNX and `.ort` files as the export judges them "
             "(`export.int8_arith`, no 16-bit saturation), LiteRT files on the host; *qemu*: aarch64 onnxruntime / LiteRT "
             "under qemu. fp32 after QAT: the QAT'd student's own float RMSE / the distilled one's.", "",
             "*QAT own*: the worst float-input int8 file (the first four columns) after QAT / the QAT'd "
             "student's own fp32 RMSE (what the export's limit checks). digits_rotation: `configs/digits_rotation.yaml` "
             "with `--set teacher.train.epochs=20` (reduced for time). pose: `configs/pose_mobilenet.yaml` (ResNet-18 "
             "teacher, MobileNetV3-Small 0.5 student: batch norm, hard-swish, squeeze-excite; QAT through "
             "`pipeline/qat_graph.py`), RMSE over both outputs in their units (degrees dominate). Each row is one "
             "training run.", "",
             "*full-int / 8-bit input*: the worse full-integer TFLite file after QAT / the QAT'd student's own fp32 "
             "RMSE, divided by that file's `input_rounding` figure (the QAT'd fp32 student on inputs rounded to the "
             "file's 8-bit input grid / on exact inputs): the target is ≤ 1.02.", "",
             "*fake quant: all grids; each alone* (MLP / CNN students): the QAT'd student's fake-quantized function "
             "(`pipeline.qat.FakeQuant`, the ranges the exporters calibrate) / its own fp32 RMSE, with every 8-bit "
             "activation grid, then with each grid alone; its weights are on their int8 grid in both, so this is "
             "what the activation grids cost. With every grid it matches (within float rounding) the static QDQ "
             "file's `onnx_int8` after QAT / fp32 after QAT: the file computes the trained function.", "",
             "| data, seed, outliers | judged on | fp32 after QAT | " + " | ".join(INT8)
             + " | QAT own | full-int / 8-bit input | fake quant: all grids; each alone | QAT s |",
             "|---" * (len(INT8) + 7) + "|"]
    results = sorted(results, key=lambda e: (e["data"] != "sinusoid", e["data"], e["outliers"], e["seed"]))
    for e in results:
        base = e["ptq"]["fp32_rmse"]
        for judge in ("exact", "qemu"):
            if not e["ptq"][judge]:
                continue
            cells = []
            for f in INT8:
                a, b = judged(e["ptq"], judge).get(f), judged(e["qat"], judge).get(f)
                cells.append(f"{a / base:.3f} → **{b / base:.3f}**" if a and b else "–")
            own = max(v / e["qat"]["fp32_rmse"] for f, v in judged(e["qat"], judge).items() if v and f in INT8[:4])
            lines.append(f"| {e['data']}, {e['seed']}, {e['outliers']:g} | {judge} | "
                         f"{e['qat']['fp32_rmse'] / base:.3f} | " + " | ".join(cells)
                         + f" | {own:.3f} | {full_int(e['qat'], judge)} | {grids(e['qat'])}"
                         + f" | {e['qat']['seconds']:.1f} |")
    for data in dict.fromkeys(e["data"] for e in results):
        runs = [e for e in results if e["data"] == data]
        cells = []
        for f in INT8:
            pairs = [(judged(e["ptq"], "exact").get(f), judged(e["qat"], "exact").get(f), e["ptq"]["fp32_rmse"])
                     for e in runs]
            pairs = [(a / b0, b / b0) for a, b, b0 in pairs if a and b]
            cells.append(f"{np.mean([a for a, _ in pairs]):.3f} → **{np.mean([b for _, b in pairs]):.3f}**"
                         if pairs else "–")
        lines.append(f"| {data}: mean of {len(runs)} | exact | "
                     f"{np.mean([e['qat']['fp32_rmse'] / e['ptq']['fp32_rmse'] for e in runs]):.3f} | "
                     + " | ".join(cells) + f" | | | | {np.mean([e['qat']['seconds'] for e in runs]):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
