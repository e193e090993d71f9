"""HTML output: the executed analysis notebook as one self-contained page (code hidden, images
embedded as data URIs, no external scripts or styles needed to read it), and an index of runs."""

from __future__ import annotations

import html
import re
from pathlib import Path

from .cache import atomic_write_text, read_json

__all__ = ["render_report", "render_index"]

_STYLE = """<style>
body { max-width: 1200px; margin: auto; }
.jp-OutputArea-output table, .dataframe { font-size: 12px; }
.bb-toc { background: #f6f8fa; border: 1px solid #ddd; padding: 8px 16px; margin: 12px 0; font-size: 14px; }
.bb-toc li { margin: 2px 0; }
img { max-width: 100%; height: auto; }
</style>"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _add_toc(body: str) -> str:
    """A table of contents from the h2 headings, with ids that the links resolve to."""
    heads = re.findall(r"<h2 id=\"([^\"]+)\"[^>]*>(.*?)</h2>", body, flags=re.S)
    if not heads:
        return body
    items = "".join(f'<li><a href="#{hid}">{re.sub("<[^>]+>", "", text).replace("¶", "").strip()}</a></li>'
                    for hid, text in heads)
    toc = f'<nav class="bb-toc"><b>Contents</b><ol>{items}</ol></nav>'
    first = body.find("<h2 ")
    return body[:first] + toc + body[first:]


def render_report(run_dir: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(run_dir / "analysis.ipynb", as_version=4)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    body = body.replace("</head>", _STYLE + "</head>", 1)
    body = _add_toc(body)
    out = run_dir / "report.html"
    atomic_write_text(out, body)
    return out


def render_index(reports_dir: Path) -> Path:
    rows = []
    for report in sorted(reports_dir.glob("*/*/report.html"), reverse=True):
        run_dir = report.parent
        try:
            params, plan = read_json(run_dir / "params.json"), read_json(run_dir / "plan.json")
        except (OSError, ValueError):
            continue
        gpu = ""
        for eng in sorted(run_dir.glob("bench/*/engine.json")):
            g = (read_json(eng).get("environment") or {}).get("gpu") or {}
            gpu = g.get("name") or ""
            break
        combos = ", ".join(f"{c['backend']}/{c['precision']}" for c in plan.get("combos", []))
        rows.append(f"<tr><td>{html.escape(params['model'])}</td><td><a href=\"{run_dir.relative_to(reports_dir)}/"
                    f"report.html\">{html.escape(run_dir.name)}</a></td><td>{html.escape(plan['device'])}</td>"
                    f"<td>{html.escape(gpu)}</td><td>{html.escape(str(plan['batch_sizes']))}</td>"
                    f"<td>{html.escape(', '.join(plan['shapes']))}</td><td>{html.escape(combos)}</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>benchbook runs</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style></head><body>"
            "<h1>benchbook runs</h1><table><tr><th>model</th><th>run</th><th>device</th><th>GPU</th>"
            "<th>batch sizes</th><th>shapes</th><th>backends</th></tr>" + "".join(rows) + "</table></body></html>")
    out = reports_dir / "index.html"
    atomic_write_text(out, page)
    return out
