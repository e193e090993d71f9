"""``python -m lib.report.compare`` (``make compare RUNS=...``): checks RUNS, ratios with bootstrap intervals,
one HTML page per comparison in a new folder, runs copied from other machines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lib
from lib.report import compare

from .fake_runs import ROOT, build_real_run, make_fake_run
from .test_render import assert_renders, assert_self_contained, needs_chromium


@pytest.fixture
def two_gpu_runs(tmp_path):
    a = make_fake_run(tmp_path / "machine-a", gpu=True, run_id="20260101-000000-cuda")
    b = make_fake_run(tmp_path / "machine-b", gpu=True, run_id="20260102-000000-cuda", speed=1.3, seed=1,
                      gpu_name="NVIDIA A100-SXM4-80GB", throttle=False, failures=False)
    return a, b


# --- RUNS is checked before anything runs: one line naming the value -----------------------------

@pytest.mark.parametrize("runs, expected", [
    ("", "give at least 2 run folders"),
    ("{a}", "give at least 2 run folders"),
    ("{a} {tmp}/missing", "does not exist"),
    ("{a} {tmp}", "is not a benchbook run"),
    ("{a} {a}", "names the same run folder twice"),
    ("{a} {a}/params.json", "is not a folder"),
])
def test_bad_runs_give_one_clear_line(two_gpu_runs, tmp_path, capsys, runs, expected):
    a, _ = two_gpu_runs
    value = runs.format(a=a, tmp=tmp_path)
    assert compare.main(["--runs", value, "--reports-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert "RUNS" in err[0]
    if value.split():
        assert value.split()[-1] in err[0] or "same run folder" in err[0]
    assert not (tmp_path / "out" / "compare").exists() or not any((tmp_path / "out" / "compare").iterdir())


def test_bad_runs_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lib.report.compare", "--runs", f"{tmp_path}/nope {tmp_path}/nada"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"{tmp_path}/nope" in proc.stderr and "does not exist" in proc.stderr


# --- ratios ---------------------------------------------------------------------------------------

def test_ratios_with_intervals_from_rounds(two_gpu_runs):
    a, b = two_gpu_runs
    cmp = compare.load_comparison(f"{a} {b}")
    r = cmp.ratios
    assert set(r["run"]) == {"B"} and set(r["vs"]) == {"A"}
    assert set(r["mode"]) == {"device", "end_to_end", "throughput"}
    # B is 1.3x faster everywhere: ratio ~ 1/1.3 (but for the deliberately noisy point), and the interval says so
    noisy = (r["backend"] == "torch") & (r["precision"] == "fp32") & (r["batch"] == 4)
    assert np.allclose(r.loc[~noisy, "ratio"], 1 / 1.3, rtol=0.03)
    assert ((r["ci_low"] <= r["ratio"]) & (r["ratio"] <= r["ci_high"])).all()
    assert (r["verdict"] == "B faster").all()
    # only what both measured: A's trt/fp16 batch 16 ran out of memory and A's ort/fp32 crashed
    assert not ((r["backend"] == "trt") & (r["batch"] == 16)).any() and "ort" not in set(r["backend"])
    t = compare.ratio_table(cmp)
    assert {"configuration", "batch", "median A ms", "median B ms", "ratio", "95% CI", "verdict"} <= set(t.columns)
    md = compare.summary_markdown(cmp)
    assert "B vs A" in md and "faster" in md and "`GPU`" in md
    diff = compare.differences_table(cmp).set_index("item")
    assert diff.loc["GPU", "A"] == "NVIDIA H100 80GB HBM3" and diff.loc["GPU", "B"] == "NVIDIA A100-SXM4-80GB"
    f = compare.failures_table(cmp)
    assert {"crashed", "oom"} <= set(f.loc[f["run"] == "A", "status"])
    assert set(f.loc[f["run"] == "B", "status"]) == {"unavailable"}


def test_same_run_copied_shows_no_change(two_gpu_runs, tmp_path):
    a, _ = two_gpu_runs
    copy = tmp_path / "copied" / "tiny_cnn" / "from-another-machine"
    shutil.copytree(a, copy)
    cmp = compare.load_comparison([str(a), str(copy)])
    assert np.allclose(cmp.ratios["ratio"], 1.0)
    assert (cmp.ratios["verdict"] == "no clear change").all()


def test_three_runs_compare_each_with_the_first(two_gpu_runs, tmp_path):
    a, b = two_gpu_runs
    c = make_fake_run(tmp_path / "machine-c", gpu=True, run_id="20260103-000000-cuda", speed=0.8, seed=2)
    cmp = compare.load_comparison(f"{a} {b} {c}")
    assert set(cmp.ratios["run"]) == {"B", "C"}
    r = cmp.ratios[cmp.ratios["run"] == "C"]
    noisy = (r["backend"] == "torch") & (r["precision"] == "fp32") & (r["batch"] == 4)
    assert (r.loc[~noisy, "verdict"] == "C slower").all()
    assert "run" in compare.ratio_table(cmp).columns
    for fig in (compare.plot_ratios(cmp), compare.plot_overlay(cmp), compare.plot_latency_throughput(cmp)):
        assert fig is not None


def test_every_comparison_gets_a_new_folder(tmp_path):
    made = {compare._new_out_dir(tmp_path) for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() for p in made)


# --- the real thing (slow) -------------------------------------------------------------------------------

@pytest.mark.slow
@needs_chromium
def test_compare_real_run_with_a_copy_from_another_machine(tmp_path_factory, tmp_path):
    a = build_real_run(tmp_path_factory)
    reports = tmp_path / "reports"
    b = reports / "tiny_cnn" / "20991231-000000-cpu"  # as if copied here from another machine
    shutil.copytree(a, b)
    proc = subprocess.run([sys.executable, "-m", "lib.report.compare", "--runs", f"{a} {b}", "--reports-dir", str(reports)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pages = list((reports / "compare").glob("*/compare.html"))
    assert len(pages) == 1
    page = pages[0]
    # issue 14: no kernel noise ("Kernel is running over TCP without encryption"), the page's path once, last
    assert "TCP" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    assert proc.stderr.count(str(page.parent)) == 1 and proc.stderr.strip().splitlines()[-1].startswith(f"compare: {page}")
    ratios = pd.read_csv(page.parent / "ratios.csv")
    assert len(ratios) == len(lib.load_run(a).points) and (ratios["verdict"] == "no clear change").all()
    text = page.read_text()
    for section in ("Summary", "Ratios", "Latency vs batch size", "Latency–throughput", "What differs"):
        assert section in text
    assert 'href="../../tiny_cnn/20991231-000000-cpu/report.html"' in text  # relative link to run B's report
    assert_self_contained(page)
    assert_renders(page, min_images=3, min_toc=6)


def run_compare_cells(runs: str) -> dict:
    """The comparison notebook's code cells, executed in this process with the parameters set."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "30_compare.ipynb", as_version=4)
    ns: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "<compare cell>", "exec"), ns)
            if "parameters" in cell.metadata.get("tags", []):
                ns.update(runs=runs, outliers="", out_dir="")
    return ns


@pytest.mark.parametrize("case", ["one run has no numbers", "cpu vs gpu", "different shapes"])
def test_compare_notebook_handles_edge_runs(tmp_path, case):
    import matplotlib.pyplot as plt

    a = make_fake_run(tmp_path / "a", gpu=True)
    b = {"one run has no numbers": lambda: make_fake_run(tmp_path / "b", gpu=True, crash_all=True),
         "cpu vs gpu": lambda: make_fake_run(tmp_path / "b", gpu=False),
         "different shapes": lambda: make_fake_run(tmp_path / "b", gpu=True, shapes=("64x64",))}[case]()
    ns = run_compare_cells(f"{a} {b}")
    if case != "cpu vs gpu":
        assert ns["cmp"].ratios.empty
        assert "nothing to compare" in compare.summary_markdown(ns["cmp"])
    else:
        assert set(ns["cmp"].ratios["mode"]) == {"device", "end_to_end"}
    plt.close("all")


# --- issue 14: what the compare page says -------------------------------------------------------------

def test_overlay_legend_names_every_run_and_the_ratio_table_its_shapes(two_gpu_runs):
    import matplotlib.pyplot as plt

    cmp = compare.load_comparison(list(map(str, two_gpu_runs)))
    fig = compare.plot_overlay(cmp)
    texts = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert "A: 20260101-000000-cuda" in texts and "B: 20260102-000000-cuda" in texts, texts
    assert fig.get_size_inches()[0] <= 9.6
    plt.close("all")
    assert "shape" in compare.ratio_table(cmp).columns  # even with one shape


def test_what_differs_lists_each_parameter_once_with_every_value(tmp_path):
    a = make_fake_run(tmp_path / "a", gpu=True, run_id="20260101-000000-cuda", batches=(1, 4))
    b = make_fake_run(tmp_path / "b", gpu=True, run_id="20260102-000000-cuda", batches=(1, 4, 16), seed=1)
    diff = compare.differences_table(compare.load_comparison([str(a), str(b)]))
    batch_rows = [k for k in diff["item"] if "batch" in k]
    assert batch_rows == ["batch sizes"], list(diff["item"])
    row = diff[diff["item"] == "batch sizes"].iloc[0]
    assert (row["A"], row["B"]) == ("1, 4", "1, 4, 16")
