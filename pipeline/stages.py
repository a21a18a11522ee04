"""The stages of ``python -m pipeline run``, in order. Each reads named files of the run
directory and its slice of the config, and returns the files it wrote."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline
from models import Regressor, TwoHeadStudent, build_backbone, count_parameters, drop_teacher_head
from pipeline.config import Config
from pipeline.data import OUTPUT_MEANING, Splits, input_shape, make_dataset
from pipeline.errors import UserError
from pipeline.io import atomic_write, atomic_write_json
from pipeline.methods import build_method
from pipeline.metrics import max_abs_diff, regression_metrics
from pipeline.runner import Context, Runner, Stage
from pipeline.train import fit, predict, seed_everything

log = logging.getLogger(__name__)

TEACHER_LOSSES = {
    "mse": torch.nn.functional.mse_loss,
    "l1": torch.nn.functional.l1_loss,
    "huber": torch.nn.functional.huber_loss,
}


# --------------------------------------------------------------------------- model files


Shape = tuple[int, ...]


def _backbone(section, input_shape: Shape):
    return build_backbone(section.backbone, input_shape, section.hidden, section.activation, section.channels)


def build_teacher(cfg: Config, input_shape: Shape, out_features: int) -> Regressor:
    return Regressor(_backbone(cfg.teacher, input_shape), out_features)


def build_student(cfg: Config, input_shape: Shape, out_features: int) -> TwoHeadStudent:
    return TwoHeadStudent(_backbone(cfg.student, input_shape), out_features)


def build_deployed(cfg: Config, input_shape: Shape, out_features: int) -> Regressor:
    return drop_teacher_head(build_student(cfg, input_shape, out_features), cfg.student.keep_head)


def save_model(path: Path, model: torch.nn.Module, kind: str, input_shape: Shape, out_features: int) -> None:
    payload = {"kind": kind, "input_shape": list(input_shape), "out_features": out_features,
               "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_model(path: Path, cfg: Config) -> torch.nn.Module:
    """A model file written by ``save_model``; a missing, truncated or foreign file is a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        builders = {"teacher": build_teacher, "student": build_student, "deployed": build_deployed}
        model = builders[payload["kind"]](cfg, tuple(payload["input_shape"]), payload["out_features"])
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"model file {path} is damaged or does not match the config: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return model.eval()


def check_model_sizes(cfg: Config, out_features: int = 1) -> dict:
    """The student must be at most ``student.max_param_ratio`` of the teacher: checked before any work."""
    shape = input_shape(cfg.data)
    try:
        t = count_parameters(build_teacher(cfg, shape, out_features))
        s = count_parameters(build_student(cfg, shape, out_features))
        d = count_parameters(build_deployed(cfg, shape, out_features))
    except ValueError as exc:  # e.g. a cnn backbone on vector inputs
        raise UserError(f"model does not fit data '{cfg.data.name}' (input shape {shape}): {exc}") from None
    if s > cfg.student.max_param_ratio * t:
        raise UserError(
            f"student ({cfg.student.backbone}, hidden {cfg.student.hidden}) has {s} parameters, more than "
            f"student.max_param_ratio ({cfg.student.max_param_ratio}) x the teacher's {t}; "
            "shrink the student or grow the teacher"
        )
    return {"teacher_params": t, "student_params": s, "deployed_params": d}


def _dims(splits: Splits) -> tuple[Shape, int]:
    return tuple(splits.x["train"].shape[1:]), splits.y["train"].shape[1]


# --------------------------------------------------------------------------- stages


def stage_data(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = make_dataset(cfg.data, cfg.seed)
    splits.save(ctx.path("data.npz"))
    summary = {
        "dataset": cfg.data.name,
        "function": (f"y = {cfg.data.amplitude} * sin({cfg.data.frequency} * x + {cfg.data.phase})"
                     if cfg.data.name == "sinusoid" else OUTPUT_MEANING[cfg.data.name]),
        "input_shape": list(splits.x["train"].shape[1:]),
        "sizes": {s: int(v.shape[0]) for s, v in splits.x.items()},
        "outliers": {s: int(v.sum()) for s, v in splits.outlier.items()},
        "noisy_label_rmse_vs_clean": {
            s: regression_metrics(splits.y[s], splits.y_clean[s])["rmse"] for s in ("train", "val")
        },
        "x_mean": splits.x_mean, "x_std": splits.x_std,
    }
    atomic_write_json(ctx.path("data.json"), summary)
    return ["data.npz", "data.json"]


def train_teacher(cfg: Config, splits: Splits):
    """Train the teacher on the noisy labels; returns (model, history, predictions per split)."""
    d_in, d_out = _dims(splits)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg, d_in, d_out)
    loss = TEACHER_LOSSES[cfg.teacher.loss]
    hist = fit(
        teacher,
        lambda m, b: loss(m(b[0]), b[1]),
        (splits.x["train"], splits.y["train"]),
        (splits.x["val"], splits.y["val"]),
        cfg.teacher.train,
        seed=cfg.seed + 1,
        desc="teacher",
    )
    preds = {s: predict(teacher, splits.x[s]) for s in ("train", "val", "test")}
    return teacher, hist, preds


def train_student(cfg: Config, splits: Splits, yt: dict[str, np.ndarray], name: str):
    """Train one two-head student with method ``name``; returns (model, history, method).

    Every method starts from the same initial weights and sees the same batches."""
    d_in, d_out = _dims(splits)
    method = build_method(name, cfg.distill, splits.y["train"] - yt["train"])
    seed_everything(cfg.seed + 100)
    student = build_student(cfg, d_in, d_out)

    def loss_fn(m, b):
        label_out, teacher_out = m(b[0])
        return method.loss(label_out, teacher_out, b[1], b[2])

    hist = fit(
        student,
        loss_fn,
        (splits.x["train"], splits.y["train"], yt["train"]),
        (splits.x["val"], splits.y["val"], yt["val"]),
        cfg.distill.train,
        seed=cfg.seed + 2,
        desc=f"student[{name}]",
    )
    return student, hist, method


def stage_teacher(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    teacher, hist, preds = train_teacher(cfg, splits)
    d_in, d_out = _dims(splits)
    save_model(ctx.path("teacher.pt"), teacher, "teacher", d_in, d_out)
    atomic_write(ctx.path("teacher_preds.npz"), lambda f: np.savez(f, **preds))
    atomic_write_json(
        ctx.path("teacher.json"),
        {
            "params": count_parameters(teacher),
            "hidden": cfg.teacher.hidden,
            "loss": cfg.teacher.loss,
            "history": hist.to_dict(),
            "test": regression_metrics(preds["test"], splits.y_clean["test"]),
        },
    )
    return ["teacher.pt", "teacher_preds.npz", "teacher.json"]


def stage_distill(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    with np.load(ctx.path("teacher_preds.npz")) as z:
        yt = {s: z[s] for s in z.files}
    d_in, d_out = _dims(splits)
    methods = list(dict.fromkeys([cfg.distill.method, *cfg.distill.baselines]))
    results, written = {}, []
    for name in methods:
        student, hist, method = train_student(cfg, splits, yt, name)
        label_pred, teacher_pred = predict(student, splits.x["test"])
        rel = "student_mt.pt" if name == cfg.distill.method else f"baselines/{name}.pt"
        save_model(ctx.path(rel), student, "student", d_in, d_out)
        written.append(rel)
        results[name] = {
            **method.describe(),
            "deployed": name == cfg.distill.method,
            "history": hist.to_dict(),
            "test_label_head": regression_metrics(label_pred, splits.y_clean["test"]),
            "test_teacher_head": regression_metrics(teacher_pred, splits.y_clean["test"]),
            "file": rel,
        }
    sizes = check_model_sizes(cfg, d_out)
    atomic_write_json(ctx.path("distill.json"), {"methods": results, **sizes})
    return [*written, "distill.json"]


def stage_student(ctx: Context) -> list[str]:
    """Drop the teacher head: the deployed student has one output."""
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    two_head = load_model(ctx.path("student_mt.pt"), cfg)
    deployed = drop_teacher_head(two_head, cfg.student.keep_head)
    d_in, d_out = _dims(splits)
    x = splits.x["test"]
    head_index = 0 if cfg.student.keep_head == "label" else 1
    diff = max_abs_diff(predict(deployed, x), predict(two_head, x)[head_index])
    save_model(ctx.path("student.pt"), deployed, "deployed", d_in, d_out)
    atomic_write_json(
        ctx.path("student.json"),
        {
            "kept_head": cfg.student.keep_head,
            "params": count_parameters(deployed),
            "params_two_head": count_parameters(two_head),
            "head_drop_max_abs_diff": diff,
            "test": regression_metrics(predict(deployed, x), splits.y_clean["test"]),
        },
    )
    return ["student.pt", "student.json"]


def export_metadata(cfg: Config, splits: Splits, batch: int | None) -> dict:
    """The one metadata dict of an exported student (Ultralytics-style): embedded in every file."""
    return {
        "producer": "pocketkd",
        "pocketkd_version": pipeline.__version__,
        "config_hash": cfg.hash(),
        "task": f"regression on {cfg.data.name}",
        "distill_method": cfg.distill.method,
        "kept_head": cfg.student.keep_head,
        "input_shape": [batch or -1, *splits.x["train"].shape[1:]],
        "input_layout": "NCHW" if splits.x["train"].ndim == 4 else "NC",
        "input_normalization": {"mean": splits.x_mean.tolist(), "std": splits.x_std.tolist(),
                                "formula": "(x - mean) / std, per channel (images) or feature (vectors)"},
        "output_meaning": OUTPUT_MEANING[cfg.data.name],
        "outputs": splits.y["train"].shape[1],
        "batch": batch or "dynamic",
    }


def export_student(cfg: Config, run_dir: Path, out_dir: Path, formats: list[str], android: bool) -> dict:
    """Export the deployed student (and the teacher, ONNX only, for the bench): server files with a
    dynamic batch axis into ``out_dir``, the fixed-shape Android bundle into ``out_dir/android``."""
    from export import ExportJob, export_all
    from export.android import write_bundle

    splits = Splits.load(run_dir / "data.npz")
    shape, _ = _dims(splits)

    def job(model_file, stem, directory, batch):
        meta = export_metadata(cfg, splits, batch)
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items()}
        return ExportJob(model=load_model(run_dir / model_file, cfg), out_dir=directory, input_shape=shape,
                         x_eval=splits.x["test"], y_eval=splits.y_clean["test"], x_calib=splits.x["train"],
                         cfg=cfg.export, stem=stem, metadata={**flat, "model": stem}, batch=batch)

    result = {"parity_atol": cfg.export.parity_atol, "limits": cfg.export.limits.model_dump()}
    result["formats"] = export_all(job("student.pt", "student", out_dir, None), formats)
    result["formats"] += export_all(job("teacher.pt", "teacher", out_dir, None), ["onnx_fp32"])
    if android:
        a = cfg.export.android
        bundle_dir = out_dir / "android"
        rows = export_all(job("student.pt", "student", bundle_dir, a.batch), list(a.formats))
        write_bundle(bundle_dir, rows, export_metadata(cfg, splits, a.batch))
        result["android"] = rows
    return result


def stage_export(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    result = export_student(cfg, ctx.run_dir, ctx.run_dir, list(cfg.export.formats), cfg.export.android.enabled)
    atomic_write_json(ctx.path("export.json"), result)
    written = [r["file"] for r in result["formats"] if "file" in r]
    if "android" in result:
        bundle = ctx.run_dir / "android"
        written += [f"android/{r['file']}" for r in result["android"] if "file" in r]
        written += [f"android/{p.name}" for p in bundle.iterdir() if p.suffix in (".json", ".md", ".config")]
    if ctx.path("required_operators.config").exists():
        written.append("required_operators.config")
    return sorted(set(written)) + ["export.json"]


def runtime_floor_models(bench_dir: Path) -> list[dict]:
    """Trivial one-op models (ReLU of a 1x1 input) per runtime: their p50 is the runtime's overhead."""
    import onnx
    from onnx import TensorProto, helper

    from export.onnx_export import save_proto
    from export.tflite import onnx_to_tflite

    bench_dir.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "floor",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    onnx.checker.check_model(proto)
    floor = save_proto(proto, bench_dir / "floor.onnx")
    made = [{"model": "floor", "format": "onnx_fp32", "precision": "fp32", "file": "bench/floor.onnx"}]
    try:
        onnx_to_tflite(floor, bench_dir, "floor", ("fp32",))
        made.append({"model": "floor", "format": "tflite_fp32", "precision": "fp32", "file": "bench/floor_fp32.tflite"})
    except Exception as exc:  # the floor is context, not a result: say so and go on
        log.warning("no LiteRT floor model: %s", str(exc).splitlines()[-1])
    return made


def stage_bench(ctx: Context) -> list[str]:
    """Every exported file on every target: latency statistics, and accuracy from the target's own
    outputs; fp32 outputs on other targets must match the host's within ``bench.parity_atol``."""
    from device_bench.targets import parse_target

    from pipeline.errors import ParityError

    cfg = ctx.cfg
    b = cfg.bench
    splits = Splits.load(ctx.path("data.npz"))
    rows = json.loads(ctx.path("export.json").read_text())["formats"]
    files = [r for r in rows if r.get("status") in ("ok", "over_limit")  # every file that runs
             and (not b.formats or r["format"] in b.formats or r["model"] == "teacher")]
    floors = runtime_floor_models(ctx.path("bench"))
    written = [f["file"] for f in floors]
    targets = sorted(b.targets, key=lambda t: t != "host")  # host first: the others are compared with it
    host_out: dict[str, np.ndarray] = {}
    mismatches = []
    for spec in targets:
        target = parse_target(spec)
        results = []
        for r in tqdm(files + floors, desc=f"bench[{spec}]", unit="model", leave=False, disable=None):
            x = splits.x["test"] if r["model"] != "floor" else np.zeros((8, 1), np.float32)
            partial = target.emulated and r["model"] == "teacher"  # accuracy of the teacher is not the claim
            if partial:
                x = x[: b.emulated_teacher_rows]
            res = target.run(ctx.path(r["file"]), x, threads=b.threads, warmup=b.warmup, runs=b.runs,
                             batch=b.batch, max_seconds=b.max_seconds, timeout=max(600.0, 10 * b.max_seconds))
            out = np.asarray(res.pop("outputs"), dtype=np.float32)
            res.update(model=r["model"], format=r["format"], precision=r["precision"], file=r["file"])
            if r["model"] != "floor":
                if not partial:
                    res.update(regression_metrics(out, splits.y_clean["test"]))
                else:
                    res["eval_rows"] = len(x)
                if spec == "host":
                    host_out[r["file"]] = out
                elif r["file"] in host_out:
                    ref = host_out[r["file"]][: len(out)]
                    res["max_abs_diff_vs_host"] = max_abs_diff(out, ref)
                    # float32 carries ~7 digits: for outputs far from 1 (e.g. degrees) the bound scales
                    res["parity_bound"] = b.parity_atol * max(1.0, float(np.abs(ref).max()))
                    if r["precision"] == "fp32" and res["max_abs_diff_vs_host"] > res["parity_bound"]:
                        mismatches.append(f"{spec} {r['file']}: {res['max_abs_diff_vs_host']:.3g} "
                                          f"> {res['parity_bound']:.3g}")
            results.append(res)
            lat = res["latency_ms"]
            log.info("bench %-12s %-30s p50 %8.4f ms  p99 %8.4f ms%s", target.label, r["file"], lat["p50"],
                     lat["p99"], f"  rmse {res['rmse']:.4g}" if "rmse" in res else "")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.label.replace("://", "_"))
        rel = f"bench/{safe}.json"
        atomic_write_json(ctx.path(rel), {"target": target.label, "emulated": target.emulated, "results": results})
        written.append(rel)
    if mismatches:
        raise ParityError(f"fp32 outputs differ from the host's by more than bench.parity_atol={b.parity_atol:g} "
                          "x max(1, |output|): "
                          + "; ".join(mismatches))
    return written


def bench_environment(cfg: Config) -> str:
    from device_bench.targets import parse_target

    return "|".join(parse_target(spec).fingerprint() for spec in cfg.bench.targets)


def resolve_targets(cfg: Config) -> tuple[Config, list[str]]:
    """Drop targets this machine cannot run when ``bench.skip_unavailable``; returns notes for the user."""
    from device_bench.qemu import qemu_available

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


def stage_report(ctx: Context) -> list[str]:
    from pipeline.report import write_report

    return write_report(ctx.run_dir, ctx.cfg)


STAGES = [
    Stage("data", stage_data, reads=(), config=("data",), help="make the data set and inject label noise"),
    Stage("teacher", stage_teacher, reads=("data.npz",), config=("teacher",), help="train the large teacher"),
    Stage("distill", stage_distill, reads=("data.npz", "teacher_preds.npz"), config=("student", "distill", "teacher"),
          help="train the two-head student (and the baselines)"),
    Stage("student", stage_student, reads=("student_mt.pt", "data.npz"), config=("student", "distill"),
          help="drop the teacher head: a single-output student"),
    Stage("export", stage_export, reads=("student.pt", "teacher.pt", "data.npz"), config=("export", "student"),
          help="ONNX, int8 ONNX, TFLite; every file checked against PyTorch"),
    Stage("bench", stage_bench, reads=("export.json", "data.npz"), config=("bench",), environment=bench_environment,
          help="latency and accuracy of every exported file on each target"),
    Stage("report", stage_report, reads=("data.npz", "data.json", "teacher.json", "teacher_preds.npz",
                                         "distill.json", "student.json", "student.pt", "export.json",
                                         "bench/*.json"), config=("distill", "teacher"),
          help="report.json, report.md, report.html and plots/"),
]


def default_runner() -> Runner:
    return Runner(STAGES)
