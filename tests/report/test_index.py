"""lib.report.index: reports/index.html lists every run newest first with status, device, a headline and a
link; runs without a report are listed (not hidden); an empty index says so."""

from __future__ import annotations

import re
import lib
from lib.report.index import run_status
from lib.report.render import render_index

from .fake_runs import make_fake_run


def _rows(page: str) -> list[str]:
    return re.findall(r"<tr><td>.*?</tr>", page, flags=re.S)


def test_index_lists_every_run_newest_first_with_status(tmp_path):
    reports = tmp_path / "reports"
    done = make_fake_run(reports, gpu=True, run_id="20260103-000000-cuda", failures=False)
    lib.load_run(done).to_parquet()
    (done / "report.html").write_text("<html></html>")
    stopped = make_fake_run(reports, gpu=False, run_id="20260105-000000-cpu", failures=False)  # no report
    broken = make_fake_run(reports, gpu=False, run_id="20260101-000000-cpu", failures=False)
    (broken / "export.failed.json").write_text('{"error": "x"}')
    assert (run_status(done), run_status(stopped), run_status(broken)) == ("complete", "interrupted", "failed")

    page = render_index(reports).read_text()
    rows = _rows(page)
    assert [re.search(r"2026\d{4}-\d{6}-\w+", r).group(0) for r in rows] == [
        "20260105-000000-cpu", "20260103-000000-cuda", "20260101-000000-cpu"]  # newest first, across models
    assert "interrupted" in rows[0] and "no report" in rows[0] and "href" not in rows[0]
    assert 'href="tiny_cnn/20260103-000000-cuda/report.html"' in rows[1] and "complete" in rows[1]
    assert "NVIDIA H100" in rows[1] and re.search(r"\d ms at batch 1", rows[1])  # device and headline
    assert "failed" in rows[2]


def test_a_crashed_backend_shows_in_a_complete_runs_status(tmp_path):
    run = make_fake_run(tmp_path / "reports", gpu=True, failures=True)  # ort/fp32 crashed
    (run / "report.html").write_text("<html></html>")
    n = len(list(run.glob("bench/*/notebook.failed.json"))) + (run / "export.failed.json").exists()
    assert n and run_status(run) == f"complete, {n} failed"


def test_an_empty_index_says_so(tmp_path):
    (tmp_path / "reports").mkdir()
    page = render_index(tmp_path / "reports").read_text()
    assert "No runs yet" in page and "make report" in page and "<table" not in page
