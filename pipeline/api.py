"""The Python API: ``from pipeline import run``; what ``python -m pipeline run`` does, as a call.

    from pipeline import run

    report = run("configs/pose_mobilenet.yaml", out="runs/pose", overrides={"seed": 1})
    print(report.short_table())
    print(report.deployed["test"]["rmse"], report.over_limit)

Errors are exceptions (``pipeline.errors.UserError`` for a bad config or input, ``ParityError`` for
an exported file that does not match PyTorch); nothing is printed and logging is left to the caller.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import distributed
from pipeline.config import Config, load_config
from pipeline.config.load import config_from_dict
from pipeline.errors import UserError
from pipeline.preflight import check_model_sizes, check_tflite_converter, resolve_targets
from pipeline.procs import sweep_stale_temp_dirs
from pipeline.report import short_table
from pipeline.report.verdicts import count
from pipeline.rundir import RunLock, check_out_dir
from pipeline.runner import StageResult
from pipeline.stages import default_runner

log = logging.getLogger(__name__)

ConfigInput = str | Path | Mapping[str, Any] | Config | None


@dataclass
class Report:
    """What a run left in ``run_dir``: the stage results and ``report.json`` (empty when the report
    stage did not run, e.g. with ``only=["export"]``)."""

    run_dir: Path
    stages: list[StageResult]
    notes: list[str] = field(default_factory=list)  # e.g. a bench target this machine cannot run
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def deployed(self) -> dict[str, Any]:
        """The deployed student's record (``student.json``): test metrics, parameters, QAT."""
        return self.data.get("deployed") or {}

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        return self.data.get("verdicts") or []

    @property
    def over_limit(self) -> list[str]:
        """Files over their accuracy limit or not exported: what ``--strict`` turns into exit code 3."""
        return [v["file"] for v in self.verdicts if v["status"] in count(self.verdicts)]

    def short_table(self) -> str:
        return short_table(self.run_dir) if self.data else ""


def _overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"teacher.train.epochs": 10}`` or ``["teacher.train.epochs=10"]`` as ``--set`` assignments."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]  # JSON is YAML
    return [str(o) for o in overrides]


def resolve_config(config: ConfigInput = None, overrides: Mapping[str, Any] | Sequence[str] | None = None
                   ) -> Config:
    """A validated ``Config`` from a YAML path, a dict of sections, a ``Config`` or None (the default)."""
    sets = _overrides(overrides)
    if isinstance(config, Config):
        config = config.to_dict()
    if isinstance(config, Mapping):
        return config_from_dict(dict(config), sets)
    return load_config(config, sets)


def run(config: ConfigInput = None, out: str | Path = "runs/default",
        overrides: Mapping[str, Any] | Sequence[str] | None = None, *, force: bool = False,
        start: str | None = None, only: Sequence[str] | None = None) -> Report:
    """Run the pipeline into ``out``; finished stages whose config slice and inputs did not change are
    skipped (as on the command line). ``start`` re-runs from that stage, ``only`` runs the named ones."""
    only = list(only) if only else None
    if start and only:
        raise UserError(f"start={start!r} and only={only!r} conflict: give one of them")
    distributed.init_from_env()  # under torchrun: join the other ranks
    cfg, notes = resolve_targets(resolve_config(config, overrides))  # validated before anything is written
    runner = default_runner()
    runner.select(start, only)  # unknown stage names fail before anything is written
    sizes = check_model_sizes(cfg)  # also loads a given teacher file
    check_tflite_converter(cfg)  # litert_torch chosen but not installed: one line, exit 2
    run_dir = check_out_dir(str(out), force=force)

    def check_and_lock():  # rank 0 alone (torchrun): the others get its result or its error
        runner.verify_inputs(run_dir, start, only)  # only: inputs match manifest.json
        return RunLock(run_dir).acquire()  # creates the directory, its marker and the lock

    lock = distributed.on_main(check_and_lock)
    try:
        for prefix in ("pocketkd-onnx2tf", "pocketkd-bench"):
            sweep_stale_temp_dirs(prefix)  # what a SIGKILLed run could not remove
        for note in notes:
            log.warning("%s", note)
        log.info("run directory %s · teacher %d params · student %d params (deployed %d)", run_dir,
                 sizes["teacher_params"], sizes["student_params"], sizes["deployed_params"])
        results, _ = runner.run(run_dir, cfg, force=force, start=start, only=only)
    finally:
        if lock is not None and distributed.is_main():
            lock.release()
    report_file = run_dir / "report.json"
    data = json.loads(report_file.read_text()) if report_file.exists() and distributed.is_main() else {}
    return Report(run_dir=run_dir, stages=results, notes=notes, data=data)
