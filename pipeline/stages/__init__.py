"""The data path of ``python -m pipeline run``: one stage per row, in order.

Each stage is one module of this package. It reads the named files of the run directory and the
named sections of the config (its *slice*: ``ctx.cfg`` holds nothing else, so what a stage embeds
in its files and its cache key agree), and returns the files it wrote (atomically: temp, rename).
``environment`` names what else decides its results (files outside the run directory, the CPU's
int8 arithmetic, the bench targets' runtimes); it is part of the cache key too.
"""

from __future__ import annotations

from pipeline.config.schema import ALL_CONFIG
from pipeline.runner import Runner, Stage
from pipeline.stages.bench import bench_environment, stage_bench
from pipeline.stages.data import data_environment, stage_data
from pipeline.stages.distill import stage_distill
from pipeline.stages.export import export_environment, stage_export
from pipeline.stages.report import stage_report
from pipeline.stages.student import stage_student
from pipeline.stages.teacher import stage_teacher, teacher_environment

STAGES = [
    Stage("data", stage_data, reads=(), config=("data",), environment=data_environment,
          help="make the data set and inject label noise"),
    Stage("teacher", stage_teacher, reads=("data.npz",), config=("teacher",), environment=teacher_environment,
          distributed=True, help="train the large teacher (or load the one you give)"),
    Stage("distill", stage_distill, reads=("data.npz", "teacher_preds.npz"),
          config=("student", "distill", "teacher", "data.name"),
          distributed=True, help="train the two-head student (and the baselines)"),
    Stage("student", stage_student, reads=("student_mt.pt", "data.npz", "teacher_preds.npz"),
          config=("student", "distill", "qat", "export.int8"),
          help="quantization-aware fine-tuning (qat), then drop the teacher head: a single-output student"),
    Stage("export", stage_export, reads=("student.pt", "teacher.json", "data.npz"),
          config=("export", "student", "teacher", "qat", "distill.method", "data.name", "data.pose"),
          environment=export_environment,
          version="3",  # 3: int8 ORT rows judged on exact int8 arithmetic; seeded calibration sample
          help="ONNX, int8 ONNX, TFLite; every file checked against PyTorch"),
    Stage("bench", stage_bench, reads=("export.json", "data.npz"), config=("bench", "distill.method"),
          environment=bench_environment, help="latency and accuracy of every exported file on each target"),
    Stage("report", stage_report, reads=("data.npz", "data.json", "teacher.json", "teacher_preds.npz",
                                         "distill.json", "student.json", "student_preds.npz", "export.json",
                                         "bench/*.json"), config=ALL_CONFIG,
          help="report.json, report.md, report.html and plots/"),
]


def default_runner() -> Runner:
    return Runner(STAGES)
