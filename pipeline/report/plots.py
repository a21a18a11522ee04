"""The report's plots (``plots/``), drawn from files the stages wrote: no model is rebuilt or rerun."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data import Splits
from pipeline.io import atomic_write
from pipeline.metrics import _softmax, selective_risk
from pipeline.report.collect import read_json


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _test_set(cfg: Config) -> str:
    return "test split (labels as given)" if cfg.data.name == "source" else "clean test set"


def _plot_fit_1d(plt, splits, teacher_test, student_test, cfg):
    """Vector input of one feature: truth, noisy labels, teacher and student against x."""
    order = np.argsort(splits.x_raw["test"][:, 0])
    xs = splits.x_raw["test"][order, 0]
    fig, ax = plt.subplots(figsize=(9, 5))
    xt, yt, out = splits.x_raw["train"][:, 0], splits.y["train"][:, 0], splits.outlier["train"]
    ax.scatter(xt[~out], yt[~out], s=4, c="0.6", label="noisy labels (train)")
    ax.scatter(xt[out], yt[out], s=6, c="tab:red", alpha=0.5, label="outlier labels (train)")
    ax.plot(xs, splits.y_clean["test"][order, 0], "k-", lw=2, label="truth")
    ax.plot(xs, teacher_test[order, 0], "-", c="tab:blue", lw=1.5, label="teacher")
    ax.plot(xs, student_test[order, 0], "-", c="tab:green", lw=1.5, label=f"student ({cfg.distill.method}, deployed)")
    lim = 2.5 * max(1e-6, float(np.abs(splits.y_clean["test"]).max()))
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("Truth, noisy labels, teacher and deployed student")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def _plot_pred_vs_true(plt, splits, teacher_test, student_test, cfg):
    """Images or several features: predictions against the clean test labels (first output)."""
    fig, ax = plt.subplots(figsize=(6, 6))
    y = splits.y_clean["test"][:, 0]
    ax.scatter(y, teacher_test[:, 0], s=5, alpha=0.5, c="tab:blue", label="teacher")
    ax.scatter(y, student_test[:, 0], s=5, alpha=0.5, c="tab:green", label=f"student ({cfg.distill.method})")
    lo, hi = float(y.min()), float(y.max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="ideal")
    ax.set_xlabel("test label (as given)" if cfg.data.name == "source" else "clean test label")
    ax.set_ylabel("prediction")
    ax.set_title("Predictions on the " + _test_set(cfg))
    ax.legend(fontsize=8)
    return fig


def _plot_coverage_risk(plt, splits, teacher_test, student_test, cfg):
    """Classification: selective risk against coverage, by softmax confidence and (gambler) the abstain output."""
    y = splits.y_clean["test"]
    covs = np.linspace(0.3, 1.0, 29)
    fig, ax = plt.subplots(figsize=(7, 5))
    abstain = student_test.shape[1] == splits.n_classes + 1
    curves = [("teacher, softmax confidence", teacher_test, None),
              (f"student ({cfg.distill.method}), softmax confidence", student_test[:, : splits.n_classes], None)]
    if abstain:
        curves.append((f"student ({cfg.distill.method}), abstain output", student_test[:, : splits.n_classes],
                       _softmax(student_test)[:, -1]))
    for label, logits, score in curves:
        p = _softmax(logits)
        correct = p.argmax(1) == y
        s = 1 - p.max(1) if score is None else score
        r = selective_risk(correct, s, covs)
        ax.plot(covs * 100, [r[f"{round(c * 100):d}"] for c in covs], marker=".", label=label)
    ax.set_xlabel("coverage, % of test samples kept")
    ax.set_ylabel("selective risk (error rate on kept samples)")
    ax.set_title("Coverage-risk on the " + _test_set(cfg))
    ax.legend(fontsize=8)
    return fig


def _latency_cdf(plt, run_dir: Path):
    """Empirical CDF of every timed run, one panel per target, student files and teacher."""
    files = sorted((run_dir / "bench").glob("*.json"))
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), squeeze=False)
    for ax, path in zip(axes[0], files):
        b = json.loads(path.read_text())
        for r in b["results"]:
            ms = np.sort(np.asarray(r.get("latencies_ms", []), dtype=float))
            if ms.size:
                ax.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", lw=1,
                        label=r["file"].split("/")[-1], ls="--" if r["model"] != "student" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("latency per batch, ms (log)")
        ax.set_ylabel("share of runs")
        ax.set_title(b["target"] + (" (emulated)" if b.get("emulated") else ""))
        ax.legend(fontsize=6)
    return fig


def _log_if_wide(ax, values) -> None:
    """A log axis only for curves spanning more than a decade (else it only hides the ticks)."""
    v = [x for x in values if x > 0]
    if v and max(v) / min(v) > 10:
        ax.set_yscale("log")


def _learning_curves(plt, run_dir: Path, cfg: Config, splits):
    """Teacher: its own loss. Students: one figure every method shares (``History.val_metric``: the
    label head's validation error against the labels as given, in label units); a run made before
    that was recorded gets one panel per method, each with its own objective and axis."""
    teacher = read_json(run_dir, "teacher.json")
    methods = read_json(run_dir, "distill.json").get("methods", {})
    shared = all(m["history"].get("val_metric") for m in methods.values())
    panels = 2 if shared else 1 + len(methods)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * min(panels, 3), 4), squeeze=False)
    axes = axes[0]
    std = "standardised labels" if splits.task == "regression" else "cross-entropy, nats"
    if teacher.get("history"):
        axes[0].plot(teacher["history"]["train_loss"], label="train")
        axes[0].plot(teacher["history"]["val_loss"], label="val")
        axes[0].set_title(f"teacher: {teacher.get('loss', cfg.teacher.loss)} on the labels as given")
        axes[0].set_ylabel(f"{teacher.get('loss', cfg.teacher.loss) if splits.task == 'regression' else 'loss'} "
                           f"({std})")
        _log_if_wide(axes[0], teacher["history"]["val_loss"] + teacher["history"]["train_loss"])
    else:
        axes[0].set_title(f"teacher given, not trained here: {teacher.get('origin', '')}"[:70])
    if shared:
        for name, m in methods.items():
            axes[1].plot(m["history"]["val_metric"], label=name + (" (deployed)" if m.get("deployed") else ""))
        if splits.task == "classification":
            axes[1].set_ylabel("validation error rate")
        else:
            unit = splits.output_names[0] if splits.out_features == 1 and splits.output_names else "label units"
            axes[1].set_ylabel(f"validation MAE ({unit})" if splits.out_features == 1
                               else "validation MAE (standardised units, mean over outputs)")
        axes[1].set_title("students: label head vs the validation labels as given")
    else:
        for ax, (name, m) in zip(axes[1:], methods.items()):
            ax.plot(m["history"]["val_loss"], label="val")
            ax.set_title(f"student[{name}]: its own objective")
            ax.set_ylabel(f"validation loss ({std})")
            _log_if_wide(ax, m["history"]["val_loss"])
    for a in axes:
        a.set_xlabel("epoch")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    return fig


def make_plots(run_dir: Path, cfg: Config, rep: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = run_dir / "plots"
    made = []
    splits = Splits.load(run_dir / "data.npz")
    with np.load(run_dir / "teacher_preds.npz") as z:
        teacher_test = z["test"]
    with np.load(run_dir / "student_preds.npz") as z:  # the student stage's outputs of the deployed student
        student_test = z["test"]
    if splits.task == "classification":
        fig = _plot_coverage_risk(plt, splits, teacher_test, student_test, cfg)
    elif splits.x_raw["test"].ndim == 2 and splits.x_raw["test"].shape[1] == 1:
        fig = _plot_fit_1d(plt, splits, teacher_test, student_test, cfg)
    else:
        fig = _plot_pred_vs_true(plt, splits, teacher_test, student_test, cfg)
    _savefig(fig, plots_dir / "fit.png")
    plt.close(fig)
    made.append("plots/fit.png")

    fig = _learning_curves(plt, run_dir, cfg, splits)
    _savefig(fig, plots_dir / "learning_curves.png")
    plt.close(fig)
    made.append("plots/learning_curves.png")

    cdf = _latency_cdf(plt, run_dir)
    if cdf is not None:
        _savefig(cdf, plots_dir / "latency_cdf.png")
        plt.close(cdf)
        made.append("plots/latency_cdf.png")
    if rep["bench"]:
        fig, ax = plt.subplots(figsize=(10, 4))
        labels, p50, lo, hi = [], [], [], []
        for target, b in rep["bench"].items():
            for r in b["results"]:
                lat = r["latency_ms"]
                labels.append(f"{target}\n{r['file']}")
                p50.append(lat["p50"])
                lo.append(lat["p50"] - lat["min"])
                hi.append(lat["p99"] - lat["p50"])
        ax.bar(range(len(p50)), p50, yerr=[lo, hi], capsize=3, color="tab:blue")
        ax.set_xticks(range(len(p50)), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("ms per batch (bar: p50, whisker: min..p99)")
        ax.set_title("Latency per exported file")
        _savefig(fig, plots_dir / "latency.png")
        plt.close(fig)
        made.append("plots/latency.png")
    return made
