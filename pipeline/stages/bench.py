"""Stage ``bench``: every exported file on every target: latency statistics, and accuracy from each
target's own outputs; fp32 outputs on other targets must match the host's."""

from __future__ import annotations

import json
import logging

import numpy as np

from device_bench.target_base import Job, TargetError
from device_bench.targets import parse_target
from export.floor import runtime_floor_models
from pipeline.config import Config
from pipeline.data import Splits
from pipeline.errors import ParityError
from pipeline.io import atomic_write_json
from pipeline.metrics import max_abs_diff, minus_floor, parity_bound, require_finite
from pipeline.runner import Context
from pipeline.stages.common import deployed_abstains, metrics_of
from pipeline.stages.export import export_environment

log = logging.getLogger(__name__)


def stage_bench(ctx: Context) -> list[str]:
    """Every exported file on every target: latency statistics, and accuracy from the target's own
    outputs; fp32 outputs on other targets must match the host's within ``bench.parity_atol``. Each
    target benches all files in one runner process (one login or emulator start), in turn."""

    cfg = ctx.cfg
    b = cfg.bench
    splits = Splits.load(ctx.path("data.npz"))
    rows = json.loads(ctx.path("export.json").read_text())["formats"]
    files = [r for r in rows if r.get("status") in ("ok", "over_limit")  # every file that runs
             and (not b.formats or r["format"] in b.formats or r["model"] == "teacher")]
    floors = runtime_floor_models(ctx.path("bench"), {r["runtime"] for r in files})  # floors of benched runtimes only
    written = [f["file"] for f in floors]
    targets = sorted(b.targets, key=lambda t: t != "host")  # host first: the others are compared with it
    host_out: dict[str, np.ndarray] = {}
    mismatches, failures = [], []
    for spec in targets:
        target = parse_target(spec)
        todo = files + floors
        jobs = [Job(ctx.path(r["file"]), bench_inputs(r, splits, target.emulated, b.emulated_teacher_rows))
                for r in todo]
        log.info("bench %s: %d files in one runner process", target.label, len(jobs))
        outcomes = target.run_many(jobs, threads=b.threads, warmup=b.warmup, runs=b.runs, batch=b.batch,
                                   max_seconds=b.max_seconds, timeout=max(600.0, 10 * b.max_seconds))
        results = []
        for r, job, res in zip(todo, jobs, outcomes):
            if isinstance(res, Exception):  # the others' results are kept; the stage fails below
                failures.append(str(res))
                continue
            out = np.asarray(res.pop("outputs"), dtype=np.float32)
            require_finite(out, f"bench: outputs of {r['file']} on target {spec}")
            res.update(model=r["model"], format=r["format"], precision=r["precision"], file=r["file"])
            if r["model"] != "floor":
                partial = target.emulated and r["model"] == "teacher"  # accuracy of the teacher is not the claim
                if not partial:
                    res.update(metrics_of(cfg, splits, out, abstain=deployed_abstains(cfg) and r["model"] == "student"))
                else:
                    res["eval_rows"] = len(job.x)
                if spec == "host":
                    host_out[r["file"]] = out
                elif r["file"] in host_out:
                    ref = host_out[r["file"]][: len(out)]
                    res["max_abs_diff_vs_host"] = max_abs_diff(out, ref)
                    res["parity_bound"] = parity_bound(b.parity_atol, ref)  # scales with the outputs' size
                    if r["precision"] == "fp32" and not res["max_abs_diff_vs_host"] <= res["parity_bound"]:
                        mismatches.append(f"{spec} {r['file']}: {res['max_abs_diff_vs_host']:.3g} "
                                          f"> {res['parity_bound']:.3g}")
            results.append(res)
            lat = res["latency_ms"]
            log.info("bench %-12s %-30s p50 %8.4f ms  p99 %8.4f ms%s", target.label, r["file"], lat["p50"],
                     lat["p99"], f"  rmse {res['rmse']:.4g}" if "rmse" in res else "")
        minus_floor(results)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.label.replace("://", "_"))
        rel = f"bench/{safe}.json"
        atomic_write_json(ctx.path(rel), {"target": target.label, "emulated": target.emulated, "results": results})
        written.append(rel)
    if failures:
        raise TargetError("; ".join(failures) if len(failures) == 1 else
                          f"{len(failures)} files failed to bench: " + "; ".join(failures))
    if mismatches:
        raise ParityError(f"fp32 outputs differ from the host's by more than bench.parity_atol={b.parity_atol:g} "
                          "x max(1, |output|): "
                          + "; ".join(mismatches))
    return written


def bench_inputs(r: dict, splits: Splits, emulated: bool, emulated_teacher_rows: int) -> np.ndarray:
    """What a file is benched on: the test inputs (the data's own units for a given teacher that takes
    them); fewer rows for the teacher on an emulated target (its accuracy is not the claim); zeros
    for a floor model."""
    if r["model"] == "floor":
        return np.zeros((8, 1), np.float32)
    x = splits.x_raw["test"] if r.get("input") == "raw" else splits.x["test"]
    return x[:emulated_teacher_rows] if emulated and r["model"] == "teacher" else x


def bench_environment(cfg: Config) -> str:

    return "|".join(parse_target(spec).fingerprint() for spec in cfg.bench.targets) + "|" + export_environment(cfg)
