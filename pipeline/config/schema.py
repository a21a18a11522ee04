"""The whole run configuration: one typed section per stage family, validated before any work starts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field, model_validator

from pipeline.config.bench import BenchConfig
from pipeline.config.distill import DistillConfig
from pipeline.config.export import ExportConfig, QATConfig
from pipeline.config.models import StudentConfig, TeacherConfig
from pipeline.data import DataConfig, task_of
from pipeline.methods import METHODS
from pipeline.options import Strict

ALL_CONFIG = ("*",)  # a stage slice that is the whole config (see pipeline/config/slice.py)


class Config(Strict):
    seed: int = Field(0, ge=0, description="seed of every random draw; the same seed gives the same CPU run")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    qat: QATConfig = Field(default_factory=QATConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @model_validator(mode="after")
    def _methods_fit_task(self) -> Config:
        task = task_of(self.data)
        for key, name in [("distill.method", self.distill.method)] + [
                ("distill.baselines", b) for b in self.distill.baselines]:
            if task not in METHODS[name].tasks:
                ok = sorted(n for n, m in METHODS.items() if task in m.tasks)
                raise ValueError(f"{key}: method {name!r} does not work on {task} data ({self.data.name}); "
                                 f"allowed for {task}: {', '.join(ok)}")
        selecting = {"ds", "lr_ds"} & {self.distill.method, *self.distill.baselines}
        if selecting and self.distill.ds.score == "influence" and self.teacher.onnx:
            raise ValueError("distill.ds.score: 'influence' needs the teacher's penultimate features, which a "
                             "teacher.onnx file does not give; use 'teacher_logp', or a PyTorch teacher "
                             "(teacher.checkpoint or a trained one)")
        if task == "classification" and self.student.keep_head != "label":
            raise ValueError("student.keep_head: classification students deploy the label head; use 'label'")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def section_hash(self, *keys: str) -> str:
        """Hash of the named sections (plus the seed): a stage's slice of the config. A dotted key
        (``export.int8``) names a subsection."""
        full = self.to_dict()

        def pick(key: str):
            node = full
            for part in key.split("."):
                node = node[part]
            return node

        if ALL_CONFIG[0] in keys:
            return self.hash()
        part = {"seed": full["seed"], **{k: pick(k) for k in keys}}
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
