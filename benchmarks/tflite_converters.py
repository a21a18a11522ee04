"""onnx2tf vs litert-torch (issue 16, item 6): the same students converted to TFLite by each.

    pip install -e '.[litert]'        # the optional extra (see pyproject.toml)
    python benchmarks/tflite_converters.py [--write] [--cases toy,digits,pose]

For each case a student is trained with the pipeline (``--only data teacher distill student``;
reduced training for the bigger ones: the conversion is what is measured), then both converters
make the five TFLite variants at batch 1 (the Android bundle's shape: litert-torch 0.10 has no
dynamic batch axis), with the conversion cache off:

* **cold s**: a fresh converter child (its imports: TensorFlow + onnx2tf, or litert-torch + jax)
  plus the conversion; **warm s**: the same conversion again in the same child (for onnx2tf this
  includes the PyTorch -> ONNX export it converts from, which the cold time also has);
* **fp32 max |diff|**: the fp32 file against PyTorch on the test inputs (``export.parity_atol``);
* **sizes** of the fp32 / fp16 / dynamic-range / int8 files;
* **int8**: the full-integer (float I/O) file's output RMSE against the fp32 file's outputs, and its
  task metric against the PyTorch student (RMSE ratio, or accuracy drop for classification);
* **XNNPACK**: nodes taken by LiteRT's default CPU delegate / all nodes, for fp32 and int8, and
  the ops it leaves out (``export/xnnpack.py``).

Every file also goes through the export's own checks (``export/file_check.py``): the status column
is the export row's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CASES = {  # name -> (config, overrides): reduced training where the default takes minutes
    "toy": (None, {"distill.baselines": []}),
    "digits": ("configs/digits.yaml", {"distill.baselines": [], "teacher.train.epochs": 20,
                                       "distill.train.epochs": 40}),
    "pose": ("configs/pose_mobilenet.yaml", {"distill.baselines": [], "teacher.train.epochs": 3,
                                             "distill.train.epochs": 3, "qat.enabled": False}),
}
TFLITE = ["tflite_fp32", "tflite_fp16", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]
CONVERTERS = ("onnx2tf", "litert_torch")


def train(case: str, root: Path) -> Path:
    from pipeline import run

    config, overrides = CASES[case]
    out = root / case
    t0 = time.perf_counter()
    run(config and str(ROOT / config), out, overrides,
        only=["data", "teacher", "distill", "student"])
    print(f"{case}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def job_for(case: str, run_dir: Path, converter_name: str, out_dir: Path):
    from export import ExportJob
    from models.deploy import mobile_friendly
    from pipeline.api import resolve_config
    from pipeline.checkpoints import load_checkpoint
    from pipeline.data import Splits
    from pipeline.stages.common import deployed_abstains, dims

    config, overrides = CASES[case]
    cfg = resolve_config(config and str(ROOT / config), overrides)
    splits = Splits.load(run_dir / "data.npz")
    shape, _ = dims(splits)
    tflite = cfg.export.tflite.model_copy(update={"converter": converter_name})
    return ExportJob(model=mobile_friendly(load_checkpoint(run_dir / "student.pt", cfg)), out_dir=out_dir,
                     input_shape=shape, x_eval=splits.x["test"], y_eval=splits.y_clean["test"],
                     x_calib=splits.x["train"], y_calib=splits.y["train"],
                     cfg=cfg.export.model_copy(update={"tflite": tflite}), batch=1, task=splits.task,
                     abstain=deployed_abstains(cfg), angles=splits.angles, output_names=splits.output_names)


def measure(case: str, run_dir: Path, converter_name: str, work: Path) -> dict:
    from device_bench.runner import load_model, predict_all
    from export import converter
    from export.converter_child import WARM
    from export.formats import FORMATS, _convert_tflite, export_rows

    variants = tuple(FORMATS[n].variant for n in TFLITE)
    with converter.session(warm=WARM[converter_name]):
        job = job_for(case, run_dir, converter_name, work / converter_name / "cold")
        job.tflite_variants = variants
        t0 = time.perf_counter()
        job._tflite = _convert_tflite(job)
        cold = time.perf_counter() - t0
        again = job_for(case, run_dir, converter_name, work / converter_name / "warm")
        again.tflite_variants = variants
        t0 = time.perf_counter()
        _convert_tflite(again)
        warm = time.perf_counter() - t0
        rows = {r["format"]: r for r in export_rows(job, TFLITE)}
    x = job.x_eval.astype(np.float32)
    fp32_out = predict_all(load_model(str(job._tflite["fp32"])), x)
    int8_out = predict_all(load_model(str(job._tflite["int8"])), x)
    return {"cold_s": cold, "warm_s": warm, "task": job.task,
            "int8_rmse_vs_fp32": float(np.sqrt(np.mean((int8_out - fp32_out) ** 2))),
            "fp32_out_rms": float(np.sqrt(np.mean(fp32_out ** 2))), "rows": rows}


def _xnn(r: dict) -> str:
    x = r.get("xnnpack") or {}
    if "nodes" not in x:
        return "–"
    left = ", ".join(f"{op} x{n}" for op, n in x["not_delegated"].items())
    return f"{x['delegated']}/{x['nodes']} in {x['partitions']}" + (f" (left: {left})" if left else "")


def render(results: dict) -> str:
    from common import machine

    lines = ["## TFLite converters: onnx2tf vs litert-torch (issue 16)", "",
             f"`python benchmarks/tflite_converters.py --write` (litert-torch 0.10.0, ai-edge-quantizer 0.10.0, "
             f"onnx2tf 1.28.8, TensorFlow 2.21; conversion cache off). Host: {machine()}.", "",
             "Batch 1 (the Android bundle's files): litert-torch 0.10 cannot make a dynamic batch axis, so with "
             "`export.tflite.converter: litert_torch` the server-side TFLite rows are `not_supported`.", "",
             "| case | converter | cold s | warm s | fp32 max abs diff | sizes fp32 / fp16 / dyn / int8 (kB) "
             "| int8 RMSE vs fp32 file | int8 task metric | XNNPACK fp32 | XNNPACK int8 | statuses |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case, by_conv in results.items():
        for conv, m in by_conv.items():
            rows = m["rows"]
            sizes = " / ".join(f"{rows[n].get('size_bytes', 0) / 1000:.1f}" for n in TFLITE[:4])
            i8 = rows["tflite_int8"]
            metric = (f"acc. drop {i8['accuracy_drop_vs_torch']:+.4f}" if m["task"] == "classification"
                      else f"RMSE {i8['rmse_ratio_vs_torch']:.3f}x")
            statuses = ", ".join(sorted({r["status"] for r in rows.values()}))
            lines.append(f"| {case} | {conv} | {m['cold_s']:.1f} | {m['warm_s']:.1f} | "
                         f"{rows['tflite_fp32']['max_abs_diff_vs_torch']:.1e} | {sizes} | "
                         f"{m['int8_rmse_vs_fp32']:.4f} (of rms {m['fp32_out_rms']:.3f}) | {metric} | "
                         f"{_xnn(rows['tflite_fp32'])} | {_xnn(i8)} | {statuses} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--work", type=Path, default=None, help="keep the runs and files here (default: a temp dir)")
    ap.add_argument("--write", action="store_true", help="rewrite the tflite_converters section of docs/BENCHMARKS.md")
    ap.add_argument("--render", type=Path, default=None, help="only render a tflite_converters.json of an earlier run")
    args = ap.parse_args()
    if args.render:
        return _emit(render(json.loads(args.render.read_text())), args.write)
    os.environ["POCKETKD_CONVERSION_CACHE"] = "off"  # every conversion is made, and timed
    from export import litert

    litert.require()
    root = args.work or Path(tempfile.mkdtemp(prefix="pocketkd-tflite-converters-"))
    results = {}
    for case in args.cases.split(","):
        run_dir = train(case, root / "runs")
        results[case] = {}
        for conv in CONVERTERS:
            m = measure(case, run_dir, conv, root / "files" / case)
            results[case][conv] = m
            print(f"{case} {conv}: cold {m['cold_s']:.1f} s, warm {m['warm_s']:.1f} s", flush=True)
    (root / "tflite_converters.json").write_text(json.dumps(results, indent=1, default=str))
    _emit(render(results), args.write)


def _emit(text: str, write: bool) -> None:
    print(text)
    if write:
        from common import write_section

        write_section("tflite_converters", text)


if __name__ == "__main__":
    main()
