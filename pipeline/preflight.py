"""Checks of a config against the data and the machine, before a run writes anything: the student's
size against the teacher's, which bench targets this machine can run, and whether the chosen TFLite
converter is installed."""

from __future__ import annotations

import logging
from pathlib import Path

from device_bench.qemu import qemu_available
from export import litert
from export.format_table import ROWS
from models import count_parameters
from pipeline.checkpoints import Shape, build_deployed, build_student, build_teacher
from pipeline.config import Config
from pipeline.data import input_shape, n_outputs
from pipeline.errors import UserError
from pipeline.given_teacher import check_given_teacher, onnx_param_count

log = logging.getLogger(__name__)


def check_model_sizes(cfg: Config, out_features: int | None = None, shape: Shape | None = None) -> dict:
    """The student must be at most ``student.max_param_ratio`` of the teacher: checked before any work."""
    shape = shape or input_shape(cfg.data)
    out_features = out_features or n_outputs(cfg.data)
    try:
        if cfg.teacher.onnx or cfg.teacher.checkpoint:
            check_given_teacher(cfg, shape, out_features)  # loads, runs, fits: before anything is written
        t = (onnx_param_count(Path(cfg.teacher.onnx).expanduser()) if cfg.teacher.onnx
             else count_parameters(build_teacher(cfg, shape, out_features)))
        s = count_parameters(build_student(cfg, shape, out_features))
        d = count_parameters(build_deployed(cfg, shape, out_features))
    except ValueError as exc:  # e.g. a cnn backbone on vector inputs
        raise UserError(f"model does not fit data '{cfg.data.name}' (input shape {shape}): {exc}") from None
    if s > cfg.student.max_param_ratio * t and (cfg.teacher.onnx or cfg.teacher.checkpoint):
        log.warning("the student (%d parameters) is more than student.max_param_ratio (%g) x the given teacher's "
                    "%d: distilling anyway, the teacher is yours", s, cfg.student.max_param_ratio, t)
    elif s > cfg.student.max_param_ratio * t:
        raise UserError(
            f"student ({cfg.student.backbone}, hidden {cfg.student.hidden}) has {s} parameters, more than "
            f"student.max_param_ratio ({cfg.student.max_param_ratio}) x the teacher's {t}; "
            "shrink the student or grow the teacher"
        )
    return {"teacher_params": t, "student_params": s, "deployed_params": d}


def resolve_targets(cfg: Config) -> tuple[Config, list[str]]:
    """Drop targets this machine cannot run when ``bench.skip_unavailable``; returns notes for the user."""

    notes, keep = [], []
    for spec in cfg.bench.targets:
        if spec == "qemu-aarch64" and cfg.bench.skip_unavailable and not qemu_available():
            notes.append("qemu-aarch64 bench skipped: qemu is not installed. Enable it with "
                         "`apt-get install qemu-user-static` (the aarch64 sysroot is then built and cached "
                         "on first use), or drop it with --set bench.targets=[host]")
            continue
        keep.append(spec)
    if keep == cfg.bench.targets:
        return cfg, notes
    bench = cfg.bench.model_copy(update={"targets": keep or ["host"]})
    return cfg.model_copy(update={"bench": bench}), notes


def check_tflite_converter(cfg: Config) -> None:
    """``export.tflite.converter: litert_torch`` needs the optional extra; missing, it is one line
    (exit 2) before anything is written, not a failed export after training."""

    if cfg.export.tflite.converter != "litert_torch":
        return
    names = set(cfg.export.formats) | (set(cfg.export.bundle_formats()) if cfg.export.android.enabled else set())
    if any(ROWS[n].runtime == "litert" for n in names):
        litert.require()
