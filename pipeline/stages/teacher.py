"""Stage ``teacher``: train the large teacher on the noisy labels (or load the one you give) and
write its outputs on every split, the soft targets of distillation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from models import count_parameters
from pipeline import distributed
from pipeline.checkpoints import build_teacher, save_model
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.given_teacher import given_teacher_predictions, load_given_checkpoint, onnx_param_count
from pipeline.io import atomic_write, atomic_write_json, sha256_file
from pipeline.methods.losses import regression_loss
from pipeline.methods.self_regulation import SignificanceCounter, self_regulated_mask
from pipeline.metrics import require_finite
from pipeline.runner import Context
from pipeline.stages.common import DIVERGED, dims, early_best, fold_scale, label_scale, metrics_of, scaled
from pipeline.train import fit, predict, seed_everything

log = logging.getLogger(__name__)

def teacher_loss(cfg: Config, y_train: np.ndarray):
    """The regression loss per sample and output: mse, l1, or huber with ``delta`` per output (given, or
    HUBER_K x the MAD scale of the standardised training labels). Returns (fn, delta or None)."""
    return regression_loss(cfg.teacher.loss, y_train, cfg.teacher.huber_delta)


def teacher_warnings(hist, val_loss_fn, y_train: np.ndarray, y_val: np.ndarray, loss: str) -> list[str]:
    """Why the teacher may have learned little: its best epoch came very early, or its validation loss
    is no better than the median of the training labels predicted for every sample."""
    out = []
    early = early_best(hist)
    if early:
        out.append(f"warning: teacher: the best validation epoch is {hist.best_epoch + 1} of {hist.epochs_run} run "
                   f"(within the first {early}); with outlier labels the {loss} validation loss may reward an "
                   "early, underfitted model: try teacher.loss=l1 or huber")
    median = torch.as_tensor(np.median(y_train, axis=0, keepdims=True), dtype=torch.float32)
    yv = torch.as_tensor(y_val, dtype=torch.float32)
    trivial = float(val_loss_fn(median.expand_as(yv), yv).mean())
    if hist.best_val >= trivial:
        out.append(f"warning: teacher: its validation {loss} ({hist.best_val:.4g}) is no better than predicting the "
                   f"median training label for every sample ({trivial:.4g}); it has learned nothing the students "
                   "can use: check the data, or try teacher.loss=l1 or huber and a longer training")
    return out


def train_teacher(cfg: Config, splits: Splits):
    """Train the teacher on the noisy labels; returns (model, history, predictions per split, SRL record).

    Self-regulated learning (Mishra & Sundaram) is tracked on every teacher: a sample *takes part* when
    the teacher gets it wrong or right with p_y < tau (classification), or its |error| exceeds the
    tolerance (regression). With ``teacher.srl.enabled`` only those samples are back-propagated; either
    way each sample's participation count (its significance) is recorded."""

    d_in, d_out = dims(splits)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg, d_in, d_out)
    srl = cfg.teacher.srl
    n = len(splits.y["train"])
    counter = SignificanceCounter(n)
    shares: list[float] = []
    epoch_count = [0.0]
    classify = splits.task == "classification"
    scale = label_scale(splits)
    reg_loss, huber_delta = teacher_loss(cfg, scaled(splits.y["train"], scale)) if not classify else (None, None)

    def loss_fn(m, b):
        x, y, idx = b
        out = m(x)
        if classify:
            per = torch.nn.functional.cross_entropy(out, y, reduction="none")
            take = self_regulated_mask(out.detach(), y, srl.tau)
        else:
            per = reg_loss(out, y).reshape(len(y), -1).mean(dim=1)
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

    hist = fit(
        teacher,
        loss_fn,
        (splits.x["train"], scaled(splits.y["train"], scale), np.arange(n)),
        (splits.x["val"], scaled(splits.y["val"], scale), np.full(len(splits.y["val"]), -1)),
        cfg.teacher.train,
        seed=cfg.seed + 1,
        desc="teacher" + (" (SRL)" if srl.enabled else ""),
        on_epoch_end=epoch_end,
    )
    fold_scale(teacher.head, scale)
    counter.counts = distributed.all_reduce_sum(counter.counts)  # each rank counted its own rows
    preds = {s: predict(teacher, splits.x[s]) for s in ("train", "val", "test")}
    for s, v in preds.items():
        require_finite(v, f"teacher: outputs on the {s} split", DIVERGED + " (teacher.train.lr)")
    record = {"significance": counter.normalised().numpy(), "counts": counter.counts.numpy(),
              "share_per_epoch": shares, "huber_delta": huber_delta,
              "warnings": [] if classify else teacher_warnings(
                  hist, lambda o, y: reg_loss(o, y).reshape(len(y), -1).mean(dim=1),
                  scaled(splits.y["train"], scale), scaled(splits.y["val"], scale), cfg.teacher.loss)}
    for line in record["warnings"]:
        log.warning("%s", line)
    return teacher, hist, preds, record


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, splits: Splits) -> dict[str, np.ndarray] | None:
    """The inputs of the teacher's last layer (its backbone's outputs) on the train and val splits, for
    influence-based data selection; None for a model without a backbone and linear head."""
    if splits.task != "classification" or not isinstance(getattr(model, "head", None), torch.nn.Linear) \
            or not hasattr(model, "backbone"):
        return None
    was = model.training
    model.eval()
    out = {s: np.concatenate([model.backbone(torch.as_tensor(np.ascontiguousarray(splits.x[s][i:i + 1024])))
                              .numpy() for i in range(0, len(splits.x[s]), 1024)]).astype(np.float32)
           for s in ("train", "val")}
    model.train(was)
    return out


def _features_npz(model, splits) -> dict[str, np.ndarray]:
    feats = penultimate_features(model, splits)
    return {f"features_{s}": v for s, v in feats.items()} if feats else {}


def stage_teacher(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    splits = Splits.load(ctx.path("data.npz"))
    if cfg.teacher.onnx or cfg.teacher.checkpoint:  # nothing to train: rank 0 alone under torchrun
        return distributed.on_main(lambda: _given_teacher(ctx, splits))
    teacher, hist, preds, srl = train_teacher(cfg, splits)  # under torchrun: on every rank
    if not distributed.is_main():  # rank 0 writes (and hashes) the files
        return []
    d_in, d_out = dims(splits)
    save_model(ctx.path("teacher.pt"), teacher, "teacher", d_in, d_out)
    atomic_write(ctx.path("teacher_preds.npz"),
                 lambda f: np.savez(f, **preds, significance_train=srl["significance"],
                                    **_features_npz(teacher, splits)))
    shares = srl["share_per_epoch"]
    atomic_write_json(
        ctx.path("teacher.json"),
        {
            "params": count_parameters(teacher),
            "hidden": cfg.teacher.hidden,
            "loss": "cross_entropy" if splits.task == "classification" else cfg.teacher.loss,
            **({"huber_delta_std_units": srl["huber_delta"]} if srl["huber_delta"] is not None else {}),
            "warnings": srl["warnings"],
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
    d_in, d_out = dims(splits)
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
    feats = {} if cfg.teacher.onnx else _features_npz(model, splits)
    atomic_write(ctx.path("teacher_preds.npz"), lambda f: np.savez(f, **preds, **feats))
    atomic_write_json(ctx.path("teacher.json"), {
        "params": params, "hidden": None if cfg.teacher.onnx else cfg.teacher.hidden, "loss": None,
        "history": None, "test": metrics_of(cfg, splits, preds["test"], abstain=False),
        "origin": origin, "source_sha256": sha256_file(src),
        "model_file": rel, "model_sha256": sha256_file(ctx.path(rel)),
    })
    return [rel, "teacher_preds.npz", "teacher.json"]


def teacher_environment(cfg: Config) -> str:
    """The given teacher file's sha256 (teacher.onnx / teacher.checkpoint), if any."""

    given = cfg.teacher.onnx or cfg.teacher.checkpoint
    return sha256_file(Path(given).expanduser()) if given else ""
