"""Values from a run folder reach the report as text, never as markup (lib/report/markup.py and every place the
report, the comparison page and the index interpolate them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lib.report.markup import code, md

from .fake_runs import ROOT, make_fake_run
from .test_render import CHROMIUM, _render

PAYLOAD = "<img src=x onerror=alert(1)>"
LINK = "[click](javascript:alert(1))"


def test_md_makes_html_and_links_inert():
    import mistune

    for value in (PAYLOAD, "<script>alert(1)</script>", LINK, "a_b*c`d", "# heading", "1. item"):
        out = mistune.html(f"- **{md(value)}**")
        assert "<img" not in out and "<script" not in out and "<a " not in out and "<h1" not in out
        assert "<ol" not in out and "<em" not in out and "<code" not in out
    assert mistune.html(md("NVIDIA A100-SXM4-80GB (fp16)")).strip() == "<p>NVIDIA A100-SXM4-80GB (fp16)</p>"
    assert mistune.html(md(PAYLOAD)).strip() == "<p>&lt;img src=x onerror=alert(1)&gt;</p>"
    assert mistune.html(code("a`b <x>")).strip() == "<p><code>a`b &lt;x&gt;</code></p>"


def _poison(run: Path) -> None:
    """Put the payload wherever a run folder carries text someone else wrote."""
    params = json.loads((run / "params.json").read_text())
    params["model"] = f"tiny {PAYLOAD}"
    (run / "params.json").write_text(json.dumps(params))
    plan = json.loads((run / "plan.json").read_text())
    plan["skipped"][0]["reason"] = f"load.py raised ValueError: {PAYLOAD}"
    plan["shapes"] = [s for s in plan["shapes"]]
    (run / "plan.json").write_text(json.dumps(plan))
    (run / "export.failed.json").write_text(json.dumps({"error": f"load.py: ValueError: {PAYLOAD} {LINK}"}))
    for eng in run.glob("bench/*/engine.json"):
        e = json.loads(eng.read_text())
        e["environment"]["gpu"]["name"] = f"GPU {PAYLOAD}"
        e["environment"]["cpu"] = f"CPU {LINK}"
        e["environment"]["libraries"]["torch"] = f"2.9 {PAYLOAD}"
        e["reference"] = f"ref {PAYLOAD}"
        eng.write_text(json.dumps(e))
    for failed in run.glob("bench/*/notebook.failed.json"):
        failed.write_text(json.dumps({"error": f"load.py raised ValueError: {PAYLOAD}", "seconds": 1.0}))


def _assert_inert(text: str) -> None:
    assert not re.search(r"<img[^>]*onerror", text, flags=re.I), re.findall(r".{80}<img[^>]*onerror.{40}", text)
    assert not re.search(r"href=[\"']?javascript:", text, flags=re.I)
    assert "&lt;img src=x onerror=alert(1)&gt;" in text  # shown, as text


def _dom(page: Path) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp}",
                               "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=120)
    return proc.stdout


@pytest.mark.slow
def test_report_shows_foreign_text_as_text(tmp_path):
    run = make_fake_run(tmp_path, gpu=True)
    _poison(run)
    page = _render(run)
    text = page.read_text()
    _assert_inert(text)
    if CHROMIUM:  # as a browser builds the page: no element came from the payload
        dom = _dom(page)
        assert dom and not re.search(r"<img[^>]*src=\"x\"", dom)
        assert not re.search(r"<[a-zA-Z][^>]*\sonerror\s*=", dom)  # no element carries the handler


@pytest.mark.slow
def test_compare_page_shows_foreign_run_fields_as_text(tmp_path):
    a = make_fake_run(tmp_path / "a", gpu=True)
    b = make_fake_run(tmp_path / "b", gpu=True, gpu_name=f"GPU {PAYLOAD}")
    _poison(b)
    reports = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "lib.report.compare", "--runs", f"{a} {b}", "--reports-dir", str(reports)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = next((reports / "compare").glob("*/compare.html"))
    _assert_inert(page.read_text())


def test_index_quotes_folder_names(tmp_path):
    """A run folder copied in under a hostile name: the index links to it without letting the name out of
    the href."""
    import shutil

    from lib.report.render import render_index

    reports = tmp_path / "reports"
    run = make_fake_run(reports, gpu=False)
    hostile = run.parent / f'x"><img src=x onerror=alert(1)>'
    shutil.move(run, hostile)
    (hostile / "report.html").write_text("<html></html>")
    text = render_index(reports).read_text()
    _assert_inert(text)
    href = re.search(r'<a href="([^"]*)">', text).group(1)
    from urllib.parse import unquote

    assert (reports / unquote(href)).exists()
