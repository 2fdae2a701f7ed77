"""The per-subject HTML report: one page, figures referenced from ``sub-X/figures/``."""

from __future__ import annotations

import datetime as _dt
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..atomic import atomic_path


@dataclass(frozen=True)
class Section:
    """One figure with a heading and a sentence saying what to look for; optionally a table of text
    cells under it (``table[0]``: the headings)."""

    title: str
    figure: Path
    caption: str
    table: Sequence[Sequence[str]] = ()


def _table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    lines = [f"<table><thead><tr>{cells}</tr></thead><tbody>"]
    lines += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(lines + ["</tbody></table>"])


def write_report(out_html: str | Path, subject: str, sections: list[Section], notes: list[str] = ()) -> Path:
    """Write ``sub-<subject>.html`` linking each figure by a path relative to the report."""
    out_html = Path(out_html)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>bids_phydiff: sub-{html.escape(subject)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
        "h2{border-bottom:1px solid #ccc;padding-top:.5em}figure{margin:0 0 1.5em 0}"
        "img{max-width:100%;background:#000}figcaption{font-size:.9em;color:#555}"
        "table{border-collapse:collapse;font-size:.9em;margin-bottom:1.5em}"
        "th,td{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}"
        "th:first-child,td:first-child{text-align:left}</style>",
        "</head><body>",
        f"<h1>sub-{html.escape(subject)}</h1>",
        f"<p>bids_phydiff {__version__}, {_dt.datetime.now().isoformat(timespec='seconds')}</p>",
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    for section in sections:
        rel = os.path.relpath(section.figure, out_html.parent)
        parts += [
            f"<h2>{html.escape(section.title)}</h2>",
            f'<figure><img src="{html.escape(rel)}" alt="{html.escape(section.title)}">',
            f"<figcaption>{html.escape(section.caption)}</figcaption></figure>",
        ]
        if section.table:
            parts.append(_table(section.table))
    parts.append("</body></html>")
    with atomic_path(out_html) as tmp:
        tmp.write_text("\n".join(parts) + "\n")
    return out_html
