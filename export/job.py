"""One export job (a model, where its files go, the data it is checked on) and one format row
(``Format``: a row of ``export.format_table`` joined with the function that makes it)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from export.format_table import ROWS
from export.calibration import calibration_indices, describe as describe_calibration
from pipeline.config import ExportConfig


@dataclass
class ExportJob:
    model: nn.Module  # single-output PyTorch model, eval mode
    out_dir: Path
    input_shape: tuple[int, ...]  # one input, without the batch axis (PyTorch layout)
    x_eval: np.ndarray  # model-ready evaluation inputs (clean test split)
    y_eval: np.ndarray  # clean test labels (regression targets, or class indices)
    x_calib: np.ndarray  # calibration inputs (training split)
    cfg: ExportConfig
    stem: str = "student"
    y_calib: np.ndarray | None = None  # labels of x_calib (regression): the calibration sample is stratified over them
    metadata: dict[str, str] = field(default_factory=dict)
    batch: int | None = None  # None: dynamic batch axis; an int: fixed (mobile bundle)
    task: str = "regression"  # or "classification": outputs are logits, the metric is accuracy
    abstain: bool = False  # classification: the last output is the gambler's abstain option
    angles: bool = False  # regression outputs are (pitch, yaw) radians: angular error is reported
    output_names: list[str] = field(default_factory=list)
    tflite_variants: tuple[str, ...] = ("fp32", "fp16")  # what one onnx2tf run should write
    _tflite: dict[str, Path] | Future | Exception | None = None
    _ort: dict[str, dict[str, Path]] = field(default_factory=dict)  # ORT style -> {onnx file name: .ort}
    _ort_ops: dict[str, str] = field(default_factory=dict)  # ORT style -> its required_operators config text
    _base: Path | None = field(default=None, init=False, repr=False)

    def file(self, fmt: Format) -> Path:
        return self.out_dir / fmt.file.format(stem=self.stem)

    def ort_source(self, fmt: Format) -> Path:
        """The ONNX file an .ort format is converted from (same precision)."""
        return self.out_dir / ROWS["onnx_fp32" if fmt.precision == "fp32" else "onnx_int8"].file.format(stem=self.stem)

    @cached_property
    def torch_outputs(self) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.as_tensor(self.x_eval, dtype=torch.float32)).numpy()

    @cached_property
    def calib_rows(self) -> np.ndarray:
        """Training rows of the calibration sample: seeded, over the whole split (never file order)."""
        q = self.cfg.int8
        return calibration_indices(len(self.x_calib), q.calibration_samples, q.calibration_seed,
                                   self.y_calib if self.task == "regression" else None)

    @property
    def calib(self) -> np.ndarray:
        return self.x_calib[self.calib_rows]

    def calibration_info(self) -> dict:
        q = self.cfg.int8
        stratified = self.task == "regression" and self.y_calib is not None
        return {"rows": int(len(self.calib_rows)), "of": int(len(self.x_calib)), "seed": q.calibration_seed,
                "stratified_by_label": stratified,
                "how": describe_calibration(len(self.x_calib), q.calibration_samples, q.calibration_seed, stratified)}


@dataclass(frozen=True)
class Format:
    name: str
    file: str  # file name template; {stem} is "student" or "teacher"
    runtime: str
    precision: str  # fp32 | fp16 | int8
    strict: bool  # fp32: must match PyTorch within parity_atol
    make: Callable[[ExportJob, Format], Path]
    description: str = ""
    variant: str = ""  # TFLite: which onnx2tf output
    android: bool = False  # in the Android bundle by default
    server: bool = True  # in export.formats by default
    ort_style: str = ""  # .ort: "Fixed" or "Runtime"
    execution_providers: tuple[str, ...] = ()

    @property
    def is_onnx(self) -> bool:
        return self.file.endswith(".onnx")
