"""Open real reports in headless Chromium and check they render: every image decodes, every
table-of-contents link resolves, no script error, nothing wider than a 1280 px laptop window, and
nothing loaded from the network.

How: a COPY of the report gets a small script at the top of <head> that records window errors and, on
load, writes a verdict into document.title; ``chromium --dump-dom`` prints the DOM after load.
Skipped (with the reason) only when Chromium is not installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .fake_runs import ROOT, build_real_run, make_fake_run

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it "
                                                             "where apt is available); the browser check cannot run")
WIDTH = 1280

_PROBE = """<script>
window.__bbErrors = [];
window.addEventListener("error", function (e) {
  window.__bbErrors.push(String(e.message || (e.target && (e.target.src || e.target.href)) || e));
}, true);
window.addEventListener("unhandledrejection", function (e) { window.__bbErrors.push("rejection: " + e.reason); });
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return (i.src || "").slice(0, 60); });
  var toc = Array.prototype.slice.call(document.querySelectorAll("nav.bb-toc a"));
  var missing = toc.map(function (a) { return a.getAttribute("href"); }).filter(function (h) {
    // as a browser resolves a fragment: the id as written, then percent-decoded
    return !(h && h.charAt(0) === "#" && (document.getElementById(h.slice(1)) ||
                                         document.getElementById(decodeURIComponent(h.slice(1)))));
  });
  // the page's text column: what a table or an image may take without a scroll bar or a downscale
  var cs = getComputedStyle(document.body);
  var column = document.body.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  var wideTables = Array.prototype.slice.call(document.querySelectorAll("table")).filter(function (t) {
    return t.getBoundingClientRect().width > column + 1;
  }).map(function (t) {
    var th = Array.prototype.slice.call(t.querySelectorAll("th"), 0, 4).map(function (h) { return h.textContent.trim(); });
    return th.join(" | ") + ": " + Math.round(t.getBoundingClientRect().width) + " px";
  });
  var wideImages = imgs.filter(function (i) { return i.naturalWidth > column + 1; })
                       .map(function (i) { return i.naturalWidth; });
  var relative = Array.prototype.slice.call(document.querySelectorAll("a[href]")).map(function (a) {
    return a.getAttribute("href");
  }).filter(function (h) { return !/^(#|[a-z][a-z0-9+.-]*:)/i.test(h); });
  var verdict = {images: imgs.length, bad_images: bad, toc_links: toc.length, missing_toc: missing,
                 errors: window.__bbErrors, page_width: document.documentElement.scrollWidth,
                 window_width: window.innerWidth, tables: document.querySelectorAll("table").length,
                 column: column, wide_tables: wideTables, wide_images: wideImages, relative_links: relative,
                 left_margin: Math.round((document.querySelector("h1, h2, p") || document.body).getBoundingClientRect().left)};
  document.title = "BBCHECK " + JSON.stringify(verdict);
});
</script>"""


def check_in_browser(page: Path, width: int = WIDTH) -> dict:
    """Load a copy of ``page`` (with the probe) in headless Chromium at ``width`` px; the probe's verdict."""
    assert CHROMIUM, "chromium is not installed"
    text = page.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        # the copy sits beside the original so relative links behave the same
        probe = page.parent / f".bbcheck-{os.getpid()}-{page.name}"
        head = re.search(r"<head[^>]*>", text)
        probe.write_text(text[:head.end()] + _PROBE + text[head.end():] if head else _PROBE + text)
        try:
            proc = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp}", f"--window-size={width},900", "--virtual-time-budget=10000",
                 "--dump-dom", probe.resolve().as_uri()],
                capture_output=True, text=True, timeout=120)
        finally:
            probe.unlink(missing_ok=True)
    m = re.search(r"<title>BBCHECK (.*?)</title>", proc.stdout, flags=re.S)
    assert m, f"no verdict from chromium (rc {proc.returncode}): {proc.stderr[-1500:]}"
    return json.loads(html.unescape(m.group(1)))


def assert_renders(page: Path, min_images: int = 1, min_toc: int = 5) -> dict:
    v = check_in_browser(page)
    assert v["errors"] == [], f"script errors: {v['errors']}"
    assert v["images"] >= min_images and v["bad_images"] == [], v
    assert v["toc_links"] >= min_toc and v["missing_toc"] == [], v
    assert v["window_width"] == WIDTH
    assert v["page_width"] <= WIDTH, f"the page is {v['page_width']} px wide: something overflows a {WIDTH} px window"
    return v


def assert_self_contained(page: Path) -> None:
    text = page.read_text()
    external = re.findall(r"<(?:script|img|link|iframe|source)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//[^\"' >]+",
                          text, flags=re.I)
    assert external == [], f"loads from the network: {external[:3]}"
    assert "@import url(http" not in text
    # relative links (per-backend notebooks, run reports) point at files that exist
    for href in re.findall(r"<a [^>]*href=\"([^\"#:]+)\"", text):
        assert (page.parent / html.unescape(href)).exists(), f"broken relative link {href}"


def _render(run_dir: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for cmd in (["notebook", "analysis", "--run-dir", str(run_dir)], ["html", str(run_dir)]):
        proc = subprocess.run([sys.executable, "-m", "lib.pipeline.cli", *cmd], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "report.html"


@needs_chromium
def test_probe_catches_broken_pages(tmp_path):
    """The checker itself: a broken image, a dead TOC link and a script error are all reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><title>x</title></head><body>"
                    "<nav class='bb-toc'><a href='#nowhere'>x</a></nav><img src='data:image/png;base64,AAAA'>"
                    "<div style='width:2000px'>wide</div><script>undefinedFunction();</script></body></html>")
    v = check_in_browser(page)
    assert v["bad_images"] and v["missing_toc"] == ["#nowhere"] and v["errors"]
    assert v["page_width"] > WIDTH


@needs_chromium
@pytest.mark.slow
def test_real_report_renders(tmp_path_factory):
    page = build_real_run(tmp_path_factory) / "report.html"
    assert_self_contained(page)
    v = assert_renders(page, min_images=6, min_toc=12)
    assert v["tables"] >= 8


GPU_LIKE = {("torch", "fp32"): 4.5, ("torch", "fp16"): 5.2, ("torch", "bf16"): 5.1, ("torch-cudagraph", "fp32"): 1.0,
            ("torch-cudagraph", "fp16"): 1.4, ("torch-compile", "fp16"): 3.3, ("ort", "fp32"): 1.6,
            ("ort", "fp16"): 1.64, ("ort-cudagraph", "fp32"): 0.99, ("ort-cudagraph", "fp16"): 0.86}


@needs_chromium
@pytest.mark.slow
def test_gpu_report_with_ten_configurations_is_legible(tmp_path):
    """Issue 14: an H200-like run (10 configurations x 4 batch sizes, 2 shapes) read at 1280 and 800 px:
    no image wider than the text column (a browser would shrink its text), no table wider than it, the
    text off the window's edge; and a copy of report.html alone (as mailed) has no relative links."""
    run_dir = make_fake_run(tmp_path, gpu=True, combos=GPU_LIKE, batches=(1, 8, 32, 128), shapes=("16x16", "32x32"),
                            gpu_name="NVIDIA H200")
    page = _render(run_dir)
    mailed = tmp_path / "mailed" / "report.html"
    mailed.parent.mkdir()
    shutil.copy(page, mailed)
    wide = check_in_browser(mailed)
    assert wide["wide_images"] == [] and wide["wide_tables"] == [], wide
    assert wide["relative_links"] == [], wide["relative_links"]
    narrow = check_in_browser(mailed, width=800)
    assert narrow["left_margin"] >= 10 and narrow["page_width"] <= 800, narrow


@needs_chromium
@pytest.mark.slow
def test_gpu_report_renders(tmp_path):
    """A GPU-shaped run (NVML columns, throttling, pipelined mode, failures) through the real notebook."""
    run_dir = make_fake_run(tmp_path, gpu=True)
    page = _render(run_dir)
    text = page.read_text()
    for expected in ("the GPU throttled", "sw_thermal", "H100 SXM", "TF32", "export failed", "crashed", "oom",
                     "parity failed", "pipelined"):
        assert expected in text, expected
    assert ">None<" not in text and ">nan<" not in text.lower()
    assert_self_contained(page)
    assert_renders(page, min_images=8, min_toc=12)
