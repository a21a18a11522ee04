"""Command line: ``python -m pipeline run|stages|report|config``.

Library code logs; this module decides what the person sees. User mistakes (bad config, missing
files) print one line and exit with code 2; a failed parity check exits with code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.errors import ParityError, UserError

log = logging.getLogger("pipeline")
EXIT_STRICT = 3  # --strict and a file over its limit (or not exported)


def _setup_logging(verbose: bool) -> None:
    # Our packages talk at INFO; third-party libraries only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for ours in ("pipeline", "models", "export", "device_bench"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (default: the shipped default run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set distill.method=kd (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.stages import STAGES

    names = ", ".join(s.name for s in STAGES)
    ap = argparse.ArgumentParser(prog="python -m pipeline", description="pocketkd: distil, export, benchmark.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (finished stages are skipped)")
    _add_config_args(run)
    run.add_argument("--out", "-o", default="runs/default", help="run directory (default: runs/default)")
    run.add_argument("--force", action="store_true", help="run every stage even if cached")
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

    cfg = sub.add_parser("config", help="print the resolved config (or the key reference)")
    _add_config_args(cfg)
    cfg.add_argument("--reference", action="store_true", help="print the Markdown reference of every key")
    return ap


def cmd_run(args) -> int:
    from pipeline import distributed
    from pipeline.config import load_config
    from pipeline.report import short_table
    from pipeline.stages import check_model_sizes, default_runner, resolve_targets

    distributed.init_from_env()  # under torchrun: join the other ranks; only rank 0 logs at INFO
    cfg = load_config(args.config, args.overrides)  # validated before anything is written
    cfg, notes = resolve_targets(cfg)
    for note in notes:
        log.warning("%s", note)
    sizes = check_model_sizes(cfg)
    runner = default_runner()
    runner.select(args.start, args.only)  # unknown stage names fail before anything is written
    run_dir = Path(args.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory")
    log.info("run directory %s · teacher %d params · student %d params (deployed %d)", run_dir,
             sizes["teacher_params"], sizes["student_params"], sizes["deployed_params"])
    results, _ = runner.run(run_dir, cfg, force=args.force, start=args.start, only=args.only)
    if not distributed.is_main():  # under torchrun: rank 0 prints the results
        return 0
    print()
    print("stages: " + ", ".join(f"{r.name} ({r.status}{f' {r.seconds:.1f}s' if r.status == 'ran' else ''})"
                                 for r in results))
    if (run_dir / "report.json").exists():
        print(short_table(run_dir))
        print(f"\nreport: {run_dir / 'report.md'}  (also report.html, report.json, plots/)")
        return strict_exit(run_dir) if args.strict else 0
    return 0


def strict_exit(run_dir: Path) -> int:
    """--strict: EXIT_STRICT when a verdict of the report is over_limit, failed or export_failed."""
    import json

    from pipeline.verdicts import count

    bad = sum(count(json.loads((run_dir / "report.json").read_text()).get("verdicts", [])).values())
    if bad:
        print(f"error: --strict: {bad} exported file(s) over their limit or not exported (see the verdicts above)",
              file=sys.stderr)
        return EXIT_STRICT
    return 0


def cmd_report(args) -> int:
    from pipeline.config import load_config
    from pipeline.report import short_table, write_report

    run_dir = Path(args.run)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise UserError(f"{run_dir} is not a pocketkd run directory (no config.yaml)")
    cfg = load_config(cfg_file)
    write_report(run_dir, cfg)
    print(short_table(run_dir))
    print(f"\nreport: {run_dir / 'report.md'}")
    return 0


def cmd_export(args) -> int:
    from export import FORMATS
    from pipeline.config import load_config
    from pipeline.io import atomic_write_json
    from pipeline.stages import export_student

    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a pocketkd run directory (no config.yaml)")
    for name in ("student.pt", "teacher.json", "data.npz"):
        if not (run_dir / name).exists():
            raise UserError(f"{run_dir / name} is missing: run the pipeline up to the 'student' stage first")
    formats = args.formats
    for name in formats or []:
        if name not in FORMATS:
            raise UserError(f"unknown format {name!r}; allowed: {', '.join(FORMATS)}")
    cfg = load_config(run_dir / "config.yaml")
    out_dir = Path(args.out) if args.out else run_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = export_student(cfg, run_dir, out_dir, list(formats or cfg.export.formats),
                            cfg.export.android.enabled and not args.no_android)
    atomic_write_json(out_dir / "export.json", result)
    key = "accuracy" if any("accuracy" in r for r in result["formats"]) else "rmse"
    print(f"{'model':<8} {'format':<22} {'file':<30} {'status':<14} {'max|diff|':>10} {key:>9}")
    for r in result["formats"] + result.get("android", []):
        where = "android/" if r in result.get("android", []) else ""
        print(f"{r['model']:<8} {r['format']:<22} {where + r.get('file', '-'):<30} {r['status']:<14} "
              f"{r.get('max_abs_diff_vs_torch', float('nan')):>10.2e} {r.get(key, float('nan')):>9.4f}")
    print(f"\nexport: {out_dir / 'export.json'}" + (f"; bundle: {out_dir / 'android'}" if "android" in result else ""))
    return 0


def cmd_config(args) -> int:
    import yaml

    from pipeline.config import config_reference, load_config

    if args.reference:
        print(config_reference(), end="")
        return 0
    print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(), sort_keys=False), end="")
    return 0


def cmd_stages(args) -> int:
    from pipeline.stages import STAGES

    for i, s in enumerate(STAGES, 1):
        print(f"{i}. {s.name:<8} {s.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    commands = {"run": cmd_run, "report": cmd_report, "config": cmd_config, "stages": cmd_stages,
                "export": cmd_export}
    try:
        return commands[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume from the first unfinished stage",
              file=sys.stderr)
        return 130
