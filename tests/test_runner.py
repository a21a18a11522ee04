"""The stage runner: caching by content, --force/--from/--only, resume after a crash, manifest."""

import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.io import atomic_write, atomic_write_text, sha256_file
from pipeline.runner import Runner, Stage


class Calls:
    def __init__(self):
        self.log = []
        self.fail_in = None


def make_runner(calls: Calls) -> Runner:
    """Three real stages: make numbers from the seed, square them, sum them."""

    def numbers(ctx):
        calls.log.append("numbers")
        rng = np.random.default_rng(ctx.cfg.seed)
        atomic_write(ctx.path("a.npy"), lambda f: np.save(f, rng.normal(size=100)))
        return ["a.npy"]

    def square(ctx):
        calls.log.append("square")
        if calls.fail_in == "square":
            raise KeyboardInterrupt  # killed half-way
        a = np.load(ctx.path("a.npy"))
        atomic_write(ctx.path("b.npy"), lambda f: np.save(f, a**2))
        return ["b.npy"]

    def total(ctx):
        calls.log.append("total")
        b = np.load(ctx.path("b.npy"))
        atomic_write_text(ctx.path("total.txt"), f"{b.sum():.6f}")
        return ["total.txt"]

    return Runner([
        Stage("numbers", numbers, reads=(), config=("data",)),
        Stage("square", square, reads=("a.npy",), config=()),
        Stage("total", total, reads=("b.npy",), config=("bench",)),
    ])


def test_second_run_is_fully_cached_and_manifest_has_hashes(tmp_path):
    calls = Calls()
    runner, cfg = make_runner(calls), load_config()
    res, _ = runner.run(tmp_path, cfg)
    assert [r.status for r in res] == ["ran"] * 3
    res, _ = runner.run(tmp_path, cfg)
    assert [r.status for r in res] == ["cached"] * 3
    assert calls.log == ["numbers", "square", "total"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for rel in ("a.npy", "b.npy", "total.txt"):
        assert manifest["files"][rel]["sha256"] == sha256_file(tmp_path / rel)
    assert manifest["files"]["b.npy"]["stage"] == "square"
    assert (tmp_path / "config.yaml").exists()


def test_config_change_reruns_only_affected_stages(tmp_path):
    calls = Calls()
    runner = make_runner(calls)
    runner.run(tmp_path, load_config())
    calls.log.clear()
    runner.run(tmp_path, load_config(None, ["bench.runs=7"]))  # only 'total' reads the bench section
    assert calls.log == ["total"]
    calls.log.clear()
    runner.run(tmp_path, load_config(None, ["seed=9", "bench.runs=7"]))  # the seed changes every stage's data
    assert calls.log == ["numbers", "square", "total"]


def test_same_content_upstream_keeps_downstream_cached(tmp_path):
    calls = Calls()
    runner = make_runner(calls)
    cfg = load_config()
    runner.run(tmp_path, cfg)
    calls.log.clear()
    runner.run(tmp_path, cfg, start="numbers")  # rerun forced, but it writes identical bytes ...
    assert calls.log == ["numbers", "square", "total"]  # --from forces everything after it
    calls.log.clear()
    runner.run(tmp_path, cfg, only=["numbers"])
    runner.run(tmp_path, cfg)  # ... so the later stages' keys did not change
    assert calls.log == ["numbers"]


def test_interrupted_run_resumes_at_the_unfinished_stage(tmp_path):
    calls = Calls()
    runner, cfg = make_runner(calls), load_config()
    calls.fail_in = "square"
    with pytest.raises(KeyboardInterrupt):
        runner.run(tmp_path, cfg)
    assert not (tmp_path / "b.npy").exists()
    assert not list(tmp_path.glob(".*.tmp")), "no temp files are left behind"
    calls.fail_in = None
    calls.log.clear()
    res, _ = runner.run(tmp_path, cfg)
    assert [r.status for r in res] == ["cached", "ran", "ran"]
    assert calls.log == ["square", "total"]


def test_tampered_output_is_detected_and_rebuilt(tmp_path):
    calls = Calls()
    runner, cfg = make_runner(calls), load_config()
    runner.run(tmp_path, cfg)
    (tmp_path / "total.txt").write_text("garbage")
    calls.log.clear()
    runner.run(tmp_path, cfg)
    assert calls.log == ["total"]
    assert (tmp_path / "total.txt").read_text() != "garbage"


def test_force_and_unknown_stage_and_missing_inputs(tmp_path):
    calls = Calls()
    runner, cfg = make_runner(calls), load_config()
    runner.run(tmp_path, cfg)
    calls.log.clear()
    runner.run(tmp_path, cfg, force=True)
    assert calls.log == ["numbers", "square", "total"]
    with pytest.raises(UserError, match="unknown stage 'nope'"):
        runner.run(tmp_path, cfg, start="nope")
    with pytest.raises(UserError, match="needs .*b.npy"):
        runner.run(tmp_path / "empty", cfg, only=["total"])
