"""torch -> ONNX with the dynamo exporter (named input/output, dynamic or fixed batch), then onnxsim;
and the ONNX-to-ONNX variants: fp16 and fixed-batch copies.

Both the dynamo export and the finished graph (batch fixed, simplified; before the metadata, which
holds the config hash) go through the conversion cache, keyed by ``export.fingerprint``: the fixed-
shape bundle reuses the dynamic export of the same student, and a run whose student did not change
imports neither the exporter nor onnxsim."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import onnx
import torch
from torch import nn

from export import conversion_cache as cc
from export import fingerprint
from export.fingerprint import model_fingerprint
from pipeline.io import atomic_write

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
TOOLS = ("torch", "onnx", "onnxscript", "numpy")


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: int | Sequence[int],
    opset: int = 18,
    simplify: bool = True,
    metadata: dict[str, str] | None = None,
    batch: int | None = None,
) -> Path:
    """Write ``model`` to ``path``: input ``input`` (batch, *input_shape), output ``output``.

    ``batch=None`` leaves the batch axis symbolic (``batch``); an int fixes it (mobile delegates
    such as NNAPI only take fixed shapes)."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    proto = _graph(model.eval(), shape, opset, simplify, batch)
    set_metadata(proto, metadata or {})
    onnx.checker.check_model(proto)
    return save_proto(proto, path)


def _graph(model: nn.Module, shape: tuple[int, ...], opset: int, simplify: bool, batch: int | None) -> onnx.ModelProto:
    """The exported graph before metadata: the dynamo export, the batch axis fixed, onnxsim; through
    the conversion cache (a hit imports neither the exporter nor onnxsim)."""
    fp = model_fingerprint(model)
    key, parts = cc.make_key("onnx_graph", {"model": fp},
                             {"input_shape": list(shape), "opset": opset, "simplify": simplify, "batch": batch},
                             cc.versions(*TOOLS, "onnxsim", "onnxruntime"), cc.source_hash(__file__, fingerprint))
    cache = cc.ConversionCache()
    with tempfile.TemporaryDirectory(prefix="pocketkd-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        if cache.fetch(key, {"model.onnx": path}) is not None:
            return onnx.load(str(path))
        proto = dynamo_export(model, shape, opset, fp)
        if batch is not None:
            proto = fix_batch(proto, batch)
        if simplify:
            import onnxsim

            simplified, ok = onnxsim.simplify(proto)
            if ok:
                proto = simplified
                # onnxsim records its own run in ~20 metadata_props keys (onnxsim.*): bookkeeping a phone
                # app never reads, ~0.6 kB in every file (and in each .ort made from it)
                kept = [p for p in proto.metadata_props if not p.key.startswith("onnxsim.")]
                del proto.metadata_props[:]
                proto.metadata_props.extend(kept)
            else:
                log.warning("onnxsim could not validate the simplified graph; keeping the unsimplified one")
        path.write_bytes(proto.SerializeToString())
        cache.store(key, parts, {"model.onnx": path})
    return proto


def _export_key(model: nn.Module, shape: tuple[int, ...], opset: int, fp: str | None = None) -> tuple[str, dict]:
    return cc.make_key("torch.onnx", {"model": fp or model_fingerprint(model)},
                       {"input_shape": list(shape), "opset": opset}, cc.versions(*TOOLS),
                       cc.source_hash(__file__, fingerprint))


def export_cached(model: nn.Module, input_shape: int | Sequence[int], opset: int = 18) -> bool:
    """Whether ``export_onnx`` of this model would find its graph in the conversion cache."""
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    cache = cc.ConversionCache()
    return cache.enabled and (cache.dir / _export_key(model.eval(), shape, opset)[0] / "entry.json").is_file()


def dynamo_export(model: nn.Module, shape: tuple[int, ...], opset: int, fp: str | None = None) -> onnx.ModelProto:
    """The dynamo exporter's graph (symbolic batch axis ``batch``), through the conversion cache: a
    model already exported, here or by another run (or the same student for the Android bundle),
    costs no export, nor the import of the exporter."""
    model = model.eval()
    key, parts = _export_key(model, shape, opset, fp)
    cache = cc.ConversionCache()
    with tempfile.TemporaryDirectory(prefix="pocketkd-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        if cache.fetch(key, {"model.onnx": path}) is not None:
            return onnx.load(str(path))
        example = (torch.zeros(2, *shape),)
        dim = torch.export.Dim(BATCH_DIM, min=1, max=1 << 20)
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
                dynamic_shapes=({0: dim},),
                dynamo=True,
                external_data=False,
            )
        proto = program.model_proto
        path.write_bytes(proto.SerializeToString())
        cache.store(key, parts, {"model.onnx": path})
    return proto


def save_proto(proto: onnx.ModelProto, path: Path) -> Path:
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))


def fix_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Replace the symbolic batch axis by ``batch`` everywhere (ORT's make_dynamic_shape_fixed)."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    make_dim_param_fixed(proto.graph, BATCH_DIM, batch)
    fix_output_shapes(proto)
    return proto


def to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute, float32 input/output kept so apps feed the same tensors."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    topological_sort(proto.graph)  # the converter appends the input Cast node at the end of the graph
    return save_proto(proto, dst)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs (the ONNX
    spec requires it; onnxruntime tolerates disorder, other consumers need not). Stable: nodes already
    in order keep their order. A cycle or a missing producer leaves the rest in their original order."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    known |= {i.values.name for i in graph.sparse_initializer}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle or an outer-scope name: keep what is left as it was
            ordered += pending
            break
        first = ready[0]
        ordered.append(first)
        known.update(first.output)
        pending.remove(first)
    if [id(n) for n in ordered] != [id(n) for n in graph.node]:
        copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
        del graph.node[:]
        graph.node.extend(copies)


def full_check(path: Path) -> str:
    """``onnx.checker.check_model(path, full_check=True)`` (with shape inference): 'ok' or the first
    line of the checker's complaint."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, DecodeError
        line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        return f"{type(exc).__name__}: {line[:300]}"
    return "ok"


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            proto.metadata_props.add(key=key, value=str(value))


def read_metadata(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def graph_io(path: Path) -> tuple[list[str], list[str]]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits], [o.name for o in proto.graph.output]
