"""python -m device_bench --model FILE --data NPZ --target TARGET [...]: bench one model file.

``python -m device_bench --prepare-qemu`` builds (or finds) the cached qemu-aarch64 sysroot and
prints its path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np

from device_bench.qemu import ensure_sysroot
from device_bench.runner import ModelFileError, check_inputs, one_line, open_model
from device_bench.targets import allowed_forms, parse_target
from pipeline.errors import UserError, os_error_text
from pipeline.io import atomic_write_json


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{self.prog}: {' '.join(message.split())}; see {self.prog} --help")


def main(argv=None) -> int:
    ap = _OneLineParser(prog="python -m device_bench", description=__doc__)
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
    try:
        args = ap.parse_args(argv)
        if args.prepare_qemu:
            return _prepare_qemu()
        if not args.model:
            ap.error("--model is required")
        res = _bench(args)
        if args.json:
            try:
                atomic_write_json(args.json, res)
            except OSError as exc:
                raise UserError(f"--json {args.json}: cannot be written: {os_error_text(exc)}") from None
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    lat = res["latency_ms"]
    summary = {k: res[k] for k in ("target", "emulated", "model", "runtime", "runtime_version", "size_bytes")}
    summary["platform"] = res["platform"]
    summary["latency_ms"] = {k: round(lat[k], 4) for k in ("p50", "p90", "p99", "mean")}
    print(json.dumps(summary, indent=2))
    return 0


def _check_json_path(raw: str) -> None:
    """--json must be a file path whose directory exists or can be made (checked before the bench)."""
    path = Path(raw)
    if not raw.strip():
        raise UserError("--json '': empty path; give a file name, e.g. --json result.json")
    if path.is_dir():
        raise UserError(f"--json {path}: is a directory; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--json {path}: {parent} is a file, not a directory; give a path under a directory")
            return
        if parent.is_symlink():
            raise UserError(f"--json {path}: {parent} is a dangling symlink or symlink loop")


def _load_data(raw: str) -> np.ndarray:
    path = Path(raw)
    if not path.is_file():
        raise UserError(f"--data {raw}: file does not exist" if not path.exists() else f"--data {raw}: not a file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise UserError(f"--data {raw}: no array named 'x' (has: {', '.join(z.files) or 'none'})")
            return z["x"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as exc:
        raise UserError(f"--data {raw}: not an .npz archive with array 'x' (numpy.savez(path, x=...)): "
                        f"{one_line(exc)}") from None


def _bench(args) -> dict:
    for name in ("threads", "runs", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    target = parse_target(args.target)
    if args.json:
        _check_json_path(args.json)
    try:
        model = open_model(args.model)  # extension vs bytes, then the runtime's own loader
        if args.data:
            x = _load_data(args.data)
        else:
            shape = [d or 1 for d in model.input_shape]
            x = np.random.default_rng(0).standard_normal([256, *shape[1:]]).astype(np.float32)
        check_inputs(model, x, f"--data {args.data}" if args.data else "inputs")
    except ModelFileError as exc:
        raise UserError(f"--model {exc}" if not str(exc).startswith("--data") else str(exc)) from None
    except ImportError as exc:
        raise UserError(f"--model {args.model}: no runtime for it here: {exc}") from None
    return target.run(Path(args.model), x, threads=args.threads, warmup=args.warmup, runs=args.runs,
                      batch=args.batch)


def _prepare_qemu() -> int:
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
