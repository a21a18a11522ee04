"""The report's tables, built once as rows (rendered to Markdown and HTML), and the CLI's short table."""

from __future__ import annotations

import json
from pathlib import Path

from export.format_table import REFERENCE
from pipeline.report.verdicts import summary_line

Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows)


def _f(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def test_set_name(rep: dict) -> str:
    """'clean test set' for the built-in data sets, 'test split (labels as given)' for your data."""
    return "clean test set" if rep["data"].get("test_labels", "clean") == "clean" else "test split (labels as given)"


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


def _xnnpack(x: dict | None) -> str:
    """'100/109 in 10 partitions (not: RELU_0_TO_1 x9)' for a TFLite row; '–' otherwise."""
    if not x or "nodes" not in x:
        return "–"
    text = f"{x['delegated']}/{x['nodes']}" + ("" if x["partitions"] == 1 else f" in {x['partitions']} partitions")
    if x["not_delegated"]:
        text += " (not: " + ", ".join(f"{op} x{n}" for op, n in x["not_delegated"].items()) + ")"
    return text


def _nnapi(r: dict) -> str:
    """ORT's checker ("as is: YES") for an ONNX / ORT row; the NNAPI delegate's summary for a TFLite row."""
    if (r.get("mobile_usability") or {}).get("nnapi"):
        return "as is: " + r["mobile_usability"]["nnapi"]
    return (r.get("nnapi_delegate") or {}).get("summary", "–")


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
    out.append((f"Accuracy on the {test_set_name(rep)} (PyTorch; teacher-head columns only for methods that train it)",
                ["model", "params", "head", c1, c2, f"teacher-head {c1}", "samples back-propagated (share)"], rows))
    if task == "classification":
        covs = ["100", "95", "90", "80", "70", "50"]
        rows = [["teacher", "softmax confidence", *(_f(t["test"]["risk_softmax"][c], 3) for c in covs),
                 _f(t["test"].get("aurc_softmax"), 4)]]
        for name, m in rep["students"].items():
            h = m["test_label_head"]
            rows.append([name, "softmax confidence", *(_f(h["risk_softmax"][c], 3) for c in covs),
                         _f(h.get("aurc_softmax"), 4)])
            if "risk_abstain" in h:
                rows.append([name, "abstain output (gambler)", *(_f(h["risk_abstain"][c], 3) for c in covs),
                             _f(h.get("aurc_abstain"), 4)])
        out.append((f"Selective risk (error rate on the kept samples) at each coverage, and the area under the "
                    f"risk-coverage curve (AURC, lower is better), {test_set_name(rep)}",
                    ["model", "abstains on", *(c + " %" for c in covs), "AURC"], rows))
    if rej := [(n, m["rejection"]) for n, m in rep["students"].items() if m.get("rejection")]:
        known = any("real_outliers" in r for _, r in rej)
        out.append(("Outlier rejection: training labels flagged by the teacher's residual (fixed before training)",
                    ["method", "threshold (label units)", "threshold (std units)", "flagged", "flagged share",
                     *(["real outliers", "flagged that are real", "real ones flagged"] if known else [])],
                    [[n, _f(r.get("threshold_label_units")), _f(r["threshold_std_units"]), _f(r["flagged"]),
                      _f(r["flagged_share"], 3),
                      *([_f(r.get("real_outliers")), _f(r["flagged_real"] / r["flagged"], 3) if r["flagged"] else "–",
                         _f(r["flagged_real"] / r["real_outliers"], 3) if r.get("real_outliers") else "–"]
                        if known else [])] for n, r in rej]))
    vs = ("accuracy_drop_vs_torch", "accuracy drop vs torch") if task == "classification" else (
        "rmse_ratio_vs_torch", "RMSE / torch")
    header = ["model", "format", "batch", "file", "bytes", "status", "max abs diff vs torch", c1,
              vs[1], "NNAPI", "builtin ops only", "XNNPACK nodes", "GPU delegate", "note"]

    def export_rows(rows):
        return [[r["model"], r["format"], str(r.get("batch", "")), r.get("file", "–"), _f(r.get("size_bytes")),
                 r["status"], _f(r.get("max_abs_diff_vs_torch"), 3), _f(r.get(k1)),
                 _f(r.get(vs[0]), 3), _nnapi(r),
                 {True: "yes", False: "NO"}.get(r.get("builtin_ops_only"), "–"), _xnnpack(r.get("xnnpack")),
                 (r.get("gpu_delegate") or "–").split(" (static")[0],
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
                            if r["model"] == "teacher" and r["format"] == REFERENCE), None)
        rows = []
        for r in b["results"]:
            lat = r["latency_ms"]
            floor = r["model"] == "floor"
            rows.append([r["model"] if not floor else "runtime floor (1 ReLU)", r["format"], r["runtime"],
                         _f(r["size_bytes"]), _f(_metric(r, k1)), _f(_metric(r, k2)),
                         _f(r.get("max_abs_diff_vs_host"), 3) if "max_abs_diff_vs_host" in r else "–",
                         _f(lat["p50"], 4), _f(r.get("p50_minus_floor_ms"), 4), _f(lat["p90"], 4), _f(lat["p99"], 4),
                         _f(lat["mean"], 4), _f(teacher_p50 / lat["p50"], 3) + "x" if teacher_p50 and not floor else "–"])
        first = b["results"][0] if b["results"] else {}
        plat = first.get("platform", {})
        title = (f"Latency on `{target}`{' (EMULATED under qemu: not device latency; outputs are real ARM results)' if b.get('emulated') else ''}: "
                 f"{plat.get('machine', '?')}, {plat.get('cpu', '?')}, batch {first.get('batch')}, "
                 f"{first.get('threads')} thread(s), {first.get('runs')} timed runs after {first.get('warmup')} warm-up")
        out.append((title, ["model", "format", "runtime", "bytes", c1, c2, "max abs diff vs host",
                            "p50 ms", "p50 − floor ms", "p90 ms", "p99 ms", "mean ms", "speed-up vs teacher"], rows))
    return out


def short_table(run_dir: Path) -> str:
    """The few lines the CLI prints at the end of a run: the task metric, size and p50 on each target."""
    rep = json.loads((run_dir / "report.json").read_text())
    (key, title), _ = _cols(_task(rep))
    targets = list(rep["bench"])
    by = {t: {(r["model"], r["file"]): r for r in b["results"]} for t, b in rep["bench"].items()}
    short = {t: ("qemu-arm64*" if b.get("emulated") else t)[:12] for t, b in rep["bench"].items()}
    # several outputs: each one's RMSE in its own unit, after the overall figure
    names = list(((rep["deployed"] or {}).get("test") or {}).get("per_output") or {})

    def per_output(m: dict | None) -> str:
        po = (m or {}).get("per_output") or {}
        return "".join(f"{po[n]['rmse']:>18.4f}" if n in po else f"{'–':>18}" for n in names)

    head = (f"{'model / file':<46}{title:>9}" + "".join(f"{n[:17]:>18}" for n in names) + f"{'bytes':>10}"
            + "".join(f"{'p50 ms ' + short[t]:>20}" for t in targets))
    lines = [head]

    def p50s(model, file):
        return "".join(f"{by[t][(model, file)]['latency_ms']['p50']:>20.4f}" if (model, file) in by[t]
                       else f"{'–':>20}" for t in targets)

    t = rep["teacher"]
    lines.append(f"{'teacher.onnx':<46}{t['test'][key]:>9.4f}{per_output(t['test'])}{'':>10}"
                 + p50s("teacher", "teacher.onnx"))
    for name, m in rep["students"].items():
        if not m.get("deployed"):
            lines.append(f"{'student ' + name + ' (PyTorch, baseline)':<46}{m['test_label_head'][key]:>9.4f}"
                         + per_output(m["test_label_head"]))
    method = rep["config"]["distill"]["method"]
    for r in rep["export"].get("formats", []):
        if r["model"] == "student" and key in r:
            lines.append(f"{'student ' + method + ' ' + r['file']:<46}{r[key]:>9.4f}{per_output(r)}"
                         f"{r['size_bytes']:>10}" + p50s("student", r["file"]))
    if any(b.get("emulated") for b in rep["bench"].values()):
        lines.append("* emulated under qemu: latency is not device latency; accuracy is from ARM outputs")
    if rep.get("verdicts") is not None:
        lines.append(summary_line(rep["verdicts"]))
    return "\n".join(lines)
