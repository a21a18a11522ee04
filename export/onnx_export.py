"""torch -> ONNX with the dynamo exporter (dynamic batch, named input/output), then onnxsim."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.io import atomic_write

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(
    model: nn.Module,
    path: Path,
    in_features: int,
    opset: int = 18,
    simplify: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` to ``path`` with input ``input`` (batch, in_features) and output ``output``."""
    model = model.eval()
    example = (torch.zeros(2, in_features),)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # the exporter reports progress and "torchvision is not installed" through its own loggers
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        program = torch.onnx.export(
            model,
            example,
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
        )
    proto = program.model_proto
    if simplify:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:
            proto = simplified
        else:
            log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
    set_metadata(proto, metadata or {})
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            proto.metadata_props.add(key=key, value=str(value))


def graph_io(path: Path) -> tuple[list[str], list[str]]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]
