"""The runtime floor: trivial one-op models (ReLU of a 1x1 input), one per runtime, whose p50 is the
runtime's own call overhead. The bench stage writes and benches them beside the exported files; the
export stage converts the TFLite one while its converter child is up (``warm_floor_conversion``), so
the bench finds it in the conversion cache instead of starting TensorFlow again (8 s on 2 cores)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from export.format_table import REFERENCE
from export.onnx_export import save_proto
from export.tflite import onnx_to_tflite
from pipeline.procs import temp_dir

log = logging.getLogger(__name__)


def runtime_floor_models(bench_dir: Path, runtimes: set[str] | None = None) -> list[dict]:
    """Trivial one-op models (ReLU of a 1x1 input) per runtime: their p50 is the runtime's overhead.
    Only for ``runtimes`` (the runtimes of the files benched; None: every runtime)."""

    bench_dir.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "floor",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    floor = save_proto(proto, bench_dir / "floor.onnx")
    made = [{"model": "floor", "format": REFERENCE, "precision": "fp32", "file": "bench/floor.onnx"}]
    if runtimes is not None and "onnxruntime" not in runtimes:
        made = []
    if runtimes is not None and "litert" not in runtimes:
        return made
    try:
        onnx_to_tflite(floor, bench_dir, "floor", ("fp32",))
        made.append({"model": "floor", "format": "tflite_fp32", "precision": "fp32", "file": "bench/floor_fp32.tflite"})
    except Exception as exc:  # the floor is context, not a result: say so and go on
        log.warning("no LiteRT floor model: %s", str(exc).splitlines()[-1])
    return made


def warm_floor_conversion() -> None:
    """Convert the TFLite floor into the conversion cache (in the current converter session, if any)."""
    with temp_dir("pocketkd-floor") as tmp:
        runtime_floor_models(Path(tmp), {"litert"})
