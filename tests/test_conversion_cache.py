"""Issue 16: conversions done once. The conversion cache (content keys, verified reads, atomic
entries, races), the converter child, and the export stage run twice with only export.limits changed."""

import json
import os
import threading
import time

import numpy as np
import pytest

from export import conversion_cache as cc
from export import converter
from export.conversion_cache import ConversionCache
from export.tflite import onnx_to_tflite, tensorflow_load_check
from pipeline.config import load_config
from pipeline.config.slice import ConfigSlice
from pipeline.stages import STAGES
from pipeline.stages.export import export_student
from tests.conftest import run_cli, tiny_onnx_model


def _key(name="x"):
    return cc.make_key("test", {"input": cc.sha256_bytes(name.encode())}, {"option": 1}, {"tool": "1.0"}, "code")


def _entry_file(cache, key, name="out.bin"):
    return cache.dir / key / name


def test_a_stored_entry_comes_back_byte_for_byte(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    src = tmp_path / "made.bin"
    src.write_bytes(b"converted bytes")
    key, parts = _key()
    assert cache.fetch(key, {"out.bin": tmp_path / "a.bin"}) is None  # a miss: nothing there
    cache.store(key, parts, {"out.bin": src}, result={"ok": True})
    assert cache.fetch(key, {"out.bin": tmp_path / "b.bin"}) == {"ok": True}
    assert (tmp_path / "b.bin").read_bytes() == b"converted bytes"
    assert cache.info()["entries"] == 1 and cache.info()["kinds"] == {"test": 1}
    assert not [p for p in cache.dir.iterdir() if p.name.startswith(".")]  # no temp directory left


def test_the_key_changes_with_every_part():
    base = cc.make_key("k", {"a": "1"}, {"o": 1}, {"t": "1"}, "c")[0]
    assert len({base, cc.make_key("j", {"a": "1"}, {"o": 1}, {"t": "1"}, "c")[0],
                cc.make_key("k", {"a": "2"}, {"o": 1}, {"t": "1"}, "c")[0],
                cc.make_key("k", {"a": "1"}, {"o": 2}, {"t": "1"}, "c")[0],
                cc.make_key("k", {"a": "1"}, {"o": 1}, {"t": "2"}, "c")[0],
                cc.make_key("k", {"a": "1"}, {"o": 1}, {"t": "1"}, "d")[0]}) == 6
    assert base == cc.make_key("k", {"a": "1"}, {"o": 1}, {"t": "1"}, "c")[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "entry_json"])
def test_a_damaged_entry_is_detected_discarded_and_never_trusted(tmp_path, damage):
    cache = ConversionCache(tmp_path / "cache")
    src = tmp_path / "made.bin"
    src.write_bytes(b"0123456789" * 100)
    key, parts = _key()
    cache.store(key, parts, {"out.bin": src})
    stored = _entry_file(cache, key)
    if damage == "flip":
        data = bytearray(stored.read_bytes())
        data[10] ^= 0xFF
        stored.write_bytes(bytes(data))
    elif damage == "truncate":
        stored.write_bytes(stored.read_bytes()[:50])
    elif damage == "delete":
        stored.unlink()
    else:
        (cache.dir / key / cc.ENTRY).write_text("{not json")
    before = cc.STATS["corrupt"]
    assert cache.fetch(key, {"out.bin": tmp_path / "copy.bin"}) is None
    assert cc.STATS["corrupt"] == before + 1
    assert not (cache.dir / key).exists()  # discarded: the next store writes a good one
    cache.store(key, parts, {"out.bin": src})
    assert cache.fetch(key, {"out.bin": tmp_path / "copy.bin"}) == {}
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()


def test_the_same_key_written_at_once_by_many_writers_stays_whole(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    key, parts = _key()
    sources = []
    for i in range(8):  # the same conversion: the same bytes
        sources.append(tmp_path / f"src{i}.bin")
        sources[-1].write_bytes(b"same output" * 1000)
    barrier = threading.Barrier(len(sources))

    def write(src):
        barrier.wait()
        ConversionCache(tmp_path / "cache").store(key, parts, {"out.bin": src})

    threads = [threading.Thread(target=write, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.fetch(key, {"out.bin": tmp_path / "got.bin"}) == {}
    assert (tmp_path / "got.bin").read_bytes() == b"same output" * 1000
    assert [p.name for p in cache.dir.iterdir()] == [key]  # one entry, no temp or trash left


def test_a_damaged_entry_in_the_way_of_a_writer_is_replaced(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    key, parts = _key()
    (cache.dir / key).mkdir(parents=True)
    (cache.dir / key / "out.bin").write_bytes(b"half")  # no entry.json: an interrupted or foreign write
    src = tmp_path / "src.bin"
    src.write_bytes(b"whole")
    cache.store(key, parts, {"out.bin": src})
    assert cache.fetch(key, {"out.bin": tmp_path / "got.bin"}) == {}
    assert (tmp_path / "got.bin").read_bytes() == b"whole"


def test_cache_location_and_off_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", str(tmp_path / "c"))
    assert cc.root() == tmp_path / "c"
    monkeypatch.delenv("POCKETKD_CONVERSION_CACHE")
    monkeypatch.setenv("POCKETKD_CACHE", str(tmp_path / "base"))
    assert cc.root() == tmp_path / "base" / "conversions"
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", "off")
    cache = ConversionCache()
    assert not cache.enabled and cache.fetch("k", {}) is None
    cache.store("k", {}, {})  # a no-op, not an error


def test_cache_command_shows_and_clears(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 2000)
    for name in ("a", "b"):
        key, parts = _key(name)
        cache.store(key, parts, {"out.bin": src})
    env = {"POCKETKD_CONVERSION_CACHE": str(cache.dir)}
    proc = run_cli("cache", "info", env=env)
    assert proc.returncode == 0, proc.stderr
    assert str(cache.dir) in proc.stdout and "entries: 2 (test 2)" in proc.stdout
    proc = run_cli("cache", "clear", env=env)
    assert proc.returncode == 0 and "removed 2 entries" in proc.stdout
    assert cache.info()["entries"] == 0


def _tiny_onnx(tmp_path):
    path, x, _ = tiny_onnx_model(tmp_path)
    return path, x


def test_a_damaged_conversion_is_made_again_by_the_same_child(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", str(tmp_path / "cache"))
    src, x = _tiny_onnx(tmp_path)
    starts = converter.STARTS
    with converter.session():
        first = onnx_to_tflite(src, tmp_path / "a", "tiny", ("fp32", "int8", "int8_io"), x)
        reference = {v: p.read_bytes() for v, p in first.items()}
        assert converter.STARTS == starts + 1
        entry = next(d for d in (tmp_path / "cache").iterdir()
                     if json.loads((d / cc.ENTRY).read_text())["kind"] == "onnx2tf")
        stored = entry / "int8.tflite"
        stored.write_bytes(stored.read_bytes()[:-16] + b"\0" * 16)  # same size, other bytes
        corrupt, made = cc.STATS["corrupt"], cc.STATS["made"]
        again = onnx_to_tflite(src, tmp_path / "b", "tiny", ("fp32", "int8", "int8_io"), x)
        assert cc.STATS["corrupt"] == corrupt + 1 and cc.STATS["made"] == made + 1  # detected, re-made
        assert {v: p.read_bytes() for v, p in again.items()} == reference  # converting is deterministic
        assert converter.STARTS == starts + 1  # the same child
        with pytest.raises(converter.ConverterError):  # a failed request is an answer ...
            converter.current().request("onnx2tf", src=str(tmp_path / "missing.onnx"), out_dir=str(tmp_path / "c"),
                                        variants=["fp32"], calib_path=None)
        checks = tensorflow_load_check(list(again.values()))  # ... and the child goes on serving
        assert all(c["ok"] for c in checks.values()) and converter.STARTS == starts + 1
    hits = cc.STATS["hits"]
    onnx_to_tflite(src, tmp_path / "d", "tiny", ("fp32", "int8", "int8_io"), x)  # no session: a cache hit
    assert cc.STATS["hits"] == hits + 1 and converter.STARTS == starts + 1
    assert np.array_equal(np.frombuffer((tmp_path / "d" / "tiny_int8.tflite").read_bytes(), np.uint8),
                          np.frombuffer(reference["int8"], np.uint8))


def test_a_conversion_does_not_depend_on_an_onnxsim_command_on_path(tmp_path, monkeypatch):
    """onnx2tf runs the `onnxsim` command in subprocesses when it finds one on PATH (~12 s a conversion,
    and otherwise skips it silently); pocketkd hands it simplified graphs and turns that pass off."""
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", "off")  # really convert
    bindir, called = tmp_path / "bin", tmp_path / "onnxsim-was-run"
    bindir.mkdir()
    (bindir / "onnxsim").write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    (bindir / "onnxsim").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    src, x = _tiny_onnx(tmp_path)
    made = onnx_to_tflite(src, tmp_path / "out", "tiny", ("fp32",), x)
    assert made["fp32"].stat().st_size > 0
    assert not called.exists()


def test_an_error_in_the_session_ends_the_child_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", "off")  # really convert
    src, _ = _tiny_onnx(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with converter.session() as conv:
            future = conv.submit(onnx_to_tflite, src, tmp_path / "out", "tiny", ("fp32",))
            time.sleep(1)  # the child is importing TensorFlow, the background thread waits on it
            proc = conv._proc
            raise KeyboardInterrupt
    assert time.monotonic() - t0 < 15  # not the minute an import and a conversion take on 2 loaded cores
    assert proc.poll() is not None  # killed, not left behind
    with pytest.raises(RuntimeError, match="converter child failed"):
        future.result()


# ---------------------------------------------------------------------------- the export stage, twice

LIMIT_FIELDS = {"rmse_ratio_limit", "accuracy_drop_limit", "status", "error"}


def _comparable(row, section):
    """A row without what a limits-only change may change: the verdict against the limit, the export
    time, and the sha256 of files that embed the config hash (every ONNX / ORT file, and the bundle's
    TFLite files, whose metadata is appended) or that ORT writes in varying order (.ort)."""
    drop = LIMIT_FIELDS | {"export_seconds"}
    if section == "android" or not row.get("file", "").endswith(".tflite"):
        drop.add("sha256")
    return {k: v for k, v in row.items() if k not in drop}


@pytest.mark.slow
def test_export_twice_second_time_only_limits_changed_converts_nothing(e2e_run, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETKD_CONVERSION_CACHE", str(tmp_path / "cache"))  # empty: the first export converts
    run_dir, _ = e2e_run
    declared = next(s for s in STAGES if s.name == "export").config
    results = []
    for i, limit in enumerate((1.05, 1.001)):
        cfg = load_config(run_dir / "config.yaml", [f"export.limits.int8_rmse_ratio={limit}"])
        cfg_slice = ConfigSlice(cfg, declared)
        results.append(export_student(cfg_slice, run_dir, tmp_path / f"out{i}", list(cfg.export.formats), True))
    first, second = results
    assert first["conversions"]["made"] > 0 and first["conversions"]["converter_children"] == 1
    assert second["conversions"]["cache_hits"] > 0
    assert {k: v for k, v in second["conversions"].items() if k != "cache_hits"} == {
        "made": 0, "cache_damaged": 0, "converter_children": 0}  # no conversion, no TensorFlow
    for section in ("formats", "android"):
        assert [(r["model"], r["format"]) for r in first[section]] == [(r["model"], r["format"]) for r in second[section]]
        for a, b in zip(first[section], second[section]):
            assert _comparable(a, section) == _comparable(b, section), (a["model"], a["format"])
            if a["precision"] == "int8" and "rmse_ratio_limit" in b:
                assert b["rmse_ratio_limit"] == 1.001
                assert b["status"] == ("ok" if b["rmse_ratio_vs_torch"] <= 1.001 else "over_limit")
    # the same bytes where no config hash is embedded: the dynamic-batch TFLite files
    tflite = [r for r in first["formats"] if r.get("file", "").endswith(".tflite")]
    assert tflite and all((tmp_path / "out0" / r["file"]).read_bytes() == (tmp_path / "out1" / r["file"]).read_bytes()
                          for r in tflite)
    assert first["limits"]["int8_rmse_ratio"] == 1.05 and second["limits"]["int8_rmse_ratio"] == 1.001
