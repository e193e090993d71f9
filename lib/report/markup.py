"""Values interpolated into the report's Markdown, made inert.

Everything the report quotes from a run folder (model names, GPU and CPU names, exception text,
file paths, another run's fields in a comparison) is data that someone else may have written: a
``<script>`` or ``<img onerror=...>`` in it must reach the page as text, never as markup, and a
``[text](javascript:...)`` must not become a link. ``md(value)`` escapes HTML's specials and
backslash-escapes Markdown's inline punctuation; ``code(value)`` is for a value shown as code.
Tables are escaped separately (``lib.report.format.table`` formats cells with ``escape="html"``).
"""

from __future__ import annotations

import html
import re

__all__ = ["md", "code"]

# what can start inline markup anywhere in a line (links, emphasis, code, strikethrough); "<" and "&" are
# HTML-escaped instead (a backslash before an entity would show the entity's text). "_" is left alone: inside a
# word (sw_thermal, max_autotune) CommonMark never reads it as emphasis, and names are full of it.
_MD_SPECIAL = re.compile(r"([\\`*\[\]~])")
_BLOCK_START = "#-+>=!"  # would start a heading, list, quote or image at the start of a line


def md(value) -> str:
    """``value`` as plain text inside Markdown: no HTML, no links, no emphasis, on one line."""
    text = " ".join(str(value).split())  # a newline in a value would end a list item or start a block
    # escape Markdown first, then HTML (the entities html.escape writes contain no Markdown specials)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    if text[:1] in _BLOCK_START or re.match(r"\d+[.)]", text):
        text = "\\" + text if not text[:1].isdigit() else re.sub(r"^(\d+)([.)])", r"\1\\\2", text)
    return html.escape(text, quote=False)


def code(value) -> str:
    """``value`` as an inline code span. Markdown shows a code span's content literally (no HTML), so
    only a backtick inside could end it early: the fence is longer than any run of backticks inside."""
    text = " ".join(str(value).split())
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"
