"""ONNX -> ONNX steps (fp16, ORT static and dynamic int8) through the conversion cache.

The pocketkd metadata in every ONNX file holds the export stage's config hash, which changes with
any ``export`` key, ``export.limits`` included; the steps carry the source's ``metadata_props``
into their output (ORT's quantizer reorders them, and adds its own). So a step runs on a copy of
its source whose metadata *values* are blank (keys and their order kept), the result is what the
cache stores, and the source's values are filled back in by key. This gives the same bytes as the
step run on the source itself (checked for all three steps: the tools' output order depends on the
keys only), and the key depends on the graph, not on ``export.limits``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from export import conversion_cache as cc
from export.onnx_export import save_proto

TOOLS = ("onnxruntime", "onnx", "numpy")


def array_hash(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x)
    return cc.sha256_bytes(f"{x.dtype}{x.shape}".encode() + x.tobytes())


def cached_step(kind: str, src: Path, dst: Path, make: Callable[[Path, Path], Path], *, inputs: dict[str, str],
                options: dict, code: tuple) -> Path:
    """``make(source, output)`` on the metadata-blank copy of ``src``, or its cached result; the
    output with the source's metadata values is written to ``dst``."""
    model = onnx.load(str(src))
    values = {p.key: p.value for p in model.metadata_props}
    for p in model.metadata_props:
        p.value = ""
    with tempfile.TemporaryDirectory(prefix="pocketkd-step-") as tmp:
        blank, out = Path(tmp) / src.name, Path(tmp) / "out.onnx"
        save_proto(model, blank)
        key, parts = cc.make_key(kind, {"onnx": cc.sha256_bytes(blank.read_bytes()), **inputs}, options,
                                 cc.versions(*TOOLS), cc.source_hash(__file__, *code))
        cache = cc.ConversionCache()
        if cache.fetch(key, {"out.onnx": out}) is None:
            make(blank, out)
            cache.store(key, parts, {"out.onnx": out})
        result = onnx.load(str(out))
    for p in result.metadata_props:
        if p.key in values:
            p.value = values[p.key]
    return save_proto(result, dst)
