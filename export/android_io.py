"""The real signature of a bundle file, read from the file by its own runtime: onnxruntime for
``.onnx`` / ``.ort``, LiteRT's interpreter for ``.tflite``. Every input and output with its name,
shape, dtype, layout and (8-bit tensors) scale and zero point. The snippets, the README and the
standard TFLite metadata are written from this, never from what the export meant to write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def read_signature(path: Path) -> dict:
    """{"inputs": [tensor, ...], "outputs": [tensor, ...]}; a tensor is {"name", "shape", "dtype",
    "layout"?, "quantization"?: {"scale", "zero_point"}}. Image inputs are NCHW in ONNX / ORT files and
    NHWC in TFLite files (onnx2tf transposes them)."""
    path = Path(path)
    if path.suffix in (".onnx", ".ort"):
        sig = _ort_signature(path)
    elif path.suffix == ".tflite":
        sig = _tflite_signature(path)
    else:
        raise ValueError(f"{path.name}: not a bundle model file (.onnx, .ort or .tflite)")
    for t in sig["inputs"]:
        rank = len(t["shape"])
        t["layout"] = ("NCHW" if path.suffix != ".tflite" else "NHWC") if rank == 4 else "NC" if rank == 2 else "?"
    return sig


def _ort_signature(path: Path) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def one(t) -> dict:
        return {"name": t.name, "shape": [d if isinstance(d, int) else -1 for d in t.shape],
                "dtype": ORT_DTYPES.get(t.type, t.type)}

    return {"inputs": [one(t) for t in sess.get_inputs()], "outputs": [one(t) for t in sess.get_outputs()]}


def _tflite_signature(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))

    def one(d: dict) -> dict:
        t = {"name": d["name"], "shape": [int(v) for v in d.get("shape_signature", d["shape"])],
             "dtype": np.dtype(d["dtype"]).name}
        scale, zero_point = d["quantization"]
        if scale:
            t["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        return t

    return {"inputs": [one(d) for d in interp.get_input_details()],
            "outputs": [one(d) for d in interp.get_output_details()]}


def same_io(a: dict, b: dict) -> bool:
    """Two signatures take and give the same tensors (names aside): shapes, dtypes, quantization."""
    def key(sig):
        return [(t["shape"], t["dtype"], t.get("quantization")) for t in (*sig["inputs"], *sig["outputs"])]

    return key(a) == key(b)
