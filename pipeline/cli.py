"""Command line: ``python -m pipeline run|stages|report|export|predict|cache|config``.

Library code logs; this module decides what the person sees. User mistakes (bad config, missing
files) print one line and exit with code 2; a failed parity check exits with code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.errors import ParityError, UserError, os_error_text

log = logging.getLogger("pipeline")
EXIT_STRICT = 3  # --strict and a file over its limit (or not exported)


def _setup_logging(verbose: bool) -> None:
    # Our packages talk at INFO; third-party libraries only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for ours in ("pipeline", "models", "export", "device_bench"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one ``error:`` line (exit 2), like every other user mistake."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {' '.join(message.split())}; see {self.prog} --help")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (default: the shipped default run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set distill.method=kd (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.stages import STAGES

    names = ", ".join(s.name for s in STAGES)
    ap = OneLineParser(prog="python -m pipeline", description="pocketkd: distil, export, benchmark.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (finished stages are skipped)")
    _add_config_args(run)
    run.add_argument("--out", "-o", default="runs/default", help="run directory (default: runs/default)")
    run.add_argument("--force", action="store_true",
                     help="run every stage even if cached; also lets a run into a non-empty directory that is "
                          "not a pocketkd run")
    run.add_argument("--from", dest="start", metavar="STAGE", help=f"re-run from this stage on ({names})")
    run.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    run.add_argument("--strict", action="store_true",
                     help=f"exit {EXIT_STRICT} when any exported file is over its limit or failed to export")

    sub.add_parser("stages", help="list the stages in order")

    rep = sub.add_parser("report", help="rebuild the report of an existing run directory")
    rep.add_argument("--run", required=True, help="run directory")

    exp = sub.add_parser("export", help="export an already-trained student (no retraining)")
    exp.add_argument("--run", required=True, help="run directory holding student.pt, teacher.json, data.npz")
    exp.add_argument("--formats", nargs="+", metavar="FORMAT", help="formats to write (default: the run's config)")
    exp.add_argument("--out", help="output directory (default: the run directory)")
    exp.add_argument("--no-android", action="store_true", help="skip the Android bundle")

    pred = sub.add_parser("predict", help="raw CSV rows -> the run's preprocessing -> an exported file -> predictions")
    pred.add_argument("--run", required=True, help="run directory (its data.json holds the preprocessing)")
    pred.add_argument("--csv", required=True, help="CSV with the run's feature columns (labels not needed)")
    pred.add_argument("--file", help="exported file: a name in the run (e.g. student_int8_io.tflite, "
                                     "android/student_fp32.tflite) or a path (default: student.onnx)")
    pred.add_argument("--out", help="write the predictions here (CSV; default: standard output)")

    cache = sub.add_parser("cache", help="the conversion cache shared by every run (info, clear)")
    cache.add_argument("action", choices=("info", "clear"),
                       help="info: path, entries and size; clear: remove every entry")

    cfg = sub.add_parser("config", help="print the resolved config, data keys of the chosen data set only "
                                        "(or the key reference)")
    _add_config_args(cfg)
    cfg.add_argument("--reference", action="store_true", help="print the Markdown reference of every key")
    return ap


def cmd_run(args) -> int:
    from pipeline import distributed
    from pipeline.api import run

    if args.start and args.only:
        raise UserError(f"--from {args.start} and --only {' '.join(args.only)} conflict: --from re-runs that stage "
                        "and every later one, --only runs just the named stages; give one of them")
    rep = run(args.config, args.out, args.overrides, force=args.force, start=args.start, only=args.only)
    if not distributed.is_main():  # under torchrun: rank 0 prints the results
        return 0
    print()
    print("stages: " + ", ".join(f"{r.name} ({r.status}{f' {r.seconds:.1f}s' if r.status == 'ran' else ''})"
                                 for r in rep.stages))
    if rep.data:
        print(rep.short_table())
        print(f"\nreport: {rep.run_dir / 'report.md'}  (also report.html, report.json, plots/)")
        return strict_exit(rep.run_dir) if args.strict else 0
    return 0


def strict_exit(run_dir: Path) -> int:
    """--strict: EXIT_STRICT when a verdict of the report is over_limit, failed or export_failed."""
    import json

    from pipeline.report.verdicts import count

    bad = sum(count(json.loads((run_dir / "report.json").read_text()).get("verdicts", [])).values())
    if bad:
        print(f"error: --strict: {bad} exported file(s) over their limit or not exported (see the verdicts above)",
              file=sys.stderr)
        return EXIT_STRICT
    return 0


def _existing_run(raw: str) -> Path:
    """``--run DIR`` of report/export: an existing pocketkd run directory (read-only check)."""
    if not str(raw).strip():
        raise UserError("--run '': empty path; give a run directory, e.g. --run runs/default")
    run_dir = Path(raw)
    try:
        if run_dir.is_symlink() and not run_dir.exists():
            raise UserError(f"--run {run_dir}: dangling symlink or symlink loop; give a run directory")
        if not run_dir.exists():
            raise UserError(f"--run {run_dir}: does not exist; give a run directory (python -m pipeline run --out)")
        if not run_dir.is_dir():
            raise UserError(f"--run {run_dir}: not a directory; give a run directory")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a pocketkd run directory (no config.yaml)")
    except OSError as exc:
        raise UserError(f"--run {run_dir}: {os_error_text(exc)}") from None
    return run_dir


def cmd_report(args) -> int:
    from pipeline.config import load_config
    from pipeline.report import short_table, write_report

    run_dir = _existing_run(args.run)  # report is read-mostly: it takes no lock
    cfg = load_config(run_dir / "config.yaml")
    write_report(run_dir, cfg)
    print(short_table(run_dir))
    print(f"\nreport: {run_dir / 'report.md'}")
    return 0


def cmd_export(args) -> int:
    from export.format_table import FORMAT_NAMES
    from pipeline.config import load_config
    from pipeline.io import atomic_write_json, sha256_file
    from pipeline.config.slice import ConfigSlice
    from pipeline.stages import STAGES
    from pipeline.stages.export import export_student
    from pipeline.rundir import RunLock, check_out_dir, make_dir, nearest_existing
    from pipeline.runner import Runner

    run_dir = _existing_run(args.run)
    for name in ("student.pt", "teacher.json", "data.npz"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name} is missing: run the pipeline up to the 'student' stage first")
    formats = args.formats
    for name in formats or []:
        if name not in FORMAT_NAMES:
            raise UserError(f"unknown format {name!r}; allowed: {', '.join(FORMAT_NAMES)}")
    manifest = Runner.load_manifest(run_dir)["files"]
    for name in ("student.pt", "teacher.json", "data.npz"):  # what export reads must be what the run wrote
        if name in manifest and sha256_file(run_dir / name) != manifest[name]["sha256"]:
            raise UserError(f"{run_dir / name} differs from what stage '{manifest[name]['stage']}' wrote (sha256 "
                            f"does not match manifest.json); re-run it: python -m pipeline run --out {run_dir} "
                            f"--from {manifest[name]['stage']}")
    export_stage = next(s for s in STAGES if s.name == "export")
    cfg = ConfigSlice(load_config(run_dir / "config.yaml"), export_stage.config)  # as the stage sees it
    same = not args.out or _same_dir(Path(args.out), run_dir)
    out_dir = run_dir if same else check_out_dir(args.out, force=True)
    new_out = not out_dir.exists()
    lock = RunLock(run_dir).acquire() if same else None  # writing into the run: one writer
    staging = None
    try:
        if new_out:  # a new --out (and its missing parents) appears only when the export succeeded
            staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp",
                                            dir=nearest_existing(out_dir.parent)))
        target = staging or out_dir
        result = export_student(cfg, run_dir, target, list(formats or cfg.export.formats),
                                cfg.export.android.enabled and not args.no_android)
        atomic_write_json(target / "export.json", result)
        if staging is not None:
            make_dir(out_dir.parent)
            os.replace(staging, out_dir)
            staging = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.release()
    key = "accuracy" if any("accuracy" in r for r in result["formats"]) else "rmse"
    print(f"{'model':<8} {'format':<22} {'file':<30} {'status':<14} {'max|diff|':>10} {key:>9}")
    for r in result["formats"] + result.get("android", []):
        where = "android/" if r in result.get("android", []) else ""
        print(f"{r['model']:<8} {r['format']:<22} {where + r.get('file', '-'):<30} {r['status']:<14} "
              f"{r.get('max_abs_diff_vs_torch', float('nan')):>10.2e} {r.get(key, float('nan')):>9.4f}")
    print(f"\nexport: {out_dir / 'export.json'}" + (f"; bundle: {out_dir / 'android'}" if "android" in result else ""))
    return 0


def cmd_predict(args) -> int:
    from pipeline.predict import predict_csv, summary, write_predictions

    run_dir = _existing_run(args.run)
    pred = predict_csv(run_dir, Path(args.csv), args.file)
    text = write_predictions(pred, args.out)
    for line in summary(pred, len(pred.values)) + ([f"predictions: {args.out}"] if args.out else []):
        print(line, file=sys.stderr)
    if not args.out:
        print(text, end="")
    return 0


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def cmd_config(args) -> int:
    import yaml

    from pipeline.config import config_reference, load_config

    if args.reference:
        print(config_reference(), end="")
        return 0
    from pipeline.data.table import applicable

    tree = load_config(args.config, args.overrides).to_dict()
    tree["data"] = applicable(tree["data"])  # only the keys the chosen data set reads
    print(yaml.safe_dump(tree, sort_keys=False), end="")
    return 0


def cmd_cache(args) -> int:
    """The conversion cache (export/conversion_cache.py): ``$POCKETKD_CONVERSION_CACHE``, else
    ``${POCKETKD_CACHE:-~/.cache/pocketkd}/conversions``."""
    from export.conversion_cache import ConversionCache

    cache = ConversionCache()
    if not cache.enabled:
        print("conversion cache: off (POCKETKD_CONVERSION_CACHE=off)")
        return 0
    if args.action == "clear":
        n = cache.clear()
        print(f"conversion cache {cache.dir}: removed {n} entries")
        return 0
    info = cache.info()
    print(f"path:    {info['path']}")
    print(f"entries: {info['entries']}" + (f" ({', '.join(f'{k} {v}' for k, v in info['kinds'].items())})"
                                           if info["kinds"] else ""))
    print(f"size:    {info['bytes'] / 1e6:.1f} MB ({info['bytes']:,} bytes)")
    return 0


def cmd_stages(args) -> int:
    from pipeline.stages import STAGES

    for i, s in enumerate(STAGES, 1):
        print(f"{i}. {s.name:<8} {s.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pipeline.procs import Terminated, raise_on_sigterm

    commands = {"run": cmd_run, "report": cmd_report, "config": cmd_config, "stages": cmd_stages,
                "export": cmd_export, "predict": cmd_predict, "cache": cmd_cache}
    raise_on_sigterm()  # SIGTERM unwinds like Ctrl-C: temp directories and the lock are released
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args.verbose)
        return commands[args.command](args)
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as exc:  # a user path we did not foresee: still one line
        if not getattr(exc, "filename", None) and not isinstance(exc, UnicodeDecodeError):
            raise
        where = getattr(exc, "filename", None) or "input"
        print(f"error: {where}: {os_error_text(exc)}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the first unfinished stage",
              file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; run the same command again to resume from the first unfinished stage", file=sys.stderr)
        return 143
