"""python -m device_bench --model FILE --data NPZ --target TARGET [...]: bench one model file.

``python -m device_bench --prepare-qemu`` builds (or finds) the cached qemu-aarch64 sysroot and
prints its path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from device_bench.targets import allowed_forms, parse_target
from pipeline.errors import UserError
from pipeline.io import atomic_write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device_bench", description=__doc__)
    ap.add_argument("--model", help=".onnx, .ort or .tflite file (required unless --prepare-qemu)")
    ap.add_argument("--data", help="NPZ with array 'x' of model-ready inputs (default: 256 random rows)")
    ap.add_argument("--target", default="host", help=f"one of: {allowed_forms()}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--json", help="write the full result (with outputs) here")
    ap.add_argument("--prepare-qemu", action="store_true",
                    help="build (or find) the cached qemu-aarch64 sysroot, print its path and exit")
    args = ap.parse_args(argv)
    if args.prepare_qemu:
        return _prepare_qemu()
    if not args.model:
        ap.error("--model is required")
    try:
        model = Path(args.model)
        if not model.is_file():
            raise UserError(f"--model {model}: file does not exist")
        if args.data:
            if not Path(args.data).is_file():
                raise UserError(f"--data {args.data}: file does not exist")
            with np.load(args.data) as z:
                if "x" not in z:
                    raise UserError(f"--data {args.data}: no array named 'x' (has: {', '.join(z.files)})")
                x = z["x"]
        else:
            from device_bench.runner import load_model

            shape = [d or 1 for d in load_model(str(model)).input_shape]
            x = np.random.default_rng(0).standard_normal([256, *shape[1:]]).astype(np.float32)
        for name in ("threads", "runs", "batch"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
        res = parse_target(args.target).run(model, x, threads=args.threads, warmup=args.warmup,
                                            runs=args.runs, batch=args.batch)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_json(args.json, res)
    lat = res["latency_ms"]
    summary = {k: res[k] for k in ("target", "emulated", "model", "runtime", "runtime_version", "size_bytes")}
    summary["platform"] = res["platform"]
    summary["latency_ms"] = {k: round(lat[k], 4) for k in ("p50", "p90", "p99", "mean")}
    print(json.dumps(summary, indent=2))
    return 0


def _prepare_qemu() -> int:
    import logging

    from device_bench.qemu import ensure_sysroot

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        root = ensure_sysroot()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
