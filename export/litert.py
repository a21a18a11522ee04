"""PyTorch -> TFLite with litert-torch (``export.tflite.converter: litert_torch``), the second TFLite
converter beside onnx2tf (``export.tflite``); measured side by side in docs/BENCHMARKS.md.

It converts the PyTorch student itself, not its ONNX file: the model is ``torch.export``-ed here
(image models wrapped so the file's input is NHWC, like onnx2tf's files), the program is saved, and
the converter child (``export.converter``) runs ``export.litert_convert`` on it. Conversions go
through the conversion cache, keyed by the model's fingerprint (``export.fingerprint``: module tree,
source files, weights), the input shape and batch, the variants, the calibration array and the tool
versions.

What it cannot do is a ``NotSupported`` error, which the export turns into a ``not_supported``
row, never into silence: litert-torch 0.10 has no working dynamic batch axis (its JAX lowering of
``aten.mul`` / ``aten.view`` fails on the symbolic size, even for a three-layer MLP; upstream
google-ai-edge/litert-torch#685 and #870), so the server files (dynamic batch) are onnx2tf's only;
the Android bundle's fixed-batch files are converted.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export import conversion_cache as cc
from export import converter, litert_convert
from export.fingerprint import model_fingerprint
from pipeline.errors import UserError
from pipeline.io import atomic_copy
from pipeline.procs import temp_dir

log = logging.getLogger(__name__)

NAME = "litert_torch"
PACKAGES = ("litert_torch", "ai_edge_quantizer")  # import names the converter needs
TOOLS = ("litert-torch", "ai-edge-quantizer", "litert-converter", "ai-edge-litert", "torch", "jax", "numpy")
INSTALL = "pip install -e '.[litert]' (the optional extra; docs/BENCHMARKS.md compares the two converters)"


class NotSupported(Exception):
    """A file this converter cannot make; the message says why (the export writes a status row)."""


def missing() -> list[str]:
    """The converter's packages that are not installed (checked without importing them)."""
    return [p for p in PACKAGES if importlib.util.find_spec(p) is None]


def require() -> None:
    if bad := missing():
        raise UserError(f"export.tflite.converter is litert_torch but {' and '.join(bad)} "
                        f"{'is' if len(bad) == 1 else 'are'} not installed: {INSTALL}")


class _NHWC(nn.Module):
    """The model with a channels-last input, as onnx2tf's TFLite files take images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def torch_to_tflite(model: nn.Module, input_shape: tuple[int, ...], batch: int | None, out_dir: Path,
                    stem: str = "student", variants: tuple[str, ...] = ("fp32", "fp16"),
                    calib: np.ndarray | None = None, timeout: float = 900) -> dict[str, Path]:
    """Convert ``model`` (PyTorch layout ``input_shape`` without the batch axis); returns {variant:
    path} of the files written into ``out_dir`` as ``{stem}_{variant}.tflite``. ``calib``:
    representative model-ready inputs in TFLite's layout (NHWC for images), needed by the int8
    variants. ``batch`` None (a dynamic batch axis) raises ``NotSupported``."""
    require()
    if batch is None:
        raise NotSupported(f"not supported by {NAME}: no dynamic batch axis in litert-torch 0.10 (upstream "
                           "google-ai-edge/litert-torch#685, #870); the Android bundle's fixed-batch files are made")
    unknown = set(variants) - set(litert_convert.VARIANTS)
    if unknown:
        raise ValueError(f"unknown TFLite variants {sorted(unknown)}; allowed: {', '.join(litert_convert.VARIANTS)}")
    integer = bool({"int8", "int8_io"} & set(variants))
    if integer and calib is None:
        raise ValueError("int8 TFLite variants need representative data (calib)")
    model = model.eval()
    image = len(input_shape) == 3
    wrapped = _NHWC(model) if image else model
    shape = [batch, *((input_shape[1], input_shape[2], input_shape[0]) if image else input_shape)]
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = {v: out_dir / f"{stem}_{v}.tflite" for v in variants}
    t0 = time.perf_counter()
    inputs = {"model": model_fingerprint(model)}
    if integer:
        c = np.ascontiguousarray(calib, dtype=np.float32)
        inputs["calibration"] = cc.sha256_bytes(c.tobytes() + repr(c.shape).encode())
    key, parts = cc.make_key(NAME, inputs, {"variants": sorted(variants), "shape": shape, "nhwc": image},
                             cc.versions(*TOOLS), cc.source_hash(litert_convert, __file__))
    cache = cc.ConversionCache()
    if cache.fetch(key, {f"{v}.tflite": p for v, p in dest.items()}) is not None:
        log.debug("tflite %s %s (litert_torch): from the conversion cache", stem, ",".join(variants))
        return dest
    with temp_dir("pocketkd-litert") as tmp:
        tmp = Path(tmp)
        with torch.no_grad():
            program = torch.export.export(wrapped, (torch.zeros(shape),))
        torch.export.save(program, tmp / "program.pt2")
        calib_path = None
        if integer:
            calib_path = tmp / "calib.npy"
            np.save(calib_path, c)
        run_dir = tmp / "out"
        run_dir.mkdir()
        with converter.session(timeout) as conv:
            try:
                made = conv.request(NAME, program=str(tmp / "program.pt2"), out_dir=str(run_dir),
                                    variants=list(variants), calib_path=str(calib_path) if calib_path else None,
                                    sample_shape=shape)
            except converter.ConverterError as exc:
                raise RuntimeError(f"litert_torch failed on {stem}: {exc}") from None
        for v in variants:
            atomic_copy(Path(made[v]), dest[v])
        cache.store(key, parts, {f"{v}.tflite": Path(made[v]) for v in variants})
    log.info("tflite   %-8s %s converted by litert_torch in %.1f s", stem, ",".join(variants), time.perf_counter() - t0)
    return dest
