"""Config sections ``qat`` and ``export``: quantization-aware fine-tuning, formats, int8 and limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from export.format_table import ANDROID_DEFAULT, FORMAT_NAMES, ROWS, SERVER_DEFAULT, FormatName
from pipeline.options import Strict


TFLiteFloatOp = Literal["MUL", "ADD", "SUB", "MEAN", "AVERAGE_POOL_2D", "LOGISTIC", "HARD_SWISH", "CONCATENATION"]


class Int8Config(Strict):
    calibration_samples: int = Field(2048, ge=1, description="training inputs fed to the int8 calibration (at most)")
    calibration_seed: int = Field(
        0, description="seed of the calibration sample: a random sample of the training split, stratified over the "
        "label range for regression (never the first rows in file order)")
    calibrate_method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="ONNX Runtime calibration method"
    )
    per_channel: bool = Field(True, description="per-channel weight scales")
    float_first_layer: bool = Field(
        True, description="ONNX static int8: keep the first layer in float so the raw input is not quantized"
    )
    float_last_layer: bool = Field(
        True, description="ONNX static and dynamic int8 (and their .ort) and the float-I/O int8 TFLite: keep the last "
        "Gemm/Conv/MatMul (TFLite: FULLY_CONNECTED/CONV_2D and any op after it) in float, so the output is not "
        "rounded to 256 levels (on the default toy: 1.027x -> 1.015x of fp32; a 64-weight layer; outputs in "
        "different units share one grid otherwise), its input stays on the previous layer's 8-bit grid. Only while "
        "another layer stays int8; the int8-I/O TFLite file stays full-integer"
    )
    output_grid: Literal["mse", "minmax"] = Field(
        "mse", description="full-integer TFLite (onnx2tf): the int8 output tensor's grid. minmax: the range the "
        "converter calibrated; mse: that range or a wider (up to +10 %) / narrower (down to -2.5 %) one, whichever "
        "puts the file's outputs closest to the fp32 file's on the calibration rows (export/tflite_output_grid.py; "
        "toy int8-I/O files, selection seeds: worst 1.023x -> 1.013x of their 8-bit-input figure). Only where a "
        "FULLY_CONNECTED layer makes the output"
    )
    float_ops: list[TFLiteFloatOp] = Field(
        ["MUL", "MEAN"], description="float-I/O int8 TFLite: op types kept in float (selective quantization); "
        "MUL: MobileNetV3's hard-swish and squeeze-excite products, whose int8 rounding compounds over ~60 Muls "
        "(pose student: roll RMSE 1.013x -> 1.000x of fp32); MEAN: the squeeze-excite / pooling means, whose int8 "
        "form (an output grid other than the input's) NNAPI's delegate refuses (pose student: NNAPI 143/229 nodes "
        "in 3 partitions -> all 230; RMSE 1.008x -> 1.010x of fp32 over 4 runs, each within 0.4 points; same XNNPACK "
        "partition, same latency). Graphs without them (MLP, "
        "CNN students) are unchanged"
    )
    prepare: bool = Field(
        True, description="MLP students: equalise hidden channels and round weights GPTQ-style onto the int8 grid "
        "before ONNX static / dynamic int8 and TFLite int8 conversion (fp32 function unchanged)"
    )


class QATConfig(Strict):
    enabled: bool = Field(
        True, description="after distillation, fine-tune the student with fake int8 quantization (ORT QDQ / LiteRT "
        "int8 scheme) under the method's loss, weights snapped to the int8 grid; the export then skips "
        "export.int8.prepare (docs/QAT.md). ReLU mlp / cnn students and the reference image backbones"
    )
    epochs: int = Field(10, ge=1, description="QAT fine-tuning epochs (the best fake-quantized validation loss is kept)")
    lr: float = Field(3e-5, gt=0, description="Adam learning rate of the QAT fine-tuning")


class LimitsConfig(Strict):
    fp16_rmse_ratio: float = Field(1.01, ge=1, description="fp16 files: RMSE at most this x the PyTorch student's")
    int8_rmse_ratio: float = Field(1.05, ge=1, description="int8 files: RMSE at most this x the PyTorch student's")
    fp16_accuracy_drop: float = Field(0.005, ge=0, le=1, description="classification, fp16 files: accuracy at most this below PyTorch's")
    int8_accuracy_drop: float = Field(0.01, ge=0, le=1, description="classification, int8 files: accuracy at most this below PyTorch's")


ALL_FORMATS = list(FORMAT_NAMES)  # the names come from the one format table (export/format_table.py)


class AndroidConfig(Strict):
    enabled: bool = Field(True, description="write the Android bundle (android/) with fixed-shape files")
    batch: int = Field(1, ge=1, description="fixed batch size of the bundle's files (NNAPI needs fixed shapes)")
    formats: list[FormatName] | None = Field(
        None,
        description="formats of the bundle, at the fixed batch size; null: those of export.formats that belong in a "
        "bundle (the Android defaults), plus the Runtime-style .ort of each .ort precision chosen",
    )


class TFLiteConfig(Strict):
    converter: Literal["onnx2tf", "litert_torch"] = Field(
        "onnx2tf", description="what makes the .tflite files: onnx2tf (from the ONNX file; the default: dynamic "
        "batch, smaller files, 4x faster on the MobileNet student, docs/BENCHMARKS.md) or litert_torch (from the "
        "PyTorch model with ai-edge-quantizer recipes; the optional extra: pip install -e '.[litert]'; fixed-batch "
        "files only: the dynamic-batch TFLite rows are not_supported, the Android bundle gets its files)")


class ExportConfig(Strict):
    opset: int = Field(18, ge=17, le=23, description="ONNX opset (the dynamo exporter writes 18 natively)")
    simplify: bool = Field(True, description="run onnxsim on the exported graph")
    parity_atol: float = Field(1e-4, gt=0, description="max |diff| allowed between fp32 files and PyTorch, times "
                               "max(1, largest |output|) (float32 keeps ~7 significant digits)")
    formats: list[FormatName] = Field(
        list(SERVER_DEFAULT), min_length=1,
        description="formats written with a dynamic batch axis (server use) and benchmarked (default: every format "
        "but the Runtime-style .ort files, which are for Android's XNNPACK / NNAPI execution providers)"
    )
    check_mobile: bool = Field(True, description="run ORT's mobile usability checker on every ONNX file")
    clip_outputs: bool = Field(
        False, description="regression: clip the student's outputs to the training label range inside every "
        "exported file (the range is in the files' metadata, preprocessing.labels)")
    int8: Int8Config = Field(default_factory=Int8Config)
    tflite: TFLiteConfig = Field(default_factory=TFLiteConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    android: AndroidConfig = Field(default_factory=AndroidConfig)

    def bundle_formats(self) -> list[str]:
        """The Android bundle's formats: ``android.formats`` when set, else the bundle defaults that follow
        ``formats`` (a Runtime-style .ort goes with the Fixed-style .ort of its precision)."""
        if self.android.formats is not None:
            return list(self.android.formats)
        chosen = set(self.formats)
        ort = {ROWS[n].precision for n in chosen if ROWS[n].ort_style}
        return [n for n in ANDROID_DEFAULT
                if n in chosen or (ROWS[n].ort_style == "Runtime" and ROWS[n].precision in ort)]
