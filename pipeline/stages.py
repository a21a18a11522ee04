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
from models import TwoHeadStudent, build_backbone, count_parameters, drop_teacher_head
from models.mlp import Regressor
from pipeline.config import Config
from pipeline.data import Splits, make_dataset
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


def build_teacher(cfg: Config, in_features: int, out_features: int) -> Regressor:
    return Regressor(build_backbone("mlp", in_features, cfg.teacher.hidden, cfg.teacher.activation), out_features)


def build_student(cfg: Config, in_features: int, out_features: int) -> TwoHeadStudent:
    return TwoHeadStudent(build_backbone("mlp", in_features, cfg.student.hidden, cfg.student.activation), out_features)


def build_deployed(cfg: Config, in_features: int, out_features: int) -> Regressor:
    return drop_teacher_head(build_student(cfg, in_features, out_features), cfg.student.keep_head)


def save_model(path: Path, model: torch.nn.Module, kind: str, in_features: int, out_features: int) -> None:
    payload = {"kind": kind, "in_features": in_features, "out_features": out_features, "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_model(path: Path, cfg: Config) -> torch.nn.Module:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read model file {path}: {exc}") from None
    builders = {"teacher": build_teacher, "student": build_student, "deployed": build_deployed}
    model = builders[payload["kind"]](cfg, payload["in_features"], payload["out_features"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def check_model_sizes(cfg: Config, in_features: int = 1, out_features: int = 1) -> dict:
    """The student must be at most ``student.max_param_ratio`` of the teacher: checked before any work."""
    t = count_parameters(build_teacher(cfg, in_features, out_features))
    s = count_parameters(build_student(cfg, in_features, out_features))
    d = count_parameters(build_deployed(cfg, in_features, out_features))
    if s > cfg.student.max_param_ratio * t:
        raise UserError(
            f"student.hidden {cfg.student.hidden} gives {s} parameters, more than student.max_param_ratio "
            f"({cfg.student.max_param_ratio}) x the teacher's {t}; shrink the student or grow the teacher"
        )
    return {"teacher_params": t, "student_params": s, "deployed_params": d}


def _dims(splits: Splits) -> tuple[int, int]:
    return splits.x["train"].shape[1], splits.y["train"].shape[1]


# --------------------------------------------------------------------------- stages


def stage_data(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = make_dataset(cfg.data, cfg.seed)
    splits.save(ctx.path("data.npz"))
    summary = {
        "dataset": cfg.data.name,
        "function": f"y = {cfg.data.amplitude} * sin({cfg.data.frequency} * x + {cfg.data.phase})",
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
    sizes = check_model_sizes(cfg, d_in, d_out)
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


def stage_export(ctx: Context) -> list[str]:
    from export import ExportJob, export_all

    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    d_in, _ = _dims(splits)
    metadata = {
        "producer": "pocketkd",
        "pocketkd_version": pipeline.__version__,
        "config_hash": cfg.hash(),
        "input_normalization_mean": ",".join(f"{v:.9g}" for v in splits.x_mean),
        "input_normalization_std": ",".join(f"{v:.9g}" for v in splits.x_std),
        "kept_head": cfg.student.keep_head,
        "output_meaning": "regression target in label units",
    }
    names = ["onnx_fp32", "onnx_int8"] + (["tflite_fp32", "tflite_fp16"] if cfg.export.tflite else [])
    rows, written = [], []
    for stem, model_file, fmts in [
        ("student", "student.pt", names),
        ("teacher", "teacher.pt", ["onnx_fp32"]),  # the teacher is benchmarked in the same runtime
    ]:
        job = ExportJob(
            model=load_model(ctx.path(model_file), cfg),
            out_dir=ctx.run_dir,
            in_features=d_in,
            x_eval=splits.x["test"],
            y_eval=splits.y_clean["test"],
            x_calib=splits.x["train"],
            cfg=cfg.export,
            stem=stem,
            metadata={**metadata, "model": stem},
        )
        job_rows = export_all(job, fmts)
        rows += job_rows
        written += [r["file"] for r in job_rows if "file" in r]
    atomic_write_json(ctx.path("export.json"), {"formats": rows, "parity_atol": cfg.export.parity_atol})
    return [*written, "export.json"]


def stage_bench(ctx: Context) -> list[str]:
    from device_bench.targets import parse_target

    cfg = ctx.cfg
    b = cfg.bench
    splits = Splits.load(ctx.path("data.npz"))
    rows = json.loads(ctx.path("export.json").read_text())["formats"]
    files = [r for r in rows if r.get("status") == "ok"]
    written = []
    for spec in b.targets:
        target = parse_target(spec)
        results = []
        for r in tqdm(files, desc=f"bench[{spec}]", unit="model", leave=False, disable=None):
            res = target.run(ctx.path(r["file"]), splits.x["test"], threads=b.threads, warmup=b.warmup,
                             runs=b.runs, batch=b.batch)
            out = np.asarray(res.pop("outputs"), dtype=np.float32)
            res.update(model=r["model"], format=r["format"], precision=r["precision"], file=r["file"],
                       **regression_metrics(out, splits.y_clean["test"]))
            results.append(res)
            lat = res["latency_ms"]
            log.info("bench %-8s %-22s p50 %.4f ms  p99 %.4f ms  rmse %.4f", spec, r["file"], lat["p50"],
                     lat["p99"], res["rmse"])
        rel = f"bench/{target.scheme}.json"
        atomic_write_json(ctx.path(rel), {"target": spec, "emulated": target.emulated, "results": results})
        written.append(rel)
    return written


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
    Stage("bench", stage_bench, reads=("export.json", "data.npz"), config=("bench",),
          help="latency and accuracy of every exported file on each target"),
    Stage("report", stage_report, reads=("data.npz", "data.json", "teacher.json", "teacher_preds.npz",
                                         "distill.json", "student.json", "student.pt", "export.json",
                                         "bench/*.json"), config=("distill", "teacher"),
          help="report.json, report.md, report.html and plots/"),
]


def default_runner() -> Runner:
    return Runner(STAGES)
