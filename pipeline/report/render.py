"""Rendering the tables to ``report.md`` and ``report.html``."""

from __future__ import annotations

import html
from pathlib import Path

from pipeline.report.tables import Table, _task, test_set_name


def data_line(rep: dict) -> str:
    """Where the data came from, split sizes, what is known about its labels, inputs beyond the
    training range: only what the run can know (your labels are as given)."""
    d = rep["data"]
    kind = "flipped" if _task(rep) == "classification" else "outlier"
    known = d.get("outliers_known", True)
    outliers = d.get("outliers") or {}
    if known:
        labels = f"{kind} labels {outliers}" + ("" if d.get("test_labels", "clean") == "clean" else
                                                " (injected here; the labels in your file are taken as given)")
    else:
        labels = f"{kind} labels in your file: unknown (labels taken as given; none injected)"
    text = f"{d.get('function', '')}; sizes {d.get('sizes')}; {labels}; evaluated on the {test_set_name(rep)}"
    if (oor := d.get("out_of_range_inputs")) is not None:
        text += ("; rows with a feature outside the training range: "
                 + ", ".join(f"{s} {n}" for s, n in oor.items()) if oor else "")
    return text + "."


def to_markdown(rep: dict, tabs: list[Table], plots: list[str]) -> str:
    lines = [
        "# pocketkd report",
        "",
        f"pocketkd {rep['pocketkd_version']} · config hash `{rep['config_hash'][:12]}` · "
        + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "pocketkd"),
        "",
        "Data: " + data_line(rep),
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
        f"<p>Data: {e(data_line(rep))}</p>",
    ]
    for title, header, rows in tabs:
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c.replace('`', ''))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    for p in plots:
        parts.append(f"<h2>{e(Path(p).stem)}</h2><img src='{e(p)}' alt='{e(Path(p).stem)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
