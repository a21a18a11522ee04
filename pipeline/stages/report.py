"""Stage ``report``: report.json for machines, report.md / report.html and plots for people."""

from __future__ import annotations

from pipeline.report import write_report
from pipeline.runner import Context


def stage_report(ctx: Context) -> list[str]:
    return write_report(ctx.run_dir, ctx.cfg)
