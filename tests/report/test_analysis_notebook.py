"""The analysis notebook as a whole: every cell on runs at the edges (fast, in this process), and the
real pipeline's outputs (slow: one ``make report`` of the tiny model).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

import lib
from lib.report import summary

from .fake_runs import make_fake_run, run_analysis_cells


@pytest.mark.parametrize("case", ["all crashed", "no samples", "no resources", "one point", "only the baseline",
                                  "two shapes", "cpu"])
def test_analysis_notebook_handles_edge_runs(tmp_path, case, capsys, monkeypatch):
    import IPython.display
    import matplotlib.pyplot as plt

    def display(*objs, **kw):  # text for Markdown and tables, a marker for images
        for o in objs:
            print(getattr(o, "data", None) if isinstance(o, IPython.display.Markdown) else
                  "<image>" if isinstance(o, IPython.display.Image) else
                  o.to_html() if hasattr(o, "to_html") else repr(o))

    monkeypatch.setattr(IPython.display, "display", display)

    kw = {"all crashed": dict(crash_all=True), "no samples": dict(samples=False),
          "no resources": dict(resources=False, samples=False), "one point": dict(batches=(2,), failures=False),
          "only the baseline": dict(combos={("torch", "fp32"): 2.0}),
          "two shapes": dict(shapes=("32x32", "64x64")), "cpu": dict(gpu=False)}[case]
    kw.setdefault("gpu", True)
    path = make_fake_run(tmp_path, **kw)
    ns = run_analysis_cells(path)
    out = capsys.readouterr().out
    assert "Traceback" not in out
    assert not (path / "flops.json").exists()  # the analysis reads files only; the benchmark step counts FLOPs
    if case == "all crashed":
        assert ns["run"].points.empty and "No backend produced numbers" in out
    if case == "two shapes":
        assert "shape 64x64" in out
        assert set(summary.decision_table(ns["run"], ns["sp"])["shape"]) == {"32x32", "64x64"}
    plt.close("all")


@pytest.mark.slow
def test_real_run_analysis_outputs(real_run_dir):
    import nbformat

    for name in ("report.html", "analysis.ipynb", "flops.json", "peaks.json", "iterations.parquet",
                 "samples.parquet", "points.parquet", "speedup.csv", "efficiency.csv"):
        assert (real_run_dir / name).exists(), name
    flops = json.loads((real_run_dir / "flops.json").read_text())
    assert flops["shapes"]["32x32"]["flops_per_item"] == 1032512  # conv 442,368 + conv 589,824 + linear 320
    peaks = json.loads((real_run_dir / "peaks.json").read_text())
    assert peaks["cpu:fp32"]["tflops"] > 0 and peaks["cpu:fp32"]["label"].startswith("measured")
    nb = nbformat.read(real_run_dir / "analysis.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.output_type == "stream" and o.get("name") == "stderr")
    assert "Traceback" not in text
    run = lib.load_run(real_run_dir)
    it = pd.read_parquet(real_run_dir / "iterations.parquet")
    assert len(it) == len(run.iterations) and set(it["mode"]) == {"device", "end_to_end"}
    html = (real_run_dir / "report.html").read_text()
    for section in ("Summary", "Efficiency", "Stability", "Failures and skips", "Results as data", "Notebooks"):
        assert f">{section}<" in html or f">{section}</a>" in html, section
    assert "bench/torch-fp32/benchmark.ipynb" in html and 'href="bench/' not in html  # named: it does not travel
    assert "% of peak" in html and "measured" in html
