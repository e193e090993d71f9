"""HTML output: an executed notebook as one self-contained page (code hidden, images embedded as data
URIs, no external scripts, styles or fonts), and an index of runs.

The page is nbconvert's "lab" template minus the scripts it would fetch from a CDN (RequireJS,
MathJax, Mermaid: the reports need none of them), plus a stylesheet for reading at a laptop's width
(wide tables scroll inside their own box) and a table of contents built from the h2/h3 headings.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from pathlib import Path

from ..common.cache import atomic_write_text, read_json
from .index import render_index as write_index

__all__ = ["render_report", "render_notebook", "render_index"]

_STYLE = """<style>
body { max-width: 1240px; margin: 0 auto; box-sizing: border-box; }
.jp-Notebook { padding: 0 !important; }
/* the body is the notebook element: its own padding keeps text off the window's edge on a narrow screen */
body.jp-Notebook { padding: 0 20px 60px !important; }
@media (max-width: 900px) { body.jp-Notebook { padding: 0 14px 40px !important; } }
.jp-Cell { padding: 0 !important; }
.jp-OutputArea-output { overflow-x: auto; max-width: 100%; }
.jp-RenderedHTMLCommon { padding-right: 0 !important; }
.jp-RenderedHTMLCommon table, table.bb-table { font-size: 12px; border-collapse: collapse; margin: 6px 0 14px; }
.jp-RenderedHTMLCommon th, .jp-RenderedHTMLCommon td { padding: 3px 8px; white-space: nowrap; }
.jp-RenderedHTMLCommon td { max-width: 640px; white-space: normal; }
.jp-RenderedHTMLCommon thead th { position: sticky; top: 0; background: #f3f5f7; }
.jp-RenderedHTMLCommon h1 { font-size: 26px; margin-top: 18px; }
.jp-RenderedHTMLCommon h2 { font-size: 21px; margin-top: 34px; border-bottom: 1px solid #e1e4e8; padding-bottom: 4px; }
.jp-RenderedHTMLCommon h3 { font-size: 16px; margin-top: 22px; }
.jp-RenderedHTMLCommon p, .jp-RenderedHTMLCommon li { font-size: 14px; line-height: 1.5; max-width: 1100px; }
.jp-RenderedHTMLCommon pre { white-space: pre-wrap; word-break: break-word; }
img { max-width: 100%; height: auto; }
.bb-toc { background: #f6f8fa; border: 1px solid #ddd; padding: 8px 18px; margin: 12px 0 20px; font-size: 14px;
          columns: 2; column-gap: 40px; }
.bb-toc > b { column-span: all; display: block; margin-bottom: 4px; }
.bb-toc ol { margin: 0; padding-left: 22px; }
.bb-toc ol ol { list-style: lower-alpha; font-size: 13px; }
.bb-toc li { margin: 2px 0; break-inside: avoid; }
a.anchor-link { display: none; }
</style>"""

# nbconvert's lab template without the scripts it loads from a CDN.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _heading_text(inner: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", inner)).replace("¶", "").strip()


def _add_toc(body: str) -> str:
    """A table of contents from the h2 (and nested h3) headings, with ids the links resolve to."""
    used: set[str] = set(re.findall(r'\bid="([^"]+)"', body))
    heads = []
    renamed: dict[str, str] = {}

    def ensure_id(m: re.Match) -> str:
        level, attrs, inner = m.group(1), m.group(2), m.group(3)
        found = re.search(r'\bid="([^"]+)"', attrs)
        if found and re.fullmatch(r"[A-Za-z0-9_.-]+", found.group(1)):
            hid = found.group(1)
        else:  # none, or one a link would have to percent-encode (nbconvert keeps "–" as %E2%80%93): a plain slug
            if found:
                attrs = attrs.replace(found.group(0), "")
            base = _slug(_heading_text(inner)) or f"section-{len(heads) + 1}"
            hid, k = base, 2
            while hid in used:
                hid, k = f"{base}-{k}", k + 1
            used.add(hid)
            attrs = f' id="{hid}"' + attrs
            if found:
                renamed[found.group(1)] = hid
        heads.append((int(level), hid, _heading_text(inner)))
        return f"<h{level}{attrs}>{inner}</h{level}>"

    body = re.sub(r"<h([23])((?:\s[^>]*)?)>(.*?)</h\1>", ensure_id, body, flags=re.S)
    for old, new in renamed.items():  # the headings' own anchor links
        body = body.replace(f'href="#{old}"', f'href="#{new}"')
    if not heads:
        return body
    items, open_sub = [], False
    for level, hid, text in heads:
        link = f"<a href=\"#{hid}\">{html.escape(text)}</a>"
        if level == 2:
            if open_sub:
                items.append("</ol></li>")
                open_sub = False
            elif items:
                items.append("</li>")
            items.append(f"<li>{link}")
        else:
            if not items:
                items.append("<li>")
            if not open_sub:
                items.append("<ol>")
                open_sub = True
            items.append(f"<li>{link}</li>")
    items.append("</ol></li>" if open_sub else "</li>")
    toc = f'<nav class="bb-toc" id="contents"><b>Contents</b><ol>{"".join(items)}</ol></nav>'
    first = re.search(r"<h2[\s>]", body)
    return body[:first.start()] + toc + body[first.start():]


def _strip_external(body: str) -> str:
    """Drop anything that would load from the network (the report must open offline)."""
    body = re.sub(r"<script[^>]*\bsrc=[\"']?https?://[^>]*>\s*</script>", "", body, flags=re.I)
    body = re.sub(r"<link[^>]*\bhref=[\"']?https?://[^>]*>", "", body, flags=re.I)
    return body


def render_notebook(nb_path: Path, out: Path, title: str | None = None) -> Path:
    """An executed notebook -> one self-contained HTML page at ``out`` (inputs hidden, TOC added)."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(nb_path, as_version=4)
    if title:
        nb.metadata["title"] = title
    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"benchbook.html.j2": _TEMPLATE})],
                            template_file="benchbook.html.j2")
    exporter.exclude_input = True
    # a notebook's opening cell says what it needs and does: for its reader in JupyterLab, not the report's
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"notebook-only"}), enabled=True)
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    body = _strip_external(body)
    body = body.replace("</head>", _STYLE + "</head>", 1)
    body = _add_toc(body)
    atomic_write_text(out, body)
    return out


def render_report(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    title = None
    try:
        params = read_json(run_dir / "params.json")
        title = f"{params['model']} — {run_dir.name} — benchbook report"
    except (OSError, ValueError, KeyError):
        pass
    return render_notebook(run_dir / "analysis.ipynb", run_dir / "report.html", title)


def render_index(reports_dir: Path) -> Path:
    """``reports/index.html`` (lib.report.index)."""
    return write_index(reports_dir)
