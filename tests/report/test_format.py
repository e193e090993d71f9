"""``lib.report.format``: numbers and tables for reading.
"""

from __future__ import annotations

import pandas as pd

from lib.report import format, stability


def test_fmt_num_reads_well():
    assert format.fmt_num(482.73) == "483"
    assert format.fmt_num(48.27) == "48.3"
    assert format.fmt_num(0.02811) == "0.0281"
    assert format.fmt_num(12345.6) == "12,346"
    assert format.fmt_num(None) == "–"
    assert format.fmt_num(float("nan")) == "–"
    assert format.fmt_num(3) == "3"
    assert format.fmt_num(1.37e-6) == "1.37e-06"
    assert format.fmt_num(0.000263) == "0.000263"
    assert format.fmt_pct(0.0523) == "5.2%"


def test_table_hides_index_and_shows_missing_as_dash(gpu_run):
    html = format.table(stability.failures_table(gpu_run)).to_html()
    assert "None" not in html and ">nan<" not in html.lower()
    assert "–" in html
    assert "row_heading" not in html  # the index is hidden


def test_an_empty_table_says_none_unless_its_section_already_says_why():
    empty = pd.DataFrame()
    assert "(none)" in format.table(empty).to_html()
    blank = format.table(empty, when_empty=None)  # e.g. the load section of a run with LOAD=none
    assert blank._repr_markdown_() == ""
    assert "(none)" not in format.table(pd.DataFrame({"a": [1]}), when_empty=None).to_html()
