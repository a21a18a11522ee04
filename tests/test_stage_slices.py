"""A stage sees only its declared slice of the config: what it embeds in its files (the config hash)
and its cache key agree, and reading an undeclared section is an error, not a silent stale cache."""

from __future__ import annotations

import onnx
import pytest

from pipeline.config import Config, load_config
from pipeline.config.schema import ALL_CONFIG
from pipeline.config.slice import ConfigSlice, UndeclaredConfigError
from pipeline.stages import STAGES

SLICES = {s.name: s.config for s in STAGES}


def test_a_slice_reads_declared_sections_and_refuses_the_rest():
    cfg = Config()
    view = ConfigSlice(cfg, ("export", "distill.method"))
    assert view.export.opset == cfg.export.opset and view.seed == cfg.seed
    assert view.distill.method == cfg.distill.method
    with pytest.raises(UndeclaredConfigError, match="'bench'"):
        _ = view.bench
    with pytest.raises(UndeclaredConfigError, match="'distill.kd'"):
        _ = view.distill.kd
    with pytest.raises(UndeclaredConfigError):
        view.to_dict()
    assert ConfigSlice(cfg, ALL_CONFIG).to_dict() == cfg.to_dict()
    assert ConfigSlice(cfg, ALL_CONFIG).hash() == cfg.hash()


def test_the_slice_hash_follows_exactly_the_declared_sections():
    base = Config()
    bench_only = Config.model_validate({"bench": {"runs": 7}})
    limits = Config.model_validate({"export": {"limits": {"int8_rmse_ratio": 1.2}}})

    def h(cfg, stage):
        return ConfigSlice(cfg, SLICES[stage]).hash()

    assert h(bench_only, "export") == h(base, "export") != base.hash()  # bench.runs does not touch export
    assert h(bench_only, "bench") != h(base, "bench")
    assert h(limits, "export") != h(base, "export")
    assert h(limits, "distill") == h(base, "distill")


def test_exported_files_embed_the_export_stage_slice_hash(e2e_run):
    out, _ = e2e_run
    cfg = load_config(out / "config.yaml")
    meta = {p.key: p.value for p in onnx.load(str(out / "student.onnx")).metadata_props}
    assert meta["config_hash"] == ConfigSlice(cfg, SLICES["export"]).hash()
    # the same run with another bench.runs: the export's slice, and so the embedded hash, do not change
    other = load_config(out / "config.yaml", ["bench.runs=3"])
    assert ConfigSlice(other, SLICES["export"]).hash() == meta["config_hash"]
