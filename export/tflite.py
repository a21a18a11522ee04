"""ONNX -> TFLite with onnx2tf (fp32 and fp16 files from one conversion).

The conversion runs in a child process: TensorFlow is heavy to import, logs from C++ straight
to the terminal, and keeps memory; a child keeps all of that out of the pipeline process, and
its output is shown only when it fails.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.io import atomic_copy

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": "float32", "fp16": "float16"}


def onnx_to_tflite(src: Path, out_dir: Path, stem: str = "student", timeout: float = 900) -> dict[str, Path]:
    """Convert ``src``; returns {"fp32": path, "fp16": path} of files written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pocketkd-onnx2tf-") as tmp:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run(
            [sys.executable, "-m", "export.tflite", str(src), tmp],
            capture_output=True, text=True, env=env, timeout=timeout,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"onnx2tf failed on {src.name} (exit {proc.returncode}):\n{tail}")
        made = {}
        for short, long in PRECISIONS.items():
            found = Path(tmp) / f"{src.stem}_{long}.tflite"
            if not found.exists():
                raise RuntimeError(f"onnx2tf did not write {found.name}; wrote: {sorted(os.listdir(tmp))}")
            made[short] = atomic_copy(found, out_dir / f"{stem}_{short}.tflite")
    return made


def _convert(src: str, out_dir: str) -> None:
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=src,
        output_folder_path=out_dir,
        copy_onnx_input_output_names_to_tflite=True,
        non_verbose=True,
    )


if __name__ == "__main__":
    _convert(sys.argv[1], sys.argv[2])
