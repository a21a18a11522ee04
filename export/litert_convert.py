"""PyTorch -> TFLite with litert-torch, inside the converter child (``export.converter_child``): the
second TFLite converter (``export.tflite.converter: litert_torch``; the optional extra ``litert``).

One call converts one saved ``torch.export`` program into the TFLite variants asked for:

* ``fp32`` is ``litert_torch.convert`` of the program (fixed shapes: see ``export.litert``);
* the others come from that fp32 file with ai-edge-quantizer recipes: ``fp16`` float16 weights
  (weight-only, ``FLOAT_CASTING``), ``dynamic_range`` its ``dynamic_wi8_afp32`` recipe (int8
  per-channel weights, activations quantized at run time), ``int8`` its ``static_wi8_ai8`` recipe
  with the graph input and output left in float (a QUANTIZE after the input and a DEQUANTIZE before
  the output, as onnx2tf's full-integer file has), ``int8_io`` the same recipe with int8 I/O. The
  two int8 files share one calibration (the quantizer's min/max per tensor of the float model).

The scheme is the one onnx2tf's int8 files use: int8 per-channel symmetric weights, int8
per-tensor asymmetric activations, min/max calibration on the representative rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "fp16", "dynamic_range", "int8", "int8_io")
SIGNATURE = "serving_default"


def convert(program: str, out_dir: str, variants: list[str], calib_path: str | None,
            sample_shape: list[int]) -> dict[str, str]:
    """Write ``student_<variant>.tflite`` files into ``out_dir`` from the ``torch.export`` program
    saved at ``program``; returns {variant: path}. ``calib_path``: an .npy of representative inputs
    (the program's input layout), needed by the int8 variants."""
    import litert_torch
    import torch

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}")
    out = Path(out_dir)
    module = torch.export.load(program).module()
    sample = (torch.zeros(sample_shape, dtype=torch.float32),)
    fp32 = out / "student_fp32.tflite"
    litert_torch.convert(module, sample).export(str(fp32))
    made = {"fp32": str(fp32)}
    recipes = _recipes()
    calibration = None
    for v in variants:
        if v == "fp32":
            continue
        if v in ("int8", "int8_io") and calibration is None:
            if calib_path is None:
                raise ValueError("int8 variants need representative data")
            calibration = _calibrate(fp32, recipes["int8"], np.load(calib_path), sample_shape[0])
        path = out / f"student_{v}.tflite"
        path.write_bytes(_quantize(fp32, recipes[v], calibration if v in ("int8", "int8_io") else None))
        made[v] = str(path)
    return {v: made[v] for v in variants}


def _recipes() -> dict:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    every = qtyping.TFLOperationName.ALL_SUPPORTED
    fp16 = recipe_manager.RecipeManager()
    fp16.add_weight_only_config(regex=".*", operation_name=every, num_bits=16,
                                algorithm_key=AlgorithmName.FLOAT_CASTING)
    float_io = recipe_manager.RecipeManager()
    float_io.add_static_config(regex=".*", operation_name=every, activation_num_bits=8, weight_num_bits=8)
    for end in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        float_io.add_quantization_config(".*", end, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return {"fp16": fp16.get_quantization_recipe(), "dynamic_range": recipe.dynamic_wi8_afp32(),
            "int8": float_io.get_quantization_recipe(), "int8_io": recipe.static_wi8_ai8()}


def _calibrate(fp32: Path, recipe, calib: np.ndarray, batch: int) -> dict:
    """Each tensor's min and max over all representative rows (what TensorFlow's converter, and so
    onnx2tf, calibrates with), in batches of the file's fixed batch size, the last one padded with
    its own last row. ``Quantizer.calibrate`` would keep a moving average (factor 0.95) of each
    batch's min/max instead: with batches of one row that is a range much narrower than the data's
    (measured on the toy: an input grid over [0, 0.075] of inputs in [-3.1, 3.1], int8 RMSE 4.6x fp32
    where onnx2tf's file gives 1.0x), so the calibrator is called with a running min/max."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, recipe_manager

    name = Interpreter(model_path=str(fp32)).get_signature_list()[SIGNATURE]["inputs"][0]
    rows = []
    for i in range(0, len(calib), batch):
        chunk = calib[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        rows.append({name: np.ascontiguousarray(chunk, dtype=np.float32)})
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    cal = calibrator.Calibrator(str(fp32), num_threads=1, qsv_update_func=_running_min_max)
    cal.calibrate({SIGNATURE: rows}, manager)
    return cal.get_model_qsvs()


def _running_min_max(qsv: dict, new: dict) -> dict:
    if not qsv:
        return new
    return {**new, "min": np.minimum(qsv["min"], new["min"]), "max": np.maximum(qsv["max"], new["max"])}


def _quantize(fp32: Path, recipe, calibration: dict | None) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe)
    return bytes(q.quantize(calibration, enable_progress_report=False).quantized_model)
