"""docs/DESIGN.md's recipe for adding an export format, followed once: on a copy of the source tree,
one ``FormatRow`` is added to ``export/format_table.py`` and nothing else is edited; the config then
accepts the new name (export and bench), and the export writes, runs and checks the new file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NEW_ROW = '''    FormatRow("onnx_half", "{stem}.half.onnx", "onnxruntime", "fp16", False, "to_fp16", False,
              "test-only: fp16 ONNX under a second name"),
'''

SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np, torch
from export import export_all, ExportJob
from export.format_table import FORMAT_NAMES
from pipeline.config import load_config

cfg = load_config(overrides=["export.formats=[onnx_fp32, onnx_half]", "bench.formats=[onnx_half]"])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()
x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1)
y = np.sin(2 * x).astype(np.float32)
job = ExportJob(model=model, out_dir=Path(sys.argv[1]), input_shape=(1,), x_eval=x, y_eval=y, x_calib=x, cfg=cfg.export,
                metadata={"producer": "pocketkd-test"})
rows = export_all(job, list(cfg.export.formats))
print(json.dumps({"names": list(FORMAT_NAMES), "bench": list(cfg.bench.formats), "rows": rows}, default=str))
'''


def test_adding_a_format_is_one_row_in_the_format_table(tmp_path):
    tree = tmp_path / "src"
    for pkg in ("pipeline", "export", "models", "device_bench"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "constraints.txt", tree / "constraints.txt")
    table = tree / "export" / "format_table.py"
    text = table.read_text()
    anchor = "FORMAT_TABLE: tuple[FormatRow, ...] = (\n"
    assert anchor in text
    table.write_text(text.replace(anchor, anchor + NEW_ROW))  # the recipe's one edit

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], cwd=tree, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["names"][0] == "onnx_half" and got["bench"] == ["onnx_half"]
    rows = {r["format"]: r for r in got["rows"]}
    half = rows["onnx_half"]
    assert half["file"] == "student.half.onnx" and (out / "student.half.onnx").is_file()
    assert half["status"] == "ok" and half["precision"] == "fp16"
    # it was run in onnxruntime and compared with PyTorch, like every built-in format
    assert 0 < half["max_abs_diff_vs_torch"] < 0.05
    assert abs(half["rmse"] - rows["onnx_fp32"]["rmse"]) < 0.01
