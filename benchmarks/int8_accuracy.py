"""int8 accuracy of the exported student: RMSE of every int8 file / RMSE of the PyTorch student,
with and without the int8 weight preparation (export.quantize.prepare_for_int8), over trained runs.

    python -m pipeline run --out runs/s1 --set seed=1 --only data --only teacher --only distill --only student
    python benchmarks/int8_accuracy.py runs/s1 [runs/s2 ...] [--out benchmarks/results/int8_accuracy.json]

For each run directory the student is exported with ``pipeline.stages.export_student`` (server
files only, every int8 format) twice: as configured, and with the preparation switched off
(``--set export.int8.prepare=false``), so both columns come from the same fp32 student. Also reports the
irreducible error of 8-bit *input* quantization for a 1-D input (see ``input_quantization_floor``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

INT8 = ["onnx_int8", "onnx_int8_dynamic", "ort_int8", "tflite_dynamic_range", "tflite_int8", "tflite_int8_io"]


def input_quantization_floor(x_calib: np.ndarray, x_test: np.ndarray, f, y_clean: np.ndarray, fp32_rmse: float) -> dict:
    """Irreducible RMSE of predicting ``y = f(x)`` from x quantized to 256 levels over the calibration
    range (the best predictor per level is the mean of f over that level's x values), and the RMSE ratio
    it implies if that error adds in quadrature to the fp32 student's error."""
    lo, hi = min(float(x_calib.min()), 0.0), max(float(x_calib.max()), 0.0)
    step = (hi - lo) / 255
    fine = np.linspace(float(x_test.min()), float(x_test.max()), 2_000_001)
    level = np.round((fine - lo) / step).astype(int)
    y = f(fine)
    means = np.bincount(level, y) / np.maximum(np.bincount(level), 1)
    floor = float(np.sqrt(np.mean((y - means[level]) ** 2)))
    return {"step": step, "irreducible_rmse": floor, "fp32_rmse": fp32_rmse,
            "implied_ratio": float(np.sqrt(fp32_rmse ** 2 + floor ** 2) / fp32_rmse)}


def export_rows(run: Path, out: Path, prepare: bool) -> list[dict]:
    from pipeline.config import load_config
    from pipeline.stages.export import export_student

    cfg = load_config(run / "config.yaml", [f"export.int8.prepare={str(prepare).lower()}"])
    return export_student(cfg, run, out, ["onnx_fp32"] + INT8, android=False)["formats"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "int8_accuracy.json")
    ap.add_argument("--write", action="store_true", help="rewrite the int8_accuracy section of docs/BENCHMARKS.md")
    ap.add_argument("--render", action="store_true", help="no exports: render --out's saved results and write them")
    args = ap.parse_args()
    if args.render:
        from common import write_section

        write_section("int8_accuracy", render(json.loads(args.out.read_text())))
        return
    results = []
    for run in args.runs:
        cfg_text = (run / "config.yaml").read_text()
        entry = {"run": str(run), "config": cfg_text}
        for prepare in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                rows = export_rows(run, Path(tmp), prepare)
            entry["prepared" if prepare else "baseline"] = {
                r["format"]: {k: r.get(k) for k in ("rmse", "rmse_ratio_vs_torch", "size_bytes", "status")}
                for r in rows if r["model"] == "student"}
            rounding = next((r["input_rounding"] for r in rows if r["model"] == "student"
                             and r["format"] == "tflite_int8_io" and "input_rounding" in r), None)
        if rounding:  # export's own diagnostic: the PyTorch student on the int8-input file's grid
            entry["input_rounding"] = rounding
        d = np.load(run / "data.npz")
        if d["x_train"].shape[1] == 1 and "x_raw_test" in d.files:
            import yaml

            c = yaml.safe_load(cfg_text)["data"]
            mu, sd = float(d["x_mean"][0]), float(d["x_std"][0])
            fp32 = entry["prepared"]["onnx_fp32"]["rmse"]
            entry["input_quantization_floor"] = input_quantization_floor(
                d["x_train"], d["x_test"], lambda x: c.get("amplitude", 1.0) * np.sin(c.get("frequency", 2.0) * (x * sd + mu) + c.get("phase", 0.0)),
                d["y_clean_test"], fp32)
        results.append(entry)
        print(run, {k: {f: round(v["rmse_ratio_vs_torch"] or 0, 3) for f, v in entry[k].items()}
                    for k in ("baseline", "prepared")}, entry.get("input_quantization_floor"), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    if args.write:
        from common import write_section

        write_section("int8_accuracy", render(results))


def render(results: list[dict]) -> str:
    """The docs/BENCHMARKS.md table: int8 / fp32 RMSE per run and format, before -> after preparation."""
    import yaml

    lines = ["Commands: train each run with `python -m pipeline run --out R --set seed=S "
             "--set data.noise.outlier_fraction=F --set distill.baselines=[] --only data --only teacher "
             "--only distill --only student`, then `python benchmarks/int8_accuracy.py R... --write`; "
             "raw numbers in `benchmarks/results/int8_accuracy.json`.", "",
             "RMSE of each int8 file / RMSE of the PyTorch student on the clean test set, without → with "
             "`export.int8.prepare` (same fp32 student). *floor*: the ratio implied by the irreducible error "
             "of quantizing the 1-D input to 256 levels (applies to the TFLite full-integer files only). "
             "*8-bit input*: the export's `input_rounding` of the int8-input file: the fp32 PyTorch student run on "
             "the test inputs rounded to that file's own input grid (float everywhere else), / the same student on "
             "the exact inputs.", "",
             "| seed, outliers | fp32 RMSE | " + " | ".join(INT8) + " | floor | 8-bit input |",
             "|---" * (len(INT8) + 4) + "|"]
    for e in results:
        c = yaml.safe_load(e["config"])
        ratio = lambda k, f: e[k].get(f, {}).get("rmse_ratio_vs_torch")  # noqa: E731
        cells = [f"{ratio('baseline', f):.3f} → **{ratio('prepared', f):.3f}**" if ratio("prepared", f) else "–"
                 for f in INT8]
        fl = e.get("input_quantization_floor", {}).get("implied_ratio")
        q8 = e.get("input_rounding", {}).get("rmse_ratio_vs_torch")
        lines.append(f"| {c['seed']}, {c['data']['noise']['outlier_fraction']:g} | "
                     f"{e['prepared']['onnx_fp32']['rmse']:.4f} | " + " | ".join(cells)
                     + (f" | {fl:.3f}" if fl else " | –") + (f" | {q8:.3f} |" if q8 else " | – |"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
