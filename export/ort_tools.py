"""ONNX Runtime's mobile tools: ORT-format conversion (with the operator list for a reduced build)
and the mobile usability checker (NNAPI / CoreML verdicts)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.io import atomic_copy, atomic_write_text

VERDICT = re.compile(r"Model should perform well with (NNAPI|CoreML NeuralNetwork|CoreML MLProgram) as is: (YES|NO)")
KEYS = {"NNAPI": "nnapi", "CoreML NeuralNetwork": "coreml_neuralnetwork", "CoreML MLProgram": "coreml_mlprogram"}


def convert_to_ort(onnx_files: list[Path], out_dir: Path, target_platform: str = "arm") -> dict[str, Path]:
    """Convert ONNX files to .ort (``optimization_style Fixed``); also writes
    ``required_operators.config`` covering all of them. Returns {onnx file name: .ort path}."""
    with tempfile.TemporaryDirectory(prefix="pocketkd-ort-") as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        src.mkdir()
        for f in onnx_files:
            shutil.copy(f, src / f.name)
        proc = subprocess.run(
            [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src), "--output_dir",
             str(dst), "--optimization_style", "Fixed", "--target_platform", target_platform],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise RuntimeError(f"ORT format conversion failed:\n{tail}")
        made = {}
        for f in onnx_files:
            ort_file = dst / (f.name[: -len(".onnx")] + ".ort")
            if not ort_file.exists():
                raise RuntimeError(f"ORT conversion wrote no {ort_file.name}")
            made[f.name] = atomic_copy(ort_file, out_dir / ort_file.name)
        config = (dst / "required_operators.config").read_text()
        # the tool writes absolute temp paths in its header; keep just the file names
        config = re.sub(r"^# - .*/([^/\n]+)$", r"# - \1", config, flags=re.M)
        atomic_write_text(out_dir / "required_operators.config", config)
    return made


def mobile_usability(path: Path) -> dict[str, str]:
    """The "as is" verdicts of ORT's mobile usability checker, e.g. {"nnapi": "YES", ...}.

    Runs the same code as ``python -m onnxruntime.tools.check_onnx_model_mobile_usability``
    (``usability_checker.analyze_model``) in-process, capturing its log lines."""
    import logging

    from onnxruntime.tools.mobile_helpers import usability_checker

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(f"pocketkd.usability.{path.name}")
    logger.handlers[:] = [Capture()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    usability_checker.analyze_model(Path(path), skip_optimize=False, logger=logger)
    verdicts = {KEYS[m.group(1)]: m.group(2) for m in VERDICT.finditer("\n".join(lines))}
    if not verdicts:
        raise RuntimeError(f"ORT mobile usability checker gave no verdict for {path.name}: {lines[-3:]}")
    return verdicts
