"""The report: ``report.json`` for machines, ``report.md`` / ``report.html`` and ``plots/`` for people.

Tables are built once as rows and rendered to both Markdown and HTML.
"""

from __future__ import annotations

import html
import importlib.metadata as md
import json
import platform
from pathlib import Path

import numpy as np

import pipeline
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.io import atomic_write, atomic_write_json, atomic_write_text
from pipeline.toolchain import constraints_info
from pipeline.verdicts import file_verdicts, summary_line

Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows)

PACKAGES = ["numpy", "torch", "onnx", "onnxruntime", "onnxsim", "onnx2tf", "tensorflow-cpu", "ai-edge-litert"]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "pocketkd": pipeline.__version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _read(run_dir: Path, name: str) -> dict:
    p = run_dir / name
    return json.loads(p.read_text()) if p.exists() else {}


def _f(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def _task(rep: dict) -> str:
    return rep["data"].get("task", "regression")


def _cols(task: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """(key, column title) of the two metrics shown per model: RMSE/MAE, or accuracy/risk at 80 % coverage."""
    if task == "classification":
        return ("accuracy", "accuracy"), ("risk80", "risk @80 % coverage")
    return ("rmse", "RMSE"), ("mae", "MAE")


def _metric(m: dict | None, key: str):
    if not m:
        return None
    if key == "risk80":
        r = m.get("risk_abstain") or m.get("risk_softmax") or {}
        return r.get("80")
    return m.get(key)


def collect(run_dir: Path, cfg: Config) -> dict:
    data = _read(run_dir, "data.json")
    teacher = _read(run_dir, "teacher.json")
    distill = _read(run_dir, "distill.json")
    student = _read(run_dir, "student.json")
    export = _read(run_dir, "export.json")
    bench = {}
    for p in sorted((run_dir / "bench").glob("*.json")):
        b = json.loads(p.read_text())
        for r in b["results"]:
            r.pop("latencies_ms", None)
        bench[b["target"]] = b
    summary = {}
    for target, b in bench.items():
        by = {(r["model"], r["format"]): r for r in b["results"]}
        t = by.get(("teacher", "onnx_fp32"))
        s = by.get(("student", "onnx_fp32"))
        q = by.get(("student", "onnx_int8"))
        if t and s:
            summary[target] = {"student_over_teacher_p50": s["latency_ms"]["p50"] / t["latency_ms"]["p50"]}
            if "rmse" in s:
                summary[target]["int8_rmse_over_fp32_rmse"] = (q["rmse"] / s["rmse"]) if q and "rmse" in q else None
            elif "accuracy" in s:
                summary[target]["int8_accuracy_minus_fp32"] = (q["accuracy"] - s["accuracy"]) if q else None
    return {
        "pocketkd_version": pipeline.__version__,
        "versions": versions(),
        "constraints": constraints_info(),
        "host_int8": export.get("host_int8"),
        "calibration": export.get("calibration"),
        "verdicts": file_verdicts(export, bench, student.get("test") or {}),
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "data": data,
        "teacher": {k: teacher.get(k) for k in ("params", "hidden", "loss", "test", "origin", "srl")}
        | {"best_epoch": (teacher.get("history") or {}).get("best_epoch")},
        "students": {
            name: {k: v for k, v in m.items() if k != "history"} | {"best_epoch": m["history"]["best_epoch"]}
            for name, m in distill.get("methods", {}).items()
        },
        "sizes": {k: distill.get(k) for k in ("teacher_params", "student_params", "deployed_params")},
        "deployed": student,
        "export": export,
        "bench": bench,
        "summary": summary,
    }


def tables(rep: dict) -> list[Table]:
    out: list[Table] = []
    task = _task(rep)
    (k1, c1), (k2, c2) = _cols(task)
    t = rep["teacher"]
    rows = [[f"teacher ({t.get('origin') or 'PyTorch'})", _f(t["params"]), "–", _f(_metric(t["test"], k1)), _f(_metric(t["test"], k2)), "–",
             "–"]]
    for name, m in rep["students"].items():
        rows.append([
            f"student `{name}`" + (" (deployed)" if m.get("deployed") else ""),
            _f(rep["sizes"]["student_params"]),
            "label",
            _f(_metric(m["test_label_head"], k1)),
            _f(_metric(m["test_label_head"], k2)),
            _f(_metric(m.get("test_teacher_head"), k1)),
            _f(m.get("samples_used_share_mean"), 3),
        ])
    out.append(("Accuracy on the clean test set (PyTorch)",
                ["model", "params", "head", c1, c2, f"teacher-head {c1}", "samples back-propagated (share)"], rows))
    if task == "classification":
        covs = ["100", "95", "90", "80", "70", "50"]
        rows = [["teacher", "softmax confidence", *(_f(t["test"]["risk_softmax"][c], 3) for c in covs)]]
        for name, m in rep["students"].items():
            h = m["test_label_head"]
            rows.append([name, "softmax confidence", *(_f(h["risk_softmax"][c], 3) for c in covs)])
            if "risk_abstain" in h:
                rows.append([name, "abstain output (gambler)", *(_f(h["risk_abstain"][c], 3) for c in covs)])
        out.append(("Selective risk (error rate on the kept samples) at each coverage, clean test set",
                    ["model", "abstains on", *(c + " %" for c in covs)], rows))
    vs = ("accuracy_drop_vs_torch", "accuracy drop vs torch") if task == "classification" else (
        "rmse_ratio_vs_torch", "RMSE / torch")
    header = ["model", "format", "batch", "file", "bytes", "status", "max abs diff vs torch", c1,
              vs[1], "NNAPI as is", "builtin ops only", "note"]

    def export_rows(rows):
        return [[r["model"], r["format"], str(r.get("batch", "")), r.get("file", "–"), _f(r.get("size_bytes")),
                 r["status"], _f(r.get("max_abs_diff_vs_torch"), 3), _f(r.get(k1)),
                 _f(r.get(vs[0]), 3), (r.get("mobile_usability") or {}).get("nnapi", "–"),
                 {True: "yes", False: "NO"}.get(r.get("builtin_ops_only"), "–"),
                 (r.get("error") or "").strip().splitlines()[-1][:160] if r.get("error") else ""]
                for r in rows]

    out.append(("Exported files (dynamic batch): each run in its runtime and compared with PyTorch", header,
                export_rows(rep["export"].get("formats", []))))
    if rep["export"].get("android"):
        out.append(("Android bundle (android/, fixed shapes; see android/README.md)", header,
                    export_rows(rep["export"]["android"])))
    if rep.get("verdicts"):
        out.append(("Verdicts of the fp16 / int8 files (judged on ARM outputs when an ARM target ran them)",
                    ["file", "status", "measure", "value", "limit", "judged on"],
                    [[v["file"], v["status"], v.get("measure") or "–", _f(v.get("value"), 3), _f(v.get("limit"), 3),
                      v["judged_on"]] for v in rep["verdicts"]]))
    for target, b in rep["bench"].items():
        teacher_p50 = next((r["latency_ms"]["p50"] for r in b["results"]
                            if r["model"] == "teacher" and r["format"] == "onnx_fp32"), None)
        rows = []
        for r in b["results"]:
            lat = r["latency_ms"]
            floor = r["model"] == "floor"
            rows.append([r["model"] if not floor else "runtime floor (1 ReLU)", r["format"], r["runtime"],
                         _f(r["size_bytes"]), _f(_metric(r, k1)), _f(_metric(r, k2)),
                         _f(r.get("max_abs_diff_vs_host"), 3) if "max_abs_diff_vs_host" in r else "–",
                         _f(lat["p50"], 4), _f(lat["p90"], 4), _f(lat["p99"], 4), _f(lat["mean"], 4),
                         _f(teacher_p50 / lat["p50"], 3) + "x" if teacher_p50 and not floor else "–"])
        first = b["results"][0] if b["results"] else {}
        plat = first.get("platform", {})
        title = (f"Latency on `{target}`{' (EMULATED under qemu: not device latency; outputs are real ARM results)' if b.get('emulated') else ''}: "
                 f"{plat.get('machine', '?')}, {plat.get('cpu', '?')}, batch {first.get('batch')}, "
                 f"{first.get('threads')} thread(s), {first.get('runs')} timed runs after {first.get('warmup')} warm-up")
        out.append((title, ["model", "format", "runtime", "bytes", c1, c2, "max abs diff vs host",
                            "p50 ms", "p90 ms", "p99 ms", "mean ms", "speed-up vs teacher"], rows))
    return out


def to_markdown(rep: dict, tabs: list[Table], plots: list[str]) -> str:
    lines = [
        "# pocketkd report",
        "",
        f"pocketkd {rep['pocketkd_version']} · config hash `{rep['config_hash'][:12]}` · "
        + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "pocketkd"),
        "",
        f"Data: {rep['data'].get('function', '')}; sizes {rep['data'].get('sizes')}; "
        f"{'flipped' if _task(rep) == 'classification' else 'outlier'} labels {rep['data'].get('outliers')}.",
        "",
    ]
    for title, header, rows in tabs:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def to_html(rep: dict, tabs: list[Table], plots: list[str]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pocketkd report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
        "img{max-width:100%;border:1px solid #eee}</style></head><body>",
        "<h1>pocketkd report</h1>",
        f"<p>pocketkd {e(rep['pocketkd_version'])} · config hash <code>{e(rep['config_hash'][:12])}</code> · "
        + e(", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "pocketkd")) + "</p>",
        f"<p>Data: {e(str(rep['data'].get('function', '')))}</p>",
    ]
    for title, header, rows in tabs:
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c.replace('`', ''))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for p in plots:
        parts.append(f"<h2>{e(Path(p).stem)}</h2><img src='{e(p)}' alt='{e(Path(p).stem)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


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
    ax.set_xlabel("clean test label")
    ax.set_ylabel("prediction")
    ax.set_title("Predictions on the clean test set")
    ax.legend(fontsize=8)
    return fig


def _plot_coverage_risk(plt, splits, teacher_test, student_test, cfg):
    """Classification: selective risk against coverage, by softmax confidence and (gambler) the abstain output."""
    from pipeline.metrics import _softmax, selective_risk

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
    ax.set_title("Coverage-risk on the clean test set")
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


def make_plots(run_dir: Path, cfg: Config, rep: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.stages import load_model
    from pipeline.train import predict

    plots_dir = run_dir / "plots"
    made = []
    splits = Splits.load(run_dir / "data.npz")
    with np.load(run_dir / "teacher_preds.npz") as z:
        teacher_test = z["test"]
    student = load_model(run_dir / "student.pt", cfg)

    student_test = predict(student, splits.x["test"])
    if splits.task == "classification":
        fig = _plot_coverage_risk(plt, splits, teacher_test, student_test, cfg)
    elif splits.x_raw["test"].ndim == 2 and splits.x_raw["test"].shape[1] == 1:
        fig = _plot_fit_1d(plt, splits, teacher_test, student_test, cfg)
    else:
        fig = _plot_pred_vs_true(plt, splits, teacher_test, student_test, cfg)
    _savefig(fig, plots_dir / "fit.png")
    plt.close(fig)
    made.append("plots/fit.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    teacher = _read(run_dir, "teacher.json")
    if teacher.get("history"):
        axes[0].plot(teacher["history"]["train_loss"], label="train")
        axes[0].plot(teacher["history"]["val_loss"], label="val")
        axes[0].set_title(f"teacher ({teacher.get('loss', cfg.teacher.loss)} on noisy labels)")
    else:
        axes[0].set_title(f"teacher given, not trained here: {teacher.get('origin', '')}"[:70])
    for name, m in _read(run_dir, "distill.json").get("methods", {}).items():
        axes[1].plot(m["history"]["val_loss"], label=name)
    axes[1].set_title("students: validation loss of each method's objective")
    for a in axes:
        a.set_yscale("log")
        a.set_xlabel("epoch")
        a.legend(fontsize=8)
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


def write_report(run_dir: Path, cfg: Config) -> list[str]:
    rep = collect(run_dir, cfg)
    plots = make_plots(run_dir, cfg, rep)
    tabs = tables(rep)
    atomic_write_json(run_dir / "report.json", rep)
    atomic_write_text(run_dir / "report.md", to_markdown(rep, tabs, plots))
    atomic_write_text(run_dir / "report.html", to_html(rep, tabs, plots))
    return ["report.json", "report.md", "report.html", *plots]


def short_table(run_dir: Path) -> str:
    """The few lines the CLI prints at the end of a run: the task metric, size and p50 on each target."""
    rep = json.loads((run_dir / "report.json").read_text())
    (key, title), _ = _cols(_task(rep))
    targets = list(rep["bench"])
    by = {t: {(r["model"], r["file"]): r for r in b["results"]} for t, b in rep["bench"].items()}
    short = {t: ("qemu-arm64*" if b.get("emulated") else t)[:12] for t, b in rep["bench"].items()}
    head = f"{'model / file':<46}{title:>9}{'bytes':>10}" + "".join(f"{'p50 ms ' + short[t]:>20}" for t in targets)
    lines = [head]

    def p50s(model, file):
        return "".join(f"{by[t][(model, file)]['latency_ms']['p50']:>20.4f}" if (model, file) in by[t]
                       else f"{'–':>20}" for t in targets)

    t = rep["teacher"]
    lines.append(f"{'teacher.onnx':<46}{t['test'][key]:>9.4f}{'':>10}" + p50s("teacher", "teacher.onnx"))
    for name, m in rep["students"].items():
        if not m.get("deployed"):
            lines.append(f"{'student ' + name + ' (PyTorch, baseline)':<46}{m['test_label_head'][key]:>9.4f}")
    method = rep["config"]["distill"]["method"]
    for r in rep["export"].get("formats", []):
        if r["model"] == "student" and key in r:
            lines.append(f"{'student ' + method + ' ' + r['file']:<46}{r[key]:>9.4f}{r['size_bytes']:>10}"
                         + p50s("student", r["file"]))
    if any(b.get("emulated") for b in rep["bench"].values()):
        lines.append("* emulated under qemu: latency is not device latency; accuracy is from ARM outputs")
    if rep.get("verdicts") is not None:
        lines.append(summary_line(rep["verdicts"]))
    return "\n".join(lines)
