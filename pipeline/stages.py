"""The stages of ``python -m pipeline run``, in order. Each reads named files of the run
directory and its slice of the config, and returns the files it wrote."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import pipeline
from models import Regressor, TwoHeadStudent, build_backbone, count_parameters, drop_teacher_head
from models.deploy import mobile_friendly
from pipeline import distributed, qat
from pipeline.config import Config
from pipeline.data import OUTPUT_MEANING, Splits, input_shape, make_dataset, n_outputs
from pipeline.errors import ParityError, UserError
from pipeline.io import atomic_write, atomic_write_json, sha256_file
from pipeline.methods import METHODS, TrainingSet, build_method
from pipeline.metrics import max_abs_diff, regression_metrics, require_finite, task_metrics
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
    return build_backbone(section.backbone, input_shape, section.hidden, section.activation, section.channels,
                          width_mult=section.width_mult)


def build_teacher(cfg: Config, input_shape: Shape, out_features: int) -> Regressor:
    return Regressor(_backbone(cfg.teacher, input_shape), out_features)


def build_student(cfg: Config, input_shape: Shape, out_features: int, label_features: int | None = None
                  ) -> TwoHeadStudent:
    return TwoHeadStudent(_backbone(cfg.student, input_shape), out_features, label_features)


def build_deployed(cfg: Config, input_shape: Shape, out_features: int, label_features: int | None = None
                   ) -> Regressor:
    return drop_teacher_head(build_student(cfg, input_shape, out_features, label_features), cfg.student.keep_head)


def save_model(path: Path, model: torch.nn.Module, kind: str, input_shape: Shape, out_features: int,
               label_features: int | None = None) -> None:
    payload = {"kind": kind, "input_shape": list(input_shape), "out_features": out_features,
               "label_features": label_features, "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_model(path: Path, cfg: Config) -> torch.nn.Module:
    """A model file written by ``save_model``; a missing, truncated or foreign file is a clear error."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        kind, shape, out = payload["kind"], tuple(payload["input_shape"]), payload["out_features"]
        if kind == "teacher":
            model = build_teacher(cfg, shape, out)
        elif kind == "student":
            model = build_student(cfg, shape, out, payload.get("label_features"))
        else:  # deployed: one head, out_features wide
            model = build_deployed(cfg, shape, out)
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise UserError(f"model file {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"model file {path} is damaged or does not match the config: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    return model.eval()


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


def _dims(splits: Splits) -> tuple[Shape, int]:
    return tuple(splits.x["train"].shape[1:]), splits.out_features


def _label_scale(splits: Splits) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of regression labels learned in standardised units, or None (identity)."""
    if splits.task != "regression" or splits.y_mean is None:
        return None
    return splits.y_mean.astype(np.float32), splits.y_std.astype(np.float32)


def _scaled(arr: np.ndarray, scale) -> np.ndarray:
    return arr if scale is None else ((arr - scale[0]) / scale[1]).astype(np.float32)


@torch.no_grad()
def _fold_scale(layer: torch.nn.Linear, scale) -> None:
    """Make an output layer trained on (y - mean) / std predict y: W <- std * W, b <- std * b + mean."""
    if scale is None:
        return
    mean, std = (torch.as_tensor(v, dtype=layer.weight.dtype) for v in scale)
    layer.weight.mul_(std.reshape(-1, 1))
    layer.bias.mul_(std).add_(mean)


def deployed_abstains(cfg: Config) -> bool:
    """True when the deployed student has an extra 'abstain' output (the gambler methods)."""
    return METHODS[cfg.distill.method].abstains()


def metrics_of(cfg: Config, splits: Splits, pred: np.ndarray, abstain: bool | None = None) -> dict:
    """The task's metrics of predictions on the clean test set."""
    return task_metrics(pred, splits.y_clean["test"], splits.task,
                        deployed_abstains(cfg) if abstain is None else abstain, splits.angles, splits.output_names)


# --------------------------------------------------------------------------- stages


def stage_data(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = make_dataset(cfg.data, cfg.seed)
    check_splits_finite(splits)
    splits.save(ctx.path("data.npz"))
    summary = {
        "dataset": cfg.data.name,
        "function": (f"y = {cfg.data.amplitude} * sin({cfg.data.frequency} * x + {cfg.data.phase})"
                     if cfg.data.name == "sinusoid" else splits.description or OUTPUT_MEANING[cfg.data.name]),
        "output_names": splits.output_names,
        "input_shape": list(splits.x["train"].shape[1:]),
        "sizes": {s: int(v.shape[0]) for s, v in splits.x.items()},
        "task": splits.task,
        "outliers": {s: int(v.sum()) for s, v in splits.outlier.items()},
        **({"noisy_label_rmse_vs_clean": {
            s: regression_metrics(splits.y[s], splits.y_clean[s])["rmse"] for s in ("train", "val")}}
           if splits.task == "regression" else
           {"n_classes": splits.n_classes, "label_noise": cfg.data.noise.label_noise,
            "label_noise_type": cfg.data.noise.label_noise_type,
            "flipped_share": {s: float(splits.outlier[s].mean()) for s in ("train", "val")}}),
        "x_mean": splits.x_mean, "x_std": splits.x_std,
    }
    atomic_write_json(ctx.path("data.json"), summary)
    return ["data.npz", "data.json"]


def check_splits_finite(splits: Splits) -> None:
    """Inputs (raw and standardised) and labels of every split are finite: a value that overflows
    float32 (|x| > 3.4e38) or a standardisation that does (huge but finite values) stops here."""
    for s in ("train", "val", "test"):
        require_finite(splits.x_raw[s], f"data: raw inputs of the {s} split", "values must fit float32 (|x| < 3.4e38)")
        require_finite(splits.x[s], f"data: standardised inputs of the {s} split",
                       "the inputs are too large to standardise in float32; rescale them")
        for name, arr in (("labels", splits.y[s]), ("clean labels", splits.y_clean[s])):
            require_finite(arr, f"data: {name} of the {s} split", "values must fit float32 (|y| < 3.4e38)")


def train_teacher(cfg: Config, splits: Splits):
    """Train the teacher on the noisy labels; returns (model, history, predictions per split, SRL record).

    Self-regulated learning (Mishra & Sundaram) is tracked on every teacher: a sample *takes part* when
    the teacher gets it wrong or right with p_y < tau (classification), or its |error| exceeds the
    tolerance (regression). With ``teacher.srl.enabled`` only those samples are back-propagated; either
    way each sample's participation count (its significance) is recorded."""
    from pipeline.classification import SignificanceCounter, self_regulated_mask

    d_in, d_out = _dims(splits)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg, d_in, d_out)
    srl = cfg.teacher.srl
    n = len(splits.y["train"])
    counter = SignificanceCounter(n)
    shares: list[float] = []
    epoch_count = [0.0]
    classify = splits.task == "classification"
    reg_loss = TEACHER_LOSSES[cfg.teacher.loss]

    def loss_fn(m, b):
        x, y, idx = b
        out = m(x)
        if classify:
            per = torch.nn.functional.cross_entropy(out, y, reduction="none")
            take = self_regulated_mask(out.detach(), y, srl.tau)
        else:
            per = reg_loss(out, y, reduction="none").reshape(len(y), -1).mean(dim=1)
            take = (out.detach() - y).reshape(len(y), -1).norm(dim=1) > srl.tolerance
        if not torch.is_grad_enabled() or idx[0] < 0:  # validation: the plain loss, nothing counted
            return per.mean()
        counter.update(idx, take)
        epoch_count[0] += float(take.sum())
        if srl.enabled:
            return (per * take).sum() / take.sum().clamp_min(1)
        return per.mean()

    def epoch_end(epoch):
        # under torchrun each rank counted its share of the batches: sum over ranks
        shares.append(distributed.all_reduce_sum(epoch_count[0]) / n)
        epoch_count[0] = 0.0

    scale = _label_scale(splits)
    hist = fit(
        teacher,
        loss_fn,
        (splits.x["train"], _scaled(splits.y["train"], scale), np.arange(n)),
        (splits.x["val"], _scaled(splits.y["val"], scale), np.full(len(splits.y["val"]), -1)),
        cfg.teacher.train,
        seed=cfg.seed + 1,
        desc="teacher" + (" (SRL)" if srl.enabled else ""),
        on_epoch_end=epoch_end,
    )
    _fold_scale(teacher.head, scale)
    counter.counts = distributed.all_reduce_sum(counter.counts)  # each rank counted its own rows
    preds = {s: predict(teacher, splits.x[s]) for s in ("train", "val", "test")}
    for s, v in preds.items():
        require_finite(v, f"teacher: outputs on the {s} split", DIVERGED + " (teacher.train.lr)")
    record = {"significance": counter.normalised().numpy(), "counts": counter.counts.numpy(),
              "share_per_epoch": shares}
    return teacher, hist, preds, record


def train_student(cfg: Config, splits: Splits, yt: dict[str, np.ndarray], name: str,
                  significance: np.ndarray | None = None):
    """Train one two-head student with method ``name``; returns (model, history, method).

    Every method starts from the same initial weights and sees the same batches."""
    d_in, d_out = _dims(splits)
    scale = _label_scale(splits)
    y = {s: _scaled(splits.y[s], scale) for s in ("train", "val")}
    yt = {s: _scaled(yt[s], scale) for s in ("train", "val")}
    residuals = y["train"] - yt["train"] if splits.task == "regression" else None
    train_set = TrainingSet(y=y["train"], teacher=yt["train"], task=splits.task, significance=significance)
    method = build_method(name, cfg.distill, residuals, train_set)
    seed_everything(cfg.seed + 100)
    student = build_student(cfg, d_in, d_out, d_out + method.n_extra(d_out))

    def loss_fn(m, b):
        label_out, teacher_out = m(b[0])
        idx = b[3] if b[3][0] >= 0 else None  # validation rows carry -1: not training samples
        return method.loss(label_out, teacher_out, b[1], b[2], idx)

    n, n_val = len(splits.y["train"]), len(splits.y["val"])
    hist = fit(
        student,
        loss_fn,
        (splits.x["train"], y["train"], yt["train"], np.arange(n)),
        (splits.x["val"], y["val"], yt["val"], np.full(n_val, -1)),
        cfg.distill.train,
        seed=cfg.seed + 2,
        desc=f"student[{name}]",
        on_epoch_end=lambda epoch: method.epoch_end(),
    )
    _fold_scale(student.label_head, scale)
    _fold_scale(student.teacher_head, scale)
    return student, hist, method


def onnx_param_count(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


DIVERGED = "training diverged or the inputs are extreme; lower the learning rate or check the data"


def _given_onnx_session(path: Path):
    """An onnxruntime session of teacher.onnx after a check of its name and bytes; one UserError line."""
    import onnxruntime as ort

    from device_bench.runner import ModelFileError, check_model_file, one_line

    if path.suffix.lower() != ".onnx":
        raise UserError(f"teacher.onnx {path}: extension {path.suffix or '(none)'!r}; expected a .onnx file "
                        "(an ONNX model; a PyTorch state_dict goes under teacher.checkpoint)")
    try:
        check_model_file(str(path))
    except ModelFileError as exc:
        raise UserError(f"teacher.onnx {exc}") from None
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"teacher.onnx {path}: onnxruntime cannot load it ({one_line(exc)}); expected an ONNX "
                        "model") from None


def _torch_load_user(path: Path):
    """``torch.load(weights_only=True)`` of a file the user gave, every failure one clear line."""
    import pickle
    import zipfile

    what = f"teacher.checkpoint {path}"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise UserError(f"{what}: cannot be read: {' '.join(str(exc.strerror or exc).split())}") from None
    if not head:
        raise UserError(f"{what}: empty file; expected a PyTorch state_dict saved with torch.save") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what}: refused by torch.load(weights_only=True): the file holds Python objects other "
                        "than tensors and plain containers, which could run code when loaded; save only the "
                        "weights with torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{what}: not a readable PyTorch checkpoint ({type(exc).__name__}); expected a "
                        "state_dict saved with torch.save(model.state_dict(), path)") from None


def check_given_teacher(cfg: Config, shape: Shape, out_features: int) -> None:
    """Before anything is written: a given teacher file loads, runs on the data's input shape and has
    the right number of outputs (teacher.onnx), or fits the configured architecture (teacher.checkpoint)."""
    if cfg.teacher.onnx:
        path = Path(cfg.teacher.onnx).expanduser()
        sess = _given_onnx_session(path)
        inp = sess.get_inputs()
        if len(inp) != 1:
            raise UserError(f"teacher.onnx {path} has {len(inp)} inputs; a teacher takes exactly one (the data's x)")
        try:
            out = sess.run(None, {inp[0].name: np.zeros((2, *shape), np.float32)})[0]
        except Exception as exc:
            from device_bench.runner import one_line

            raise UserError(f"teacher.onnx {path} fails on inputs of shape {list(shape)} (plus batch): "
                            f"{one_line(exc)}") from None
        width = int(np.prod(np.shape(out)[1:])) if np.ndim(out) > 1 else 1
        if width != out_features:
            raise UserError(f"teacher.onnx {path} gives {width} outputs per sample; this data needs {out_features}")
    elif cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser()
        _state_dict_into(build_teacher(cfg, shape, out_features), _torch_load_user(path), cfg, path, out_features)


def _state_dict_into(model: torch.nn.Module, payload, cfg: Config, path: Path, d_out: int) -> None:
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"teacher.checkpoint {path} holds a {type(payload).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"teacher.checkpoint {path} does not fit the configured teacher ({cfg.teacher.backbone}, "
                        f"hidden {cfg.teacher.hidden}, {d_out} outputs): "
                        f"{' '.join(str(exc).split())[:300]}") from None


def given_teacher_predictions(cfg: Config, splits: Splits, path: Path) -> dict[str, np.ndarray]:
    """Outputs of a teacher you already have (``teacher.onnx``) on every split, from onnxruntime."""
    sess = _given_onnx_session(path)
    inp = sess.get_inputs()
    if len(inp) != 1:
        raise UserError(f"teacher.onnx {path} has {len(inp)} inputs; a teacher takes exactly one (the data's x)")
    xs = splits.x_raw if cfg.teacher.onnx_input == "raw" else splits.x
    want = splits.out_features
    preds = {}
    for s in ("train", "val", "test"):
        outs = []
        for i in range(0, len(xs[s]), 256):
            try:
                outs.append(sess.run(None, {inp[0].name: xs[s][i : i + 256].astype(np.float32)})[0])
            except Exception as exc:
                raise UserError(f"teacher.onnx {path} failed on the {s} inputs of shape "
                                f"{list(xs[s].shape[1:])} (plus batch): {str(exc).splitlines()[0][:200]}") from None
        out = np.concatenate(outs).astype(np.float32).reshape(len(xs[s]), -1)
        if out.shape[1] != want:
            raise UserError(f"teacher.onnx {path} gives {out.shape[1]} outputs per sample; this data needs {want} "
                            f"({'logits of each class' if splits.task == 'classification' else 'one per label'})")
        require_finite(out, f"teacher.onnx {path}: outputs on the {s} split", "check the model and teacher.onnx_input")
        preds[s] = out
    return preds


def load_given_checkpoint(cfg: Config, splits: Splits, path: Path) -> Regressor:
    """``teacher.checkpoint``: a state_dict (or pocketkd's teacher.pt) of the configured architecture."""
    d_in, d_out = _dims(splits)
    model = build_teacher(cfg, d_in, d_out)
    _state_dict_into(model, _torch_load_user(path), cfg, path, d_out)
    return model.eval()


def stage_teacher(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    if cfg.teacher.onnx or cfg.teacher.checkpoint:  # nothing to train: rank 0 alone under torchrun
        return distributed.on_main(lambda: _given_teacher(ctx, splits))
    teacher, hist, preds, srl = train_teacher(cfg, splits)  # under torchrun: on every rank
    if not distributed.is_main():  # rank 0 writes (and hashes) the files
        return []
    d_in, d_out = _dims(splits)
    save_model(ctx.path("teacher.pt"), teacher, "teacher", d_in, d_out)
    atomic_write(ctx.path("teacher_preds.npz"),
                 lambda f: np.savez(f, **preds, significance_train=srl["significance"]))
    shares = srl["share_per_epoch"]
    atomic_write_json(
        ctx.path("teacher.json"),
        {
            "params": count_parameters(teacher),
            "hidden": cfg.teacher.hidden,
            "loss": "cross_entropy" if splits.task == "classification" else cfg.teacher.loss,
            "history": hist.to_dict(),
            "test": metrics_of(cfg, splits, preds["test"], abstain=False),
            "srl": {"enabled": cfg.teacher.srl.enabled, "share_per_epoch": [round(v, 4) for v in shares],
                    "share_mean": float(np.mean(shares)) if shares else None,
                    "never_took_part_share": float(np.mean(srl["counts"] == 0))},
            "origin": "trained by pocketkd",
            "model_file": "teacher.pt",
            "model_sha256": sha256_file(ctx.path("teacher.pt")),
        },
    )
    return ["teacher.pt", "teacher_preds.npz", "teacher.json"]


def _given_teacher(ctx: Context, splits: Splits) -> list[str]:
    """The teacher stage for a teacher you already have: no training, its outputs become the soft targets."""
    cfg = ctx.cfg
    d_in, d_out = _dims(splits)
    if cfg.teacher.onnx:
        src = Path(cfg.teacher.onnx).expanduser()
        preds = given_teacher_predictions(cfg, splits, src)
        rel, params = "teacher_given.onnx", onnx_param_count(src)
        atomic_write(ctx.path(rel), lambda f: f.write(src.read_bytes()))
        origin = f"ONNX file {src} (inputs: {cfg.teacher.onnx_input})"
    else:
        src = Path(cfg.teacher.checkpoint).expanduser()
        model = load_given_checkpoint(cfg, splits, src)
        preds = {s: predict(model, splits.x[s]) for s in ("train", "val", "test")}
        for s, v in preds.items():
            require_finite(v, f"teacher.checkpoint {src}: outputs on the {s} split", "check the checkpoint's weights")
        rel, params = "teacher.pt", count_parameters(model)
        save_model(ctx.path(rel), model, "teacher", d_in, d_out)
        origin = f"PyTorch checkpoint {src}"
    atomic_write(ctx.path("teacher_preds.npz"), lambda f: np.savez(f, **preds))
    atomic_write_json(ctx.path("teacher.json"), {
        "params": params, "hidden": None if cfg.teacher.onnx else cfg.teacher.hidden, "loss": None,
        "history": None, "test": metrics_of(cfg, splits, preds["test"], abstain=False),
        "origin": origin, "source_sha256": sha256_file(src),
        "model_file": rel, "model_sha256": sha256_file(ctx.path(rel)),
    })
    return [rel, "teacher_preds.npz", "teacher.json"]


def stage_distill(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    with np.load(ctx.path("teacher_preds.npz")) as z:
        yt = {s: z[s] for s in ("train", "val", "test")}
        significance = z["significance_train"] if "significance_train" in z.files else None
    d_in, d_out = _dims(splits)
    methods = list(dict.fromkeys([cfg.distill.method, *cfg.distill.baselines]))
    results, written = {}, []
    for name in methods:
        student, hist, method = train_student(cfg, splits, yt, name, significance)
        label_pred, teacher_pred = predict(student, splits.x["test"])
        for head, v in (("label", label_pred), ("teacher", teacher_pred)):
            require_finite(v, f"distill: student[{name}] {head}-head outputs on the test split",
                           DIVERGED + " (distill.train.lr)")
        rel = "student_mt.pt" if name == cfg.distill.method else f"baselines/{name}.pt"
        save_model(ctx.path(rel), student, "student", d_in, d_out, d_out + method.n_extra(d_out))
        written.append(rel)
        results[name] = {
            **method.describe(),
            "deployed": name == cfg.distill.method,
            "history": hist.to_dict(),
            "test_label_head": metrics_of(cfg, splits, label_pred, abstain=method.abstains()),
            # the teacher head is trained by the multi-task methods only (regression)
            "test_teacher_head": metrics_of(cfg, splits, teacher_pred, abstain=False)
            if splits.task == "regression" else None,
            "file": rel,
        }
    sizes = check_model_sizes(cfg, d_out, d_in)
    atomic_write_json(ctx.path("distill.json"), {"methods": results, **sizes})
    return [*written, "distill.json"]


def stage_student(ctx: Context) -> list[str]:
    """Drop the teacher head: the deployed student has one output."""
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    two_head = load_model(ctx.path("student_mt.pt"), cfg)
    d_in, d_out = _dims(splits)
    x = splits.x["test"]
    head_index = 0 if cfg.student.keep_head == "label" else 1
    qat_record = None
    if qat.applies(cfg):  # fine-tune with fake int8 quantization under the method loss (pipeline/qat.py)
        before = metrics_of(cfg, splits, predict(two_head, x)[head_index])
        with np.load(ctx.path("teacher_preds.npz")) as z:
            yt = {s: z[s] for s in ("train", "val")}
            significance = z["significance_train"] if "significance_train" in z.files else None
        qat_record = {**qat.qat_finetune(cfg, splits, yt, two_head, significance), "test_before": before,
                      "test_after": metrics_of(cfg, splits, predict(two_head, x)[head_index])}
    elif cfg.qat.enabled:
        log.info("qat: skipped, %s %s students are not covered (ReLU mlp / cnn only); post-training int8 as before",
                 cfg.student.activation, cfg.student.backbone)
    deployed = drop_teacher_head(two_head, cfg.student.keep_head)
    require_finite(predict(deployed, x), "student: deployed student's outputs on the test split", DIVERGED)
    diff = max_abs_diff(predict(deployed, x), predict(two_head, x)[head_index])
    save_model(ctx.path("student.pt"), deployed, "deployed", d_in, deployed.head.out_features)
    atomic_write_json(
        ctx.path("student.json"),
        {
            "kept_head": cfg.student.keep_head,
            "params": count_parameters(deployed),
            "params_two_head": count_parameters(two_head),
            "outputs": deployed.head.out_features,
            "abstain_output": deployed_abstains(cfg),
            "head_drop_max_abs_diff": diff,
            "test": metrics_of(cfg, splits, predict(deployed, x)),
            "qat": qat_record,  # None: no quantization-aware fine-tuning (qat.enabled false or not a ReLU student)
        },
    )
    return ["student.pt", "student.json"]


def export_metadata(cfg: Config, splits: Splits, batch: int | None) -> dict:
    """The one metadata dict of an exported student (Ultralytics-style): embedded in every file."""
    return {
        "producer": "pocketkd",
        "pocketkd_version": pipeline.__version__,
        "config_hash": cfg.hash(),
        "task": f"{splits.task} on {cfg.data.name}",
        "distill_method": cfg.distill.method,
        "kept_head": cfg.student.keep_head,
        "input_shape": [batch or -1, *splits.x["train"].shape[1:]],
        "input_layout": "NCHW" if splits.x["train"].ndim == 4 else "NC",
        "input_normalization": {"mean": splits.x_mean.tolist(), "std": splits.x_std.tolist(),
                                "formula": "(x - mean) / std, per channel (images) or feature (vectors)"},
        "output_meaning": OUTPUT_MEANING[cfg.data.name] + (
            ("; the LAST output is 'abstain': predict argmax of the others, abstain when softmax(all)[-1] is high"
             if splits.task == "classification" else
             f"; outputs 0..{splits.out_features - 1} are the means, the next {splits.out_features} their "
             "log-variances: abstain when the variance is high") if deployed_abstains(cfg) else ""),
        "outputs": splits.out_features + (METHODS[cfg.distill.method].n_extra(splits.out_features)
                                          if deployed_abstains(cfg) else 0),
        **({"output_names": splits.output_names} if splits.output_names else {}),
        **({"output_units": "radians (pitch, yaw)"} if splits.angles else {}),
        **({"classes": list(range(splits.n_classes)), "abstain_output": deployed_abstains(cfg)}
           if splits.task == "classification" else {}),
        "batch": batch or "dynamic",
    }


def given_teacher_row(cfg: Config, teacher_info: dict, src: Path, out_dir: Path) -> dict:
    """The teacher you gave as ONNX, copied as teacher.onnx for the bench, with the test metrics the
    teacher stage measured on this very file."""
    from pipeline.io import atomic_copy

    path = atomic_copy(src, out_dir / "teacher.onnx")
    return {"format": "onnx_fp32", "model": "teacher", "runtime": "onnxruntime", "precision": "fp32",
            "strict": False, "batch": "as given", "file": path.name, "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path), "status": "ok", "input": cfg.teacher.onnx_input, "origin": "given",
            **teacher_info["test"]}


def export_student(cfg: Config, run_dir: Path, out_dir: Path, formats: list[str], android: bool) -> dict:
    """Export the deployed student (and the teacher, ONNX only, for the bench): server files with a
    dynamic batch axis into ``out_dir``, the fixed-shape Android bundle into ``out_dir/android``."""
    from export import ExportJob, export_all
    from export.android import write_bundle

    splits = Splits.load(run_dir / "data.npz")
    shape, _ = _dims(splits)
    export_cfg = cfg.export
    if qat.applies(cfg) and export_cfg.int8.prepare:  # re-rounding a QAT'd student would undo its learned grid
        export_cfg = export_cfg.model_copy(update={"int8": export_cfg.int8.model_copy(update={"prepare": False})})

    rewrites = {}

    def deployable(model_file):
        """The model as exported: hard-sigmoid / hard-swish as ReLU6 arithmetic (models.deploy), checked
        against the trained model here so the files' parity with PyTorch still holds for the original."""
        original = load_model(run_dir / model_file, cfg)
        model = mobile_friendly(original)
        if model is not original:
            diff = max_abs_diff(predict(model, splits.x["test"]), predict(original, splits.x["test"]))
            rewrites[model_file] = {"rewrite": "hard-sigmoid/hard-swish as ReLU6", "max_abs_diff": diff}
            if not diff <= cfg.export.parity_atol:  # NaN fails too
                raise ParityError(f"{model_file}: the ReLU6 form of hard-sigmoid/hard-swish differs from the trained "
                                  f"model by {diff:.3g} > export.parity_atol={cfg.export.parity_atol:g}")
        return model

    def job(model_file, stem, directory, batch):
        meta = export_metadata(cfg, splits, batch)
        flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items()}
        return ExportJob(model=deployable(model_file), out_dir=directory, input_shape=shape,
                         x_eval=splits.x["test"], y_eval=splits.y_clean["test"], x_calib=splits.x["train"],
                         y_calib=splits.y["train"],
                         cfg=export_cfg, stem=stem, metadata={**flat, "model": stem}, batch=batch,
                         task=splits.task, abstain=stem == "student" and deployed_abstains(cfg),
                         angles=splits.angles, output_names=splits.output_names)

    from export.int8_arith import host_int8_profile

    result = {"parity_atol": cfg.export.parity_atol, "limits": cfg.export.limits.model_dump(),
              "host_int8": host_int8_profile()}
    student_job = job("student.pt", "student", out_dir, None)
    result["calibration"] = student_job.calibration_info()
    result["formats"] = export_all(student_job, formats)
    teacher_info = json.loads((run_dir / "teacher.json").read_text())
    if teacher_info.get("model_file") == "teacher_given.onnx":
        result["formats"].append(given_teacher_row(cfg, teacher_info, run_dir / "teacher_given.onnx", out_dir))
    else:
        result["formats"] += export_all(job("teacher.pt", "teacher", out_dir, None), ["onnx_fp32"])
    groups = [(out_dir, result["formats"])]
    if android:
        a = cfg.export.android
        bundle_dir = out_dir / "android"
        rows = export_all(job("student.pt", "student", bundle_dir, a.batch), list(a.formats))
        groups.append((bundle_dir, rows))
        result["android"] = rows
    _file_checks(groups)
    if android:
        write_bundle(bundle_dir, result["android"], export_metadata(cfg, splits, cfg.export.android.batch))
    if rewrites:
        result["deploy_rewrites"] = rewrites
    return result


def _file_checks(groups: list[tuple[Path, list[dict]]]) -> None:
    """onnx.checker (full_check) on every .onnx, tf.lite.Interpreter on every .tflite, finite outputs
    everywhere: a strict file that fails, or any file with NaN/inf outputs, stops the export."""
    from export.checks import add_file_checks, non_finite_rows


    add_file_checks(groups)
    rows = [r for _, rs in groups for r in rs]
    if bad := non_finite_rows(rows):
        raise ParityError(f"export: NaN or infinite outputs from {', '.join(bad)} on the test inputs")
    if bad := [r for r in rows if r["strict"] and r["status"] != "ok"]:
        raise ParityError("export check failed: " + "; ".join(f"{r['model']} {r['format']}: {r.get('error')}"
                                                               for r in bad))


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
            if r.get("input") == "raw":  # a given teacher that takes the data's own units
                x = splits.x_raw["test"]
            partial = target.emulated and r["model"] == "teacher"  # accuracy of the teacher is not the claim
            if partial:
                x = x[: b.emulated_teacher_rows]
            res = target.run(ctx.path(r["file"]), x, threads=b.threads, warmup=b.warmup, runs=b.runs,
                             batch=b.batch, max_seconds=b.max_seconds, timeout=max(600.0, 10 * b.max_seconds))
            out = np.asarray(res.pop("outputs"), dtype=np.float32)
            require_finite(out, f"bench: outputs of {r['file']} on target {spec}")
            res.update(model=r["model"], format=r["format"], precision=r["precision"], file=r["file"])
            if r["model"] != "floor":
                if not partial:
                    res.update(metrics_of(cfg, splits, out, abstain=deployed_abstains(cfg) and r["model"] == "student"))
                else:
                    res["eval_rows"] = len(x)
                if spec == "host":
                    host_out[r["file"]] = out
                elif r["file"] in host_out:
                    ref = host_out[r["file"]][: len(out)]
                    res["max_abs_diff_vs_host"] = max_abs_diff(out, ref)
                    # float32 carries ~7 digits: for outputs far from 1 (e.g. degrees) the bound scales
                    res["parity_bound"] = b.parity_atol * max(1.0, float(np.abs(ref).max()))
                    if r["precision"] == "fp32" and not res["max_abs_diff_vs_host"] <= res["parity_bound"]:
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


def data_environment(cfg: Config) -> str:
    """What the data stage reads outside the run directory: the user's data files (their sha256; for
    folders of images or .mat files, every file's name, size and modification time)."""
    src = cfg.data.source
    if src is None:
        return ""
    from pipeline.io import sha256_file

    if src.kind in ("csv", "npz"):
        p = Path(src.path)
        return sha256_file(p) if p.is_file() else "missing"
    root = Path(src.root)
    files = sorted(q for q in root.rglob("*") if q.is_file()) if root.is_dir() else []
    listing = "\n".join(f"{q.relative_to(root)}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def teacher_environment(cfg: Config) -> str:
    """The given teacher file's sha256 (teacher.onnx / teacher.checkpoint), if any."""
    from pipeline.io import sha256_file

    given = cfg.teacher.onnx or cfg.teacher.checkpoint
    return sha256_file(Path(given).expanduser()) if given else ""


def bench_environment(cfg: Config) -> str:
    from device_bench.targets import parse_target

    return "|".join(parse_target(spec).fingerprint() for spec in cfg.bench.targets) + "|" + export_environment(cfg)


def export_environment(cfg: Config) -> str:
    """The host's int8 arithmetic (CPU flags, measured saturation): host-kernel columns depend on it."""
    from export.int8_arith import host_int8_profile, profile_fingerprint

    return profile_fingerprint(host_int8_profile())


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
    Stage("data", stage_data, reads=(), config=("data",), environment=data_environment,
          help="make the data set and inject label noise"),
    Stage("teacher", stage_teacher, reads=("data.npz",), config=("teacher",), environment=teacher_environment,
          distributed=True, help="train the large teacher (or load the one you give)"),
    Stage("distill", stage_distill, reads=("data.npz", "teacher_preds.npz"), config=("student", "distill", "teacher"),
          distributed=True, help="train the two-head student (and the baselines)"),
    Stage("student", stage_student, reads=("student_mt.pt", "data.npz", "teacher_preds.npz"),
          config=("student", "distill", "qat", "export.int8"),
          help="quantization-aware fine-tuning (qat), then drop the teacher head: a single-output student"),
    Stage("export", stage_export, reads=("student.pt", "teacher.json", "data.npz"), config=("export", "student", "qat"),
          environment=export_environment,
          version="3",  # 3: int8 ORT rows judged on exact int8 arithmetic; seeded calibration sample
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
