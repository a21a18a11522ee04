"""Stage ``export``: every format of the deployed student (dynamic batch), the teacher's ONNX for the
bench, and the fixed-shape Android bundle; every file run and checked against PyTorch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from export import conversion_cache, converter
from export.converter_child import WARM
from export.floor import warm_floor_conversion
from export.formats import FORMATS, ExportJob, export_rows, prefetch_tflite, raise_on_strict
from export.android import write_bundle
from export.format_table import REFERENCE
from export.checks import add_file_checks, non_finite_rows
from export.int8_arith import host_int8_profile, profile_fingerprint
from models.deploy import ClipOutputs, mobile_friendly
from pipeline import qat
from pipeline.checkpoints import load_checkpoint
from pipeline.config import Config
from pipeline.data import DATASETS, OUTPUT_MEANING, Splits
from pipeline.errors import ParityError
from pipeline.io import atomic_copy, atomic_write_json, sha256_file
from pipeline.methods import METHODS
from pipeline.metrics import max_abs_diff, parity_bound
from pipeline.runner import Context
from pipeline.stages.common import deployed_abstains, dims
from pipeline.train import predict
from pipeline.version import __version__

log = logging.getLogger(__name__)


def export_metadata(cfg: Config, splits: Splits, batch: int | None) -> dict:
    """The one metadata dict of an exported student (Ultralytics-style): embedded in every file."""
    return {
        "producer": "pocketkd",
        "pocketkd_version": __version__,
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
        "output_columns": output_columns(cfg, splits),
        **({"output_clipping": {"min": label_range(splits)[0], "max": label_range(splits)[1],
                                "applies_to": "the first outputs (one per label); inside the model"}}
           if cfg.export.clip_outputs and splits.task == "regression" else {}),
        # feature order, standardisation, one-hot categories, label scale: how an app builds an input
        # from a raw record (pipeline/data/preprocessing.py; also in data.json)
        **({"preprocessing": splits.preprocessing} if splits.preprocessing else {}),
    }


def output_columns(cfg: Config, splits: Splits) -> list[dict]:
    """Every column of the deployed student's output, in order: name, unit and meaning (from the data
    set's table row; your own data: its label columns), then the method's extra outputs (the
    gambler's abstain logit, or a log-variance per regression output)."""
    if DATASETS[cfg.data.name].keys == ("source",):  # your data: the label columns the data stage saved
        cols = [{"name": n, "unit": "as in your data", "meaning": f"label column {n}"}
                for n in splits.output_names or []]  # (not read from data.source again: not in this slice)
    else:
        cols = [{"name": o.name, "unit": o.unit, "meaning": o.meaning}
                for o in DATASETS[cfg.data.name].outputs(cfg.data)]
    if len(cols) != splits.out_features:  # a data set whose outputs the table cannot know: name them by index
        names = splits.output_names or [f"output_{k}" for k in range(splits.out_features)]
        unit = "radians" if splits.angles else "label units"
        cols = [{"name": n, "unit": unit, "meaning": f"output {n}"} for n in names]
    if splits.angles:
        cols = [{**c, "unit": "radians"} for c in cols]
    if not deployed_abstains(cfg):
        return cols
    if splits.task == "classification":
        return cols + [{"name": "abstain", "unit": "logit", "meaning": "the gambler's abstain option: predict the "
                        "argmax of the other logits; abstain when softmax(all logits)[abstain] is high"}]
    return cols + [{"name": f"log_var_{c['name']}", "unit": f"log(({c['unit']})^2)",
                    "meaning": f"log-variance of {c['name']}: abstain when it is high"} for c in cols]


def label_range(splits: Splits) -> tuple[list[float], list[float]]:
    """Per label, the smallest and largest training label (as training saw them): export.clip_outputs."""
    y = splits.y["train"]
    return [float(v) for v in y.min(axis=0)], [float(v) for v in y.max(axis=0)]


def given_teacher_row(cfg: Config, teacher_info: dict, src: Path, out_dir: Path) -> dict:
    """The teacher you gave as ONNX, copied as teacher.onnx for the bench, with the test metrics the
    teacher stage measured on this very file."""

    path = atomic_copy(src, out_dir / "teacher.onnx")
    return {"format": REFERENCE, "model": "teacher", "runtime": "onnxruntime", "precision": "fp32",
            "strict": False, "batch": "as given", "file": path.name, "size_bytes": path.stat().st_size,
            "sha256": sha256_file(path), "status": "ok", "input": cfg.teacher.onnx_input, "origin": "given",
            **teacher_info["test"]}


def export_student(cfg: Config, run_dir: Path, out_dir: Path, formats: list[str], android: bool) -> dict:
    """Export the deployed student (and the teacher, ONNX only, for the bench): server files with a
    dynamic batch axis into ``out_dir``, the fixed-shape Android bundle into ``out_dir/android``."""

    splits = Splits.load(run_dir / "data.npz")
    shape, _ = dims(splits)
    export_cfg = cfg.export
    if qat.applies(cfg) and export_cfg.int8.prepare:  # re-rounding a QAT'd student would undo its learned grid
        export_cfg = export_cfg.model_copy(update={"int8": export_cfg.int8.model_copy(update={"prepare": False})})

    rewrites = {}

    def deployable(model_file):
        """The model as exported: hard-sigmoid / hard-swish as ReLU6 arithmetic (models.deploy), checked
        against the trained model here so the files' parity with PyTorch still holds for the original."""
        original = load_checkpoint(run_dir / model_file, cfg)
        model = mobile_friendly(original)
        if model is not original:
            ref = predict(original, splits.x["test"])
            diff = max_abs_diff(predict(model, splits.x["test"]), ref)
            rewrites[model_file] = {"rewrite": "hard-sigmoid/hard-swish as ReLU6", "max_abs_diff": diff}
            if not diff <= parity_bound(cfg.export.parity_atol, ref):  # NaN fails too
                raise ParityError(f"{model_file}: the ReLU6 form of hard-sigmoid/hard-swish differs from the trained "
                                  f"model by {diff:.3g} > export.parity_atol={cfg.export.parity_atol:g}")
        if cfg.export.clip_outputs and model_file == "student.pt" and splits.task == "regression":
            model = ClipOutputs(model, *label_range(splits)).eval()
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

    result = {"parity_atol": cfg.export.parity_atol, "limits": cfg.export.limits.model_dump(),
              "host_int8": host_int8_profile()}
    before = conversion_counts()
    # one converter child for every TFLite conversion and check of this export
    with converter.session(warm=WARM[cfg.export.tflite.converter]):
        student_job = job("student.pt", "student", out_dir, None)
        prefetch_tflite(student_job, formats)  # converts in the background from here on
        if android:
            a = cfg.export.android
            bundle_formats = cfg.export.bundle_formats()
            bundle_dir = out_dir / "android"
            bundle_job = job("student.pt", "student", bundle_dir, a.batch)
            prefetch_tflite(bundle_job, bundle_formats)
        result["calibration"] = student_job.calibration_info()
        # the rows the converter child makes come last: the others, the teacher's included, are made
        # and checked while it converts
        student_rows = export_rows(student_job, _not_tflite(formats))
        teacher_info = json.loads((run_dir / "teacher.json").read_text())
        if teacher_info.get("model_file") == "teacher_given.onnx":
            teacher_rows = [given_teacher_row(cfg, teacher_info, run_dir / "teacher_given.onnx", out_dir)]
        else:
            teacher_rows = export_rows(job("teacher.pt", "teacher", out_dir, None), [REFERENCE])
        if android:
            bundle_rows = export_rows(bundle_job, _not_tflite(bundle_formats))
        result["formats"] = _in_order(student_rows + export_rows(student_job, _tflite(formats)), formats)
        raise_on_strict(result["formats"])
        raise_on_strict(teacher_rows)
        result["formats"] += teacher_rows
        groups = [(out_dir, result["formats"])]
        if android:
            rows = _in_order(bundle_rows + export_rows(bundle_job, _tflite(bundle_formats)), bundle_formats)
            raise_on_strict(rows)
            groups.append((bundle_dir, rows))
            result["android"] = rows
        _file_checks(groups)
        if _tflite(formats) and cfg.export.tflite.converter == "onnx2tf":
            try:  # the bench's LiteRT floor, converted while TensorFlow is loaded (into the conversion cache)
                warm_floor_conversion()
            except Exception as exc:  # the bench converts it itself (and says so if that fails)
                log.debug("floor conversion not warmed: %s", exc)
    result["conversions"] = conversion_counts(before)
    if android:
        write_bundle(bundle_dir, result["android"], export_metadata(cfg, splits, cfg.export.android.batch))
    if rewrites:
        result["deploy_rewrites"] = rewrites
    return result


def _tflite(names: list[str]) -> list[str]:
    return [n for n in names if FORMATS[n].runtime == "litert"]


def _not_tflite(names: list[str]) -> list[str]:
    return [n for n in names if FORMATS[n].runtime != "litert"]


def _in_order(rows: list[dict], names: list[str]) -> list[dict]:
    return sorted(rows, key=lambda r: names.index(r["format"]))


def conversion_counts(since: dict | None = None) -> dict:
    """Conversions answered by the cache, made (and stored), damaged entries re-made, converter
    children started: in this process, or since ``since``."""
    now = {"cache_hits": conversion_cache.STATS["hits"], "made": conversion_cache.STATS["made"],
           "cache_damaged": conversion_cache.STATS["corrupt"], "converter_children": converter.STARTS}
    return {k: v - (since or {}).get(k, 0) for k, v in now.items()}


def _file_checks(groups: list[tuple[Path, list[dict]]]) -> None:
    """onnx.checker (full_check) on every .onnx, tf.lite.Interpreter on every .tflite, finite outputs
    everywhere: a strict file that fails, or any file with NaN/inf outputs, stops the export."""

    add_file_checks(groups)
    rows = [r for _, rs in groups for r in rs]
    if bad := non_finite_rows(rows):
        raise ParityError(f"export: NaN or infinite outputs from {', '.join(bad)} on the test inputs")
    if bad := [r for r in rows if r["strict"] and r["status"] not in ("ok", "not_supported")]:
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
        written += [f"android/{p.relative_to(bundle)}" for p in bundle.rglob("*")
                    if p.suffix in (".json", ".md", ".config", ".kt")]
    if ctx.path("required_operators.config").exists():
        written.append("required_operators.config")
    return sorted(set(written)) + ["export.json"]


def export_environment(cfg: Config) -> str:
    """The host's int8 arithmetic (CPU flags, measured saturation): host-kernel columns depend on it."""

    return profile_fingerprint(host_int8_profile())
