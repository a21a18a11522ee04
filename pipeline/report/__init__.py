"""The report: ``report.json`` for machines, ``report.md`` / ``report.html`` and ``plots/`` for people.

``collect`` gathers what the stages wrote, ``verdicts`` judges the fp16 / int8 files, ``tables``
builds the rows once, ``render`` writes them as Markdown and HTML, ``plots`` draws from the files
(the report never rebuilds a model or imports a stage).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.report.collect import collect
from pipeline.report.plots import make_plots
from pipeline.report.render import to_html, to_markdown
from pipeline.report.tables import short_table, tables

__all__ = ["collect", "short_table", "write_report"]


def write_report(run_dir: Path, cfg: Config) -> list[str]:
    rep = collect(run_dir, cfg)
    plots = make_plots(run_dir, cfg, rep)
    tabs = tables(rep)
    atomic_write_json(run_dir / "report.json", rep)
    atomic_write_text(run_dir / "report.md", to_markdown(rep, tabs, plots))
    atomic_write_text(run_dir / "report.html", to_html(rep, tabs, plots))
    return ["report.json", "report.md", "report.html", *plots]
