#!/usr/bin/env python3
"""Self-contained model runner: copy this one file to a device next to a model and its inputs.

Needs only NumPy plus onnxruntime (for .onnx / .ort) or LiteRT (``ai_edge_litert``, or the
older ``tflite_runtime``, or full TensorFlow) for .tflite. Python >= 3.8. Nothing from pocketkd
is imported, so the same code runs on the host, under qemu-aarch64 and on a board over ssh.

    python runner.py --model student.onnx --inputs eval.npz --threads 1 --warmup 50 --runs 300 \
        --json result.json

It prints (or writes) one JSON object: platform, runtime and version, session-creation and
first-inference times, latency statistics over the timed runs, throughput, peak RSS, and the
model's outputs on every input row of ``eval.npz['x']`` (for accuracy and parity checks).

Many models in one process (one interpreter start and runtime import for all): ``--models a.onnx
b.tflite --inputs eval.npz``, or ``--jobs jobs.json``, a list of {model, inputs, key, rows, name}.
They are timed one after another, never concurrently. Output: JSON lines, {"index": i, "started":
true} before each model, then its result or {index, model, error, exit}; a failing model does not
stop the others, and ``--first N`` resumes after a crash (whose job is the last one started).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

import numpy as np

PERCENTILES = (50, 90, 95, 99)


# --------------------------------------------------------------------------- runtimes


class OrtModel:
    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.version = ort.__version__
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.input_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inp.type, np.float32)
        self.n_outputs = len(self.session.get_outputs())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(self.input_dtype, copy=False)})[0]


def _tflite_interpreter_class():
    """LiteRT first (the maintained runtime), then tflite_runtime (older devices), then TensorFlow."""
    for pkg, name in (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite_runtime")):
        try:
            interpreter = importlib.import_module(pkg + ".interpreter").Interpreter
            return interpreter, name, getattr(importlib.import_module(pkg), "__version__", "unknown")
        except ImportError:
            pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow", tf.__version__
    except ImportError:
        raise ImportError(
            "no TFLite runtime found: pip install ai-edge-litert (or tflite-runtime on older devices)"
        ) from None


class TFLiteModel:
    def __init__(self, path: str, threads: int = 1):
        cls, self.runtime, self.version = _tflite_interpreter_class()
        self.interp = cls(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        sig = self.inp.get("shape_signature", self.inp["shape"])
        self.input_shape = [int(d) if d >= 0 else None for d in sig]
        self.n_outputs = len(self.interp.get_output_details())
        self._batch = int(self.inp["shape"][0])
        self.converted_layout = None

    def _quant(self, x: np.ndarray) -> np.ndarray:
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zp = self.inp["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)
        return x.astype(dtype, copy=False)

    def _dequant(self, y: np.ndarray) -> np.ndarray:
        if self.out["dtype"] in (np.int8, np.uint8):
            scale, zp = self.out["quantization"]
            return (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32, copy=False)

    def _layout(self, x: np.ndarray) -> np.ndarray:
        """onnx2tf makes image models NHWC; inputs prepared for PyTorch/ONNX are NCHW: transpose."""
        want = tuple(self.input_shape[1:])
        if x.ndim == 4 and tuple(x.shape[1:]) != want and (x.shape[2], x.shape[3], x.shape[1]) == want:
            self.converted_layout = "NCHW->NHWC"
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return x

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self._layout(x)
        if x.shape[0] != self._batch:
            if self.input_shape[0] is not None:
                raise ValueError(f"model has a fixed batch of {self._batch}; got {x.shape[0]} rows")
            self.interp.resize_tensor_input(self.inp["index"], list(x.shape))
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            self.out = self.interp.get_output_details()[0]
            self._batch = x.shape[0]
        self.interp.set_tensor(self.inp["index"], self._quant(x))
        self.interp.invoke()
        return self._dequant(self.interp.get_tensor(self.out["index"]))


def load_model(path: str, threads: int = 1, runtime: str = "auto"):
    """A callable model for ``path``: onnxruntime for .onnx/.ort, a TFLite interpreter for .tflite."""
    if runtime == "auto":
        runtime = "tflite" if path.endswith(".tflite") else "onnxruntime"
    if runtime == "onnxruntime":
        return OrtModel(path, threads)
    if runtime in ("tflite", "litert"):
        return TFLiteModel(path, threads)
    raise ValueError(f"unknown runtime {runtime!r}; allowed: auto, onnxruntime, tflite")


# --------------------------------------------------------------------------- load-time checks
# Kept apart from the runtimes above: what a model file must look like before any runtime sees it,
# and the runtime's own loader with its error as one line naming the file and what was expected.

MODEL_KINDS = {".onnx": "onnx", ".ort": "ort", ".tflite": "tflite"}
_EXPECTED = {"onnx": "an ONNX model (protobuf ModelProto)", "ort": "an ONNX Runtime .ort model (flatbuffer 'ORTM')",
             "tflite": "a TFLite model (flatbuffer 'TFL3')"}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what was expected."""


def sniff_model_bytes(head):
    """What the first bytes say a file is: 'tflite', 'ort', 'onnx' (plausibly), or None."""
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if len(head) >= 8 and head[4:8] == b"ORTM":
        return "ort"
    if head[:1] and (head[0] & 7) in (0, 2) and 1 <= (head[0] >> 3) <= 15:
        return "onnx"  # a protobuf field tag of ModelProto (ir_version, producer_name, graph, ...)
    return None


def one_line(exc, limit=240):
    """An exception as one line: the first meaningful line of its text, no traceback."""
    for line in str(exc).splitlines():
        line = " ".join(line.split())
        if line and not line.startswith(("Traceback", 'File "')):
            return line[:limit]
    return type(exc).__name__


def check_model_file(path):
    """The kind of model at ``path`` ('onnx', 'ort', 'tflite') from its extension, checked against its
    bytes; ``ModelFileError`` (one line) for a missing, empty, misnamed or foreign file."""
    ext = os.path.splitext(path)[1].lower()
    kind = MODEL_KINDS.get(ext)
    if kind is None:
        raise ModelFileError("%s: unknown model extension %r; expected .onnx, .ort or .tflite" % (path, ext or ""))
    try:
        if not os.path.isfile(path):
            raise ModelFileError("%s: %s" % (path, "is a directory, expected a model file" if os.path.isdir(path)
                                             else "does not exist (or is a broken symlink)"))
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelFileError("%s: cannot be read: %s" % (path, exc.strerror or one_line(exc))) from None
    if not head:
        raise ModelFileError("%s: empty file; expected %s" % (path, _EXPECTED[kind]))
    seen = sniff_model_bytes(head)
    if seen != kind:
        what = {"tflite": "a TFLite flatbuffer (identifier TFL3)", "ort": "an ORT flatbuffer (identifier ORTM)",
                "onnx": "an ONNX protobuf", None: "neither ONNX, ORT nor TFLite"}[seen]
        hint = "; rename it to %s" % {"tflite": ".tflite", "ort": ".ort", "onnx": ".onnx"}[seen] if seen else ""
        raise ModelFileError("%s: the file is %s, expected %s%s" % (path, what, _EXPECTED[kind], hint))
    return kind


def open_model(path, threads=1, runtime="auto"):
    """``check_model_file`` and then the runtime's own loader; its failure is one ModelFileError line."""
    kind = check_model_file(path)
    try:
        return load_model(path, threads, runtime)
    except ImportError:
        raise
    except Exception as exc:
        raise ModelFileError("%s: %s cannot load it (%s); expected %s" % (
            path, "onnxruntime" if kind != "tflite" else "the TFLite interpreter", one_line(exc),
            _EXPECTED[kind])) from None


def check_inputs(model, x, what="inputs"):
    """Inputs must be numeric, finite, non-empty and of the model's rank and fixed sizes."""
    if x.dtype.kind not in "biuf":
        raise ModelFileError("%s: dtype %s; expected numeric model-ready inputs" % (what, x.dtype))
    if x.ndim == 0 or x.shape[0] == 0:
        raise ModelFileError("%s: shape %s has no rows; expected (rows, ...) inputs" % (what, x.shape))
    want = list(model.input_shape)
    if x.ndim != len(want):
        raise ModelFileError("%s: shape %s is rank %d; the model takes rank-%d inputs %s (batch first)"
                             % (what, tuple(x.shape), x.ndim, len(want), ["batch" if d is None else d for d in want]))
    layout_ok = x.ndim == 4 and tuple(x.shape[2:]) + (x.shape[1],) == tuple(want[1:])  # NCHW for an NHWC model
    for axis, (got, need) in enumerate(zip(x.shape[1:], want[1:]), 1):
        if need is not None and got != need and not layout_ok:
            raise ModelFileError("%s: shape %s, axis %d is %d; the model takes %s" % (
                what, tuple(x.shape), axis, got, ["batch" if d is None else d for d in want]))
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ModelFileError("%s: holds NaN or infinite values; expected finite inputs" % what)


# --------------------------------------------------------------------------- measuring


def predict_all(model, x: np.ndarray, max_batch: int = 1024) -> np.ndarray:
    """Outputs for every row of ``x``: in chunks for dynamic-batch models, row by row when fixed."""
    fixed = model.input_shape[0]
    step = fixed if fixed is not None else max_batch
    outs = []
    for i in range(0, x.shape[0], step):
        chunk = x[i : i + step]
        if fixed is not None and chunk.shape[0] < fixed:  # pad the last chunk of a fixed-batch model
            pad = np.repeat(chunk[-1:], fixed - chunk.shape[0], axis=0)
            outs.append(model(np.concatenate([chunk, pad]))[: chunk.shape[0]])
        else:
            outs.append(model(chunk))
    return np.concatenate(outs).astype(np.float32)


def latency_stats(ms) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    out = {"n": int(a.size), "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
           "std": float(a.std())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    return out


MIN_RUNS = 10


def time_model(model, x_batch: np.ndarray, warmup: int, runs: int, max_seconds=None) -> list:
    """Latency of ``runs`` calls after ``warmup``; with ``max_seconds``, timing stops once that budget
    is spent (after at least MIN_RUNS runs), as LiteRT's benchmark_model --max_secs does."""
    start = time.perf_counter()
    for _ in range(warmup):
        model(x_batch)
        if max_seconds is not None and time.perf_counter() - start > max_seconds / 4:
            break
    ms = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for i in range(runs):
        t0 = clock()
        model(x_batch)
        ms.append((clock() - t0) / 1e6)
        if max_seconds is not None and i + 1 >= MIN_RUNS and time.perf_counter() - start > max_seconds:
            break
    return ms


def _cpuinfo():
    """The first value of each /proc/cpuinfo field, and the CPU flags (x86 'flags', ARM 'Features')."""
    try:
        with open("/proc/cpuinfo") as f:
            pairs = [[s.strip() for s in line.split(":", 1)] for line in f if ":" in line]
    except OSError:
        pairs = []
    return dict(reversed(pairs)), {w for k, v in pairs if k in ("flags", "Features") for w in v.split()}


def cpu_model() -> str:
    fields = _cpuinfo()[0]
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    if "CPU implementer" in fields:
        return "ARM implementer %s part %s" % (fields["CPU implementer"], fields.get("CPU part", "?"))
    return platform.processor() or "unknown"


# CPU flags that decide how int8 matrix products are computed: on x86 without a VNNI flag the u8s8
# kernels of onnxruntime add pairs of products in 16 bits, which saturate; ARM and VNNI do not.
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_info() -> dict:
    """The CPU's int8-relevant flags and the int8 path they imply (a prediction; the bench's probe
    model measures it)."""
    flags = _cpuinfo()[1]
    machine = platform.machine().lower()
    have = sorted(f for f in INT8_FLAGS if f in flags)
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        path = "ARM dot product (sdot/udot), 32-bit sums" if "asimddp" in flags else "ARM NEON, 32-bit sums"
        saturates = False
    elif any(f in flags for f in VNNI_FLAGS):
        path, saturates = "x86 VNNI (vpdpbusd), 32-bit sums", False
    elif machine in ("x86_64", "amd64", "i386", "i686"):
        path, saturates = "x86 without VNNI: u8s8 pairs summed in 16 bits (saturate)", True
    else:
        path, saturates = "unknown", None
    return {"machine": machine, "int8_flags": have, "int8_path": path, "u8s8_saturates_expected": saturates}


def peak_rss_mb(reset=False) -> float:
    """Peak RSS of this process in MB: since the last ``reset`` where Linux allows it (VmHWM, reset
    through clear_refs: each of several models gets its own peak), else over its life (ru_maxrss)."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return float([ln.split()[1] for ln in f if ln.startswith("VmHWM:")][0]) / 1024.0
    except (OSError, IndexError, ValueError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, AttributeError):
        return float("nan")


def platform_info() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, **cpu_int8_info()}


def bench(model_path: str, x: np.ndarray, threads=1, warmup=50, runs=300, batch=1, runtime="auto",
          max_seconds=None) -> dict:
    peak_rss_mb(reset=True)
    t0 = time.perf_counter()
    model = load_model(model_path, threads, runtime)
    create_ms = (time.perf_counter() - t0) * 1e3
    fixed = model.input_shape[0]
    if fixed is not None and fixed != batch:
        batch = fixed
    x_batch = np.ascontiguousarray(x[:batch] if x.shape[0] >= batch else np.resize(x, (batch,) + x.shape[1:]))
    x_batch = x_batch.astype(np.float32)
    t0 = time.perf_counter()
    model(x_batch)
    first_ms = (time.perf_counter() - t0) * 1e3
    ms = time_model(model, x_batch, warmup, runs, max_seconds)
    stats = latency_stats(ms)
    outputs = predict_all(model, x.astype(np.float32))
    return {
        "model": os.path.basename(model_path), "size_bytes": os.path.getsize(model_path), "runtime": model.runtime,
        "runtime_version": model.version, "platform": platform_info(), "threads": threads, "batch": batch,
        "warmup": warmup, "runs": len(ms), "runs_requested": runs, "session_create_ms": create_ms,
        "first_inference_ms": first_ms, "latency_ms": stats,
        "throughput_per_s": batch * 1e3 / stats["p50"] if stats["p50"] > 0 else None,
        "latencies_ms": ms, "peak_rss_mb": peak_rss_mb(), "n_outputs": model.n_outputs,
        "input_layout_converted": getattr(model, "converted_layout", None), "outputs": outputs.tolist(),
    }


def job_error(exc, model):
    """(exit code, one-line message) for a model that could not be benched."""
    if isinstance(exc, ImportError):
        return 3, "missing runtime: %s" % exc
    if isinstance(exc, ModelFileError):
        return 2, str(exc)
    return 1, "%s on %s: %s: %s" % (os.path.basename(model), platform.machine(), type(exc).__name__, one_line(exc))


def run_job(job, args, arrays) -> dict:
    """Check and bench one job: {model, inputs (default --inputs), key (default 'x'), rows, name}."""
    inputs, key = job.get("inputs") or args.inputs, job.get("key", "x")
    for p in (job["model"], inputs):
        if not os.path.exists(p):
            raise ModelFileError("%s does not exist" % p)
    if (inputs, key) not in arrays:  # each input array is read once per process
        with np.load(inputs) as z:
            arrays[(inputs, key)] = z[key]
    x = arrays[(inputs, key)][: job.get("rows") or args.eval_rows or None]
    check_inputs(open_model(job["model"], args.threads, args.runtime), x, inputs)
    res = bench(job["model"], x, args.threads, args.warmup, args.runs, args.batch, args.runtime, args.max_seconds)
    return dict(res, model=job.get("name") or res["model"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="one model: the output is its result (or its error and exit code 1-3)")
    what.add_argument("--models", nargs="+", help="several models, benched in turn in this one process")
    what.add_argument("--jobs", help="JSON list of {model, inputs, key, rows, name}: --models with own inputs")
    ap.add_argument("--inputs", help="NPZ with array 'x' (model-ready, normalised inputs)")
    ap.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "tflite"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, help="stop timing after this many seconds (>= 10 runs)")
    ap.add_argument("--eval-rows", type=int, help="outputs for the first N input rows only (default: all)")
    ap.add_argument("--first", type=int, default=0, help="--models/--jobs: start at this job (after a crash)")
    ap.add_argument("--json", help="write the result here instead of stdout (--models/--jobs: JSON lines)")
    args = ap.parse_args(argv)
    if not (args.inputs or args.jobs):
        ap.error("--inputs is required with --model and --models")
    if args.model:
        try:
            text = json.dumps(run_job({"model": args.model}, args, {}))
        except Exception as exc:
            code, message = job_error(exc, args.model)
            print("error: %s" % message, file=sys.stderr)
            return code
        if not args.json:
            sys.stdout.write(text + "\n")
            return 0
        with open(args.json + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.json + ".tmp", args.json)
        return 0
    if args.jobs:
        with open(args.jobs) as f:
            jobs = json.load(f)
    else:
        jobs = [{"model": m} for m in args.models]
    arrays, out = {}, open(args.json, "w") if args.json else sys.stdout
    for i, job in enumerate(jobs[args.first:], args.first):  # a line before each job: a crash names its job
        out.write(json.dumps({"index": i, "started": True}) + "\n")
        out.flush()
        try:
            line = dict(run_job(job, args, arrays), index=i)
        except Exception as exc:
            code, message = job_error(exc, job["model"])
            line = {"index": i, "model": job.get("name") or os.path.basename(job["model"]), "error": message,
                    "exit": code}
        out.write(json.dumps(line) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
