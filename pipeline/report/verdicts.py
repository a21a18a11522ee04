"""The verdict on each shipped fp16 / int8 file, and where it came from.

An int8 file is judged where it ships: on the outputs of an ARM bench target when one ran it
(qemu-aarch64 or an ssh board: real ARM onnxruntime / LiteRT, 32-bit int8 sums), else on the
export stage's check (exact int8 arithmetic for onnxruntime files, LiteRT on this host for TFLite
files), which is the same on every CPU. This host's own int8 kernels are reported beside it in
export.json (``host_kernels``) but never decide.
"""

from __future__ import annotations

ARM_MACHINES = ("aarch64", "arm64")


def _arm_results(bench: dict) -> dict[str, tuple[str, dict]]:
    """file -> (target, result) for every ARM target result that carries full accuracy metrics."""
    out = {}
    for target, b in bench.items():
        for r in b.get("results", []):
            machine = (r.get("platform") or {}).get("machine", "")
            if r.get("model") == "student" and machine in ARM_MACHINES and ("rmse" in r or "accuracy" in r):
                out.setdefault(r["file"], (target, r))
    return out


def _judge(metrics: dict, torch_test: dict, precision: str, limits: dict) -> dict:
    if "rmse" in metrics and torch_test.get("rmse"):
        limit = limits["fp16_rmse_ratio" if precision == "fp16" else "int8_rmse_ratio"]
        value = metrics["rmse"] / torch_test["rmse"]
        return {"measure": "RMSE / PyTorch student", "value": value, "limit": limit,
                "status": "ok" if value <= limit else "over_limit"}  # NaN is never <= limit: over
    if "accuracy" in metrics and "accuracy" in torch_test:
        limit = limits["fp16_accuracy_drop" if precision == "fp16" else "int8_accuracy_drop"]
        value = torch_test["accuracy"] - metrics["accuracy"]
        return {"measure": "accuracy drop vs PyTorch student", "value": value, "limit": limit,
                "status": "ok" if value <= limit else "over_limit"}
    return {"measure": None, "value": None, "limit": None, "status": "failed"}


def file_verdicts(export: dict, bench: dict, torch_test: dict) -> list[dict]:
    """One verdict per student file that has a limit (fp16, int8) or failed to export."""
    limits = export.get("limits", {})
    arm = _arm_results(bench)
    verdicts = []
    for where, rows in (("", export.get("formats", [])), ("android/", export.get("android", []))):
        for r in rows:
            if r.get("model") != "student" or (r.get("strict") and r.get("status") == "ok"):
                continue
            v = {"file": where + r.get("file", r["format"]), "format": r["format"], "precision": r["precision"],
                 "export_status": r["status"]}
            if r["status"] == "not_supported":  # the chosen converter cannot make it (export.tflite.converter)
                verdicts.append({**v, "status": "not_supported", "judged_on": "export stage",
                                 "error": (r.get("error") or "").strip().splitlines()[-1:]})
                continue
            if r["status"] in ("export_failed", "failed"):
                verdicts.append({**v, "status": r["status"], "judged_on": "export stage",
                                 "error": (r.get("error") or "").strip().splitlines()[-1:]})
                continue
            if not where and r.get("file") in arm:
                target, res = arm[r["file"]]
                verdicts.append({**v, **_judge(res, torch_test, r["precision"], limits),
                                 "judged_on": f"{target} outputs (ARM)"})
            else:
                verdicts.append({**v, **_judge(r, torch_test, r["precision"], limits),
                                 "judged_on": f"export check: {r.get('verdict_source', 'this host')}"})
    return verdicts


def count(verdicts: list[dict]) -> dict[str, int]:
    out = {"over_limit": 0, "export_failed": 0, "failed": 0}
    for v in verdicts:
        if v["status"] in out:
            out[v["status"]] += 1
    return out


def summary_line(verdicts: list[dict]) -> str:
    c = count(verdicts)
    if not any(c.values()):
        return f"verdicts: all {len(verdicts)} fp16/int8 files within their limits"
    parts = [f"{n} {k.replace('_', ' ')}" for k, n in c.items() if n]
    names = ", ".join(v["file"] for v in verdicts if v["status"] in c)
    return f"verdicts: {', '.join(parts)} of {len(verdicts)} fp16/int8 files ({names}); see report.md 'Verdicts'"
