"""Shared pieces of the benchmarks: train a teacher and students in memory, summarise over seeds,
and write a section of docs/BENCHMARKS.md between markers (so each benchmark owns its section)."""

from __future__ import annotations

import json
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"  # every benchmark's raw numbers (JSON)
sys.path.insert(0, str(ROOT))

from pipeline.config import Config  # noqa: E402
from pipeline.data import Splits, make_dataset  # noqa: E402
from pipeline.metrics import rmse  # noqa: E402
from pipeline.stages.distill import train_student  # noqa: E402
from pipeline.stages.teacher import train_teacher  # noqa: E402
from pipeline.train import predict  # noqa: E402

BENCH_MD = ROOT / "docs" / "BENCHMARKS.md"


def machine() -> str:
    import os

    from device_bench.runner import cpu_model
    from export.int8_arith import host_int8_profile

    p = host_int8_profile()  # int8 results depend on these: printed with every table
    flags = ", ".join(p["int8_flags"]) or "none"
    return (f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"int8 flags: {flags}; onnxruntime u8s8 {'saturates' if p['u8s8_saturates'] else 'exact'} (probe)")


def teacher_and_targets(cfg: Config) -> tuple[Splits, dict[str, np.ndarray], float]:
    splits = make_dataset(cfg.data, cfg.seed)
    _, _, preds, _ = train_teacher(cfg, splits)
    return splits, preds, rmse(preds["test"], splits.y_clean["test"])


def student_rmse(cfg: Config, splits: Splits, yt: dict[str, np.ndarray], method: str, int8: bool = False):
    """Test RMSE of the label head (the deployed head); with ``int8``, also the int8 ONNX RMSE."""
    student, _, m = train_student(cfg, splits, yt, method)
    label_pred, _ = predict(student, splits.x["test"])
    out = {"rmse": rmse(label_pred, splits.y_clean["test"]), **{k: v for k, v in m.describe().items()
                                                               if k in ("delta", "train_outlier_share")}}
    if int8:
        out["int8_rmse"] = int8_rmse(cfg, student, splits)
    return out


def int8_rmse(cfg: Config, two_head, splits: Splits) -> float:
    from export.calibration import calibration_indices
    from export.int8_arith import exact_outputs
    from export.onnx_export import export_onnx
    from export.quantize import quantize_int8_static
    from models import drop_teacher_head

    deployed = drop_teacher_head(two_head, cfg.student.keep_head)
    q = cfg.export.int8
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(deployed, Path(tmp) / "s.onnx", splits.x["train"].shape[1], cfg.export.opset)
        rows = calibration_indices(len(splits.x["train"]), q.calibration_samples, q.calibration_seed, splits.y["train"])
        int8 = quantize_int8_static(fp32, Path(tmp) / "s.int8.onnx", splits.x["train"][rows],
                                    "input", q.calibrate_method, q.per_channel,
                                    float_first_layer=q.float_first_layer, prepare=q.prepare,
                                    float_last_layer=q.float_last_layer)
        out = exact_outputs(int8, splits.x["test"])  # as on ARM / VNNI, whatever this host's CPU
    return rmse(out, splits.y_clean["test"])


def mean_std(values) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"


def write_section(name: str, body: str) -> None:
    """Replace the text between <!-- BEGIN name --> and <!-- END name --> in docs/BENCHMARKS.md."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = BENCH_MD.read_text() if BENCH_MD.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCH_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCH_MD.write_text(text)


def protocol_arguments(ap) -> None:
    """The options every protocol benchmark shares: --report-seeds, --workers, --no-write."""
    import os

    from protocol import REPORT_SEEDS

    ap.add_argument("--report-seeds", type=lambda v: [int(s) for s in v.split(",")], default=list(REPORT_SEEDS),
                    help="comma-separated (default: protocol.REPORT_SEEDS)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ and results/ alone")


def run_jobs(fn, jobs: list[tuple], workers: int, desc: str) -> list[dict]:
    """``fn(*job)`` for every job in ``workers`` processes (a progress bar over jobs); the rows each
    job returns, concatenated in job order."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    results = []
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(fn, *j) for j in jobs]
        for f in tqdm(futures, desc=desc, unit="job"):
            results += f.result()
    return results


def save_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def replace_rows(saved: list[dict], fresh: list[dict], key) -> list[dict]:
    """The rows of a benchmark run over part of its grid (one task's kinds, one part, some seeds) merged
    into the saved ones: ``saved`` rows whose ``key(row)`` no ``fresh`` row has, then ``fresh``."""
    ran = {key(r) for r in fresh}
    return [r for r in saved if key(r) not in ran] + fresh


def set_args(overrides: dict) -> list[str]:
    """``--set key=value`` arguments of ``python -m pipeline run`` (values as JSON)."""
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def pipeline_run(out: Path, *args: str, env: dict | None = None, log: Path | None = None) -> tuple[float, dict]:
    """``python -m pipeline run --out OUT ARGS`` in a child process: (wall seconds, its manifest.json).
    ``log``: the child's stdout and stderr go to this file (not a terminal, as under nohup). A failed
    run stops the benchmark with the tail of its output."""
    import os
    import subprocess
    import time

    cmd = [sys.executable, "-m", "pipeline", "run", "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    t0 = time.perf_counter()
    if log is None:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        tail = proc.stderr
    else:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        tail = f"see {log}:\n" + log.read_text(errors="replace")
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run {out} failed ({proc.returncode}): {tail[-3000:]}")
    return wall, json.loads((out / "manifest.json").read_text())

