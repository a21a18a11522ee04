"""The run configuration: a typed schema with defaults, validated before any work starts.

A config is YAML. Every key has a default (``pipeline/default.yaml`` holds the shipped default run),
unknown keys are errors, and ``--set a.b=c`` overrides one key from the command line (the value is
parsed as YAML, so ``--set teacher.train.epochs=10`` is an int).

One module per section family (``models``: teacher and student, ``distill`` (composed from the
method registry), ``export``: qat and export, ``bench``; the ``data`` section lives in
``pipeline.data``), ``schema`` composes them into ``Config``, ``load`` reads files and
overrides, ``reference`` writes docs/CONFIG.md.
"""

from pipeline.config.bench import BenchConfig
from pipeline.config.distill import DistillConfig
from pipeline.config.export import ALL_FORMATS, ExportConfig, QATConfig
from pipeline.config.load import load_config
from pipeline.config.models import StudentConfig, TeacherConfig
from pipeline.config.reference import config_reference
from pipeline.config.schema import Config
from pipeline.data import DataConfig, NoiseConfig, PoseConfig
from pipeline.methods.tor import TORConfig
from pipeline.options import TrainConfig

__all__ = ["ALL_FORMATS", "BenchConfig", "Config", "DataConfig", "DistillConfig", "ExportConfig", "NoiseConfig",
           "PoseConfig", "QATConfig", "StudentConfig", "TORConfig", "TeacherConfig", "TrainConfig", "config_reference",
           "load_config"]
