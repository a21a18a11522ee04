"""Stage ``distill``: train the two-head student with the deployed method, and each baseline, from the
same initial weights on the same batches."""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from pipeline import distributed, train
from pipeline.checkpoints import build_student, save_model
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.io import atomic_write_json
from pipeline.methods import TrainingSet, build_method
from pipeline.metrics import require_finite
from pipeline.preflight import check_model_sizes
from pipeline.procs import die_with_parent
from pipeline.runner import Context
from pipeline.stages.common import DIVERGED, dims, early_best, fold_scale, label_scale, metrics_of, scaled
from pipeline.train import fit, predict, seed_everything

log = logging.getLogger(__name__)


def train_student(cfg: Config, splits: Splits, yt: dict[str, np.ndarray], name: str,
                  significance: np.ndarray | None = None, features: dict[str, np.ndarray] | None = None):
    """Train one two-head student with method ``name``; returns (model, history, method).
    ``features``: the teacher's penultimate features on the train and val splits (classification with
    a PyTorch teacher), for the methods that read them (ds.score=influence).

    Every method starts from the same initial weights and sees the same batches."""
    d_in, d_out = dims(splits)
    scale = label_scale(splits)
    y = {s: scaled(splits.y[s], scale) for s in ("train", "val")}
    yt = {s: scaled(yt[s], scale) for s in ("train", "val")}
    residuals = y["train"] - yt["train"] if splits.task == "regression" else None
    feats = features or {}
    train_set = TrainingSet(y=y["train"], teacher=yt["train"], task=splits.task, significance=significance,
                            features=feats.get("train"), val_features=feats.get("val"), val_y=y["val"],
                            val_teacher=yt["val"])
    method = build_method(name, cfg.distill, residuals, train_set)
    seed_everything(cfg.seed + 100)
    student = build_student(cfg, d_in, d_out, d_out + method.n_extra(d_out))

    def loss_fn(m, b):
        label_out, teacher_out = m(b[0])
        idx = b[3] if b[3][0] >= 0 else None  # validation rows carry -1: not training samples
        return method.loss(label_out, teacher_out, b[1], b[2], idx)

    n, n_val = len(splits.y["train"]), len(splits.y["val"])
    x_val = torch.as_tensor(np.ascontiguousarray(splits.x["val"]))
    # what the label head is compared with each epoch: class ids, or the scaled labels (n, k)
    target = splits.y["val"] if splits.task == "classification" else y["val"].reshape(n_val, -1)
    unit = scale[1][0] if scale is not None and target.ndim == 2 and target.shape[1] == 1 else 1.0

    @torch.no_grad()
    def val_metric(m) -> float:
        """One figure every method's curve shares (their losses differ): the label head's validation
        error against the labels as given: MAE in label units (regression; standardised units when
        there are several outputs) or the error rate (classification)."""
        was = m.training
        m.eval()
        out = m(x_val)[0].numpy()[:, :d_out]  # extra columns (abstain, variance) are not labels
        m.train(was)
        if splits.task == "classification":
            return float(np.mean(out.argmax(axis=1) != target))
        return float(np.abs(out - target).mean() * unit)

    hist = fit(
        student,
        loss_fn,
        (splits.x["train"], y["train"], yt["train"], np.arange(n)),
        (splits.x["val"], y["val"], yt["val"], np.full(n_val, -1)),
        cfg.distill.train,
        seed=cfg.seed + 2,
        desc=f"student[{name}]",
        on_epoch_end=lambda epoch: method.epoch_end(),
        val_metric=val_metric,
    )
    fold_scale(student.label_head, scale)
    fold_scale(student.teacher_head, scale)
    return student, hist, method


class DistillInputs(NamedTuple):
    """What every student of a run is trained from (``load_inputs``)."""

    splits: Splits
    teacher: dict[str, np.ndarray]  # teacher outputs per split
    significance: np.ndarray | None  # SRL significance of the training rows
    features: dict[str, np.ndarray] | None  # teacher penultimate features on train / val (classification)


def load_inputs(run_dir: Path) -> DistillInputs:
    """The distillation inputs of a run directory (written by the data and teacher stages)."""
    splits = Splits.load(run_dir / "data.npz")
    with np.load(run_dir / "teacher_preds.npz") as z:
        yt = {s: z[s] for s in ("train", "val", "test")}
        significance = z["significance_train"] if "significance_train" in z.files else None
        features = ({s: z[f"features_{s}"] for s in ("train", "val")} if "features_train" in z.files else None)
    return DistillInputs(splits, yt, significance, features)


def fit_method(cfg: Config, run_dir: Path, name: str, inputs: tuple | None = None) -> dict:
    """Train method ``name``'s student, check its outputs, save it; returns its ``distill.json`` entry.
    ``inputs``: ``load_inputs(run_dir)`` when the caller has it already."""
    splits, yt, significance, features = inputs or load_inputs(run_dir)
    d_in, d_out = dims(splits)
    student, hist, method = train_student(cfg, splits, yt, name, significance, features)
    label_pred, teacher_pred = predict(student, splits.x["test"])
    for head, v in (("label", label_pred), ("teacher", teacher_pred)):
        require_finite(v, f"distill: student[{name}] {head}-head outputs on the test split",
                       DIVERGED + " (distill.train.lr)")
    warnings = []
    if early_best(hist):
        warnings.append(f"warning: distill: student[{name}]'s best validation epoch is {hist.best_epoch + 1} of "
                        f"{hist.epochs_run} run: it may have stalled before learning (its early stop kept an "
                        "almost untrained model); try a lower distill.train.lr or a larger distill.train.patience")
        log.warning("%s", warnings[-1])
    rel = "student_mt.pt" if name == cfg.distill.method else f"baselines/{name}.pt"
    save_model(run_dir / rel, student, "student", d_in, d_out, d_out + method.n_extra(d_out))
    return {
        **method.describe(),
        "deployed": name == cfg.distill.method,
        "history": hist.to_dict(),
        "test_label_head": metrics_of(cfg, splits, label_pred, abstain=method.abstains()),
        # the teacher head is trained by the multi-task methods only (trains_teacher_head); the others
        # leave it at its initial weights, and the report shows no teacher-head metric for them
        "test_teacher_head": metrics_of(cfg, splits, teacher_pred, abstain=False)
        if splits.task == "regression" else None,
        "trains_teacher_head": method.trains_teacher_head,
        "warnings": warnings,
        "file": rel,
        **outlier_rejection(method, splits),
    }


def worker_context(threads: int):
    """How workers start. One torch thread each: forked (no second torch import, ~4 s on 2 cores), as
    torch's DataLoader forks its workers and sets one thread in each: an OpenMP thread pool does not
    survive a fork, a single thread never uses it. More threads each: spawned (a fresh interpreter)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if threads == 1 and "fork" in methods else "spawn")


def worker_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """The baselines' process pool; its workers die with this process (even on SIGKILL), so a killed run
    leaves no worker training on and holding the run directory's lock."""
    return ProcessPoolExecutor(workers, mp_context=worker_context(threads), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def _fit_in_worker(cfg: Config, run_dir: str, name: str, threads: int, log_level: int) -> dict:
    """A worker process: one baseline with ``threads`` torch threads, logging like the parent (a forked
    worker inherits its handlers; a spawned one gets the same format).
    ``cfg`` is the stage's config slice, pickled: the worker reads what the stage declared, no more."""
    if not logging.getLogger().handlers:  # spawned
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pipeline").setLevel(log_level)
    torch.set_num_threads(threads)
    train.PROGRESS_BARS = False  # the parent's bar owns the terminal; a worker logs progress lines
    return fit_method(cfg, Path(run_dir), name)


def parallel_plan(cfg, n_baselines: int) -> tuple[int, int]:
    """(worker processes, torch threads per job) for the baselines; (0, 0): train one after another.
    Each job (the deployed method in this process, each worker) gets an equal share of the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not cfg.distill.parallel or n_baselines == 0 or cores < 2 or distributed.env_world_size() > 1:
        return 0, 0
    workers = min(n_baselines, cores - 1)
    return workers, max(1, cores // (workers + 1))


def stage_distill(ctx: Context) -> list[str]:
    cfg = ctx.cfg
    deployed, *baselines = list(dict.fromkeys([cfg.distill.method, *cfg.distill.baselines]))
    workers, threads = parallel_plan(cfg, len(baselines))
    inputs = load_inputs(ctx.run_dir)  # a worker loads its own copy
    results: dict[str, dict] = {}
    if workers:
        log.info("distill: %d baseline(s) in %d worker process(es) beside %s, %d torch thread(s) each",
                 len(baselines), workers, deployed, threads)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with worker_pool(workers, threads) as pool:
                level = logging.getLogger("pipeline").getEffectiveLevel()
                jobs = {name: pool.submit(_fit_in_worker, cfg, str(ctx.run_dir), name, threads, level)
                        for name in baselines}
                results[deployed] = fit_method(cfg, ctx.run_dir, deployed, inputs)
                for name, job in jobs.items():
                    results[name] = job.result()
        finally:
            torch.set_num_threads(before)
    else:
        for name in (deployed, *baselines):
            results[name] = fit_method(cfg, ctx.run_dir, name, inputs)
    d_in, d_out = dims(inputs.splits)
    sizes = check_model_sizes(cfg, d_out, d_in)
    atomic_write_json(ctx.path("distill.json"), {"methods": {k: results[k] for k in (deployed, *baselines)},
                                                 **sizes})
    return [r["file"] for r in results.values()] + ["distill.json"]


def outlier_rejection(method, splits: Splits) -> dict:
    """A method that rejects labels (TOR): its threshold in label units, the share of training labels
    it flags, and, when the outlier labels are known (injected here), how many flagged ones are real."""
    flagged = getattr(method, "flagged", None)
    if flagged is None:
        return {}
    scale = label_scale(splits)
    out = {"rejection": {"threshold_std_units": float(method.delta),
                         # one output: delta x the label std; several: a length in standardised units only
                         "threshold_label_units": (float(method.delta * scale[1][0]) if scale is not None
                                                   else float(method.delta)) if splits.out_features == 1 else None,
                         "flagged": int(flagged.sum()), "flagged_share": float(flagged.mean())}}
    real = splits.outlier["train"]
    if real.any():  # known: outliers were injected (or the data set is built-in)
        out["rejection"].update(real_outliers=int(real.sum()), flagged_real=int((flagged & real).sum()))
    return out
