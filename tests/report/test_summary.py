"""``lib.report.summary``: decisions, the latency budget, speedups with intervals from rounds, the summary's
bullets and its two figures.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import lib
from lib.report import points, summary

from .fake_runs import ROUNDS, make_fake_run


def test_speedups_have_intervals_from_rounds(gpu_run):
    sp = summary.speedups(gpu_run)
    base = sp[(sp["backend"] == "torch") & (sp["precision"] == "fp32")]
    assert np.allclose(base["speedup"], 1.0) and not base["significant"].any() and (base["verdict"] == "baseline").all()
    trt = sp[(sp["backend"] == "trt") & (sp["batch"] == 1) & (sp["mode"] == "device")].iloc[0]
    assert trt["ci_low"] <= trt["speedup"] <= trt["ci_high"]
    assert 3.6 < trt["speedup"] < 4.4 and trt["significant"] and trt["verdict"] == "faster"  # 2.0 / 0.5 ms
    assert trt["rounds"] == trt["baseline_rounds"] == ROUNDS
    # the figure is the tables' median (over every raw sample), never a filtered one
    p = gpu_run.points.set_index(["backend", "precision", "batch", "shape", "mode"])["median_ms"]
    assert trt["median_ms"] == p[("trt", "fp16", 1, "32x32", "device")]
    assert trt["speedup"] == pytest.approx(p[("torch", "fp32", 1, "32x32", "device")] / trt["median_ms"])
    assert set(sp["mode"]) == {"device", "end_to_end", "throughput"}
    grid = summary.speedup_table(sp, gpu_run)
    assert "batch 1" in grid.columns and "configuration" in grid.columns
    assert grid["batch 1"].str.contains("×").all()


def test_no_baseline_means_no_speedups(tmp_path):
    path = make_fake_run(tmp_path, gpu=False)
    shutil.rmtree(path / "bench" / "torch-fp32")
    plan = json.loads((path / "plan.json").read_text())
    plan["combos"] = [{"backend": "ort", "precision": "fp32"}]
    (path / "plan.json").write_text(json.dumps(plan))
    run = lib.load_run(path)
    sp = summary.speedups(run)
    assert sp.empty
    assert "no PyTorch eager FP32" in summary.speedup_table(sp, run).iloc[0, 0]
    assert "No PyTorch eager FP32" in summary.summary_markdown(run, sp)


def test_decisions_skip_parity_failures_and_pick_the_fastest(gpu_run):
    sp = summary.speedups(gpu_run)
    d = summary.decision_table(gpu_run, sp)
    assert list(d["batch"]) == [1, 4, 16]
    row1 = d[d["batch"] == 1].iloc[0]
    tail = points.tail_label(gpu_run)
    assert tail == "p95"  # 15-30 samples per point: p99 would be the sample's maximum
    assert row1[f"lowest {tail}, device-resident"].startswith("trt/fp16")
    assert "vs torch/fp32" in row1[f"lowest {tail}, end-to-end"]
    assert "highest throughput (pipelined)" in d.columns
    # batch 16: trt ran out of memory there, torch/fp16 is next fastest
    assert d[d["batch"] == 16].iloc[0][f"lowest {tail}, device-resident"].startswith("torch/fp16")
    # torch/fp16 at batch 1 failed parity: never recommended
    ok = points.usable_points(gpu_run)
    assert not ((ok["series"] == "torch/fp16") & (ok["batch"] == 1)).any()


def test_budget_picks_highest_throughput_within_budget(gpu_run):
    t = summary.budget_table(gpu_run, budget_ms=5.0)
    assert len(t) and (t["p95 ms"] <= 5.0).all()
    assert list(t["items/s"]) == sorted(t["items/s"], reverse=True)
    assert "items/s pipelined" in t.columns
    md = summary.budget_markdown(gpu_run, 5.0)
    assert f"{t.iloc[0]['configuration']} at batch {t.iloc[0]['batch']}" in md
    assert "no configuration meets it" in summary.budget_markdown(gpu_run, 0.01)


def test_summary_mentions_throttling_and_failures(gpu_run):
    md = summary.summary_markdown(gpu_run, summary.speedups(gpu_run), 10.0)
    assert "Lowest latency at batch 1" in md and "trt/fp16" in md
    assert "throttled" in md and "sw_thermal" in md
    assert "crashed" in md and "oom" in md
    assert "failed parity" in md


def test_latency_throughput_and_speedup_figures(gpu_run, cpu_run):
    import matplotlib.pyplot as plt

    for run in (gpu_run, cpu_run):
        sp = summary.speedups(run)
        fig = summary.plot_latency_throughput(run, 5.0)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and len(ax.get_lines()) >= 2
        assert summary.plot_speedups(run, sp, "end_to_end") is not None
        plt.close("all")


def test_budget_bullet_names_the_input_shape_and_the_table_lists_every_fit(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, shapes=("32x32", "64x64"), batches=(1, 2, 4, 8, 16)))
    text = summary.budget_markdown(run, 1000.0)
    assert "(shape 32x32)" in text or "(shape 64x64)" in text
    assert "shape (" not in text  # was the pandas row's own .shape, e.g. "shape (38,)"
    n = int(text.split(" configurations meet the budget")[0].rsplit(" ", 1)[-1])
    assert n > 8 and len(summary.budget_table(run, 1000.0)) == n  # was cut to 8 rows


def test_a_peak_the_model_beats_is_not_quoted_as_a_share(cpu_run):
    eff = pd.DataFrame([{"backend": "ort", "precision": "fp32", "batch": 16, "shape": "32x32", "mode": "device",
                         "items_per_s": 1e4, "gflop_per_item": 1.0, "achieved_tflops": 0.45, "peak_tflops": 0.2,
                         "peak_share": 2.249, "peak_label": "measured", "peak_source": "measured"}])
    text = summary.summary_markdown(cpu_run, None, 10.0, eff)
    assert "224.9%" not in text and "no share of peak is given" in text


def test_cpu_ep_fallback_is_reported(gpu_run):
    gpu_run.engines["trt/fp16"].setdefault("info", {})["cpu_ep_fallback"] = (
        "Fail: This session contains graph nodes that are assigned to the default CPU EP")
    text = summary.summary_markdown(gpu_run, None, 10.0)
    assert "runs part of the graph on the CPU EP" in text and "trt/fp16" in text


def test_speedup_panels_share_one_scale(tmp_path):
    import matplotlib.pyplot as plt

    run = lib.load_run(make_fake_run(tmp_path, gpu=True, shapes=("16x16", "32x32"), failures=False))
    fig = summary.plot_speedups(run, summary.speedups(run), "end_to_end")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and len({ax.get_yscale() for ax in axes}) == 1 and len({ax.get_ylim() for ax in axes}) == 1
    titles = [ax.get_title() for ax in axes]
    assert titles == ["shape 16x16", "shape 32x32"]
    plt.close("all")


def test_latency_throughput_labels_do_not_collide(tmp_path):
    import matplotlib.pyplot as plt

    combos = {(b, p): base for (b, p), base in zip(
        [("torch", "fp32"), ("torch", "fp16"), ("torch", "bf16"), ("torch-cudagraph", "fp32"), ("torch-cudagraph", "fp16"),
         ("torch-compile", "fp16"), ("ort", "fp32"), ("ort", "fp16"), ("ort-cudagraph", "fp32"), ("ort-cudagraph", "fp16")],
        [4.5, 5.2, 5.1, 1.0, 1.4, 3.3, 1.6, 1.64, 0.99, 0.86])}
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, combos=combos, batches=(1, 8, 32, 128), failures=False))
    fig = summary.plot_latency_throughput(run, 10.0)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(r) for t in ax.texts]
        assert boxes, "the frontier is labelled"
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert fig.legends and all(not ax.get_legend() for ax in fig.axes)  # one legend, below the panels
    assert fig.get_size_inches()[0] <= 9.6
    plt.close("all")
