"""lib.report.kernels: the "Where the GPU time goes" section, on synthetic run folders written in the
layout lib.sweep.bench writes (``kernels.json`` per backend/precision; see tests/report/fake_runs.make_fake_run)."""

from __future__ import annotations

import pytest

import lib
from lib.report import kernels as rk

from .fake_runs import make_fake_run


@pytest.fixture
def gpu_run(tmp_path):
    return lib.load_run(make_fake_run(tmp_path, gpu=True))


def test_profiles_load_as_tidy_tables(gpu_run):
    kp = gpu_run.kernel_points
    # torch/fp32, torch/fp16 and trt/fp16 wrote profiles (ort/fp32 crashed): smallest and largest batch each.
    assert set(zip(kp["backend"], kp["precision"])) == {("torch", "fp32"), ("torch", "fp16"), ("trt", "fp16")}
    assert len(kp) == 6
    ok = kp[kp["error"].isna()]
    assert ((ok["busy_share"] - ok["busy_ms"] / ok["device_median_ms"]).abs() < 1e-12).all()
    failed = kp[kp["error"].notna()]
    assert len(failed) == 1 and failed["backend"].iloc[0] == "trt" and failed["busy_ms"].isna().all()
    k = gpu_run.kernels
    assert {"kernel", "short", "category", "calls", "ms"} <= set(k) and len(k) == 5 * 3


def test_markdown_names_regimes_and_failures(gpu_run):
    text = rk.kernels_markdown(gpu_run)
    assert "**torch/fp32** at batch 16" in text and "convolution / matmul" in text
    assert "`cudnn::conv_kernel<float>`" in text
    assert "Launch-bound: torch/fp32 (40% busy at batch 1)" in text
    assert "Not profiled: trt/fp16 batch 4: RuntimeError: CUPTI recorded no GPU activity" in text


def test_points_table(gpu_run):
    t = rk.kernel_points_table(gpu_run)
    assert len(t) == 5  # the failed profile is left out of the table (it is named in the text)
    assert list(t["backend/precision"]) == ["torch/fp32", "torch/fp32", "torch/fp16", "torch/fp16", "trt/fp16"]
    assert set(t["regime"]) == {"launch-bound", "kernel-bound"}
    big = t[(t["backend/precision"] == "torch/fp32") & (t["batch"] == 16)].iloc[0]
    assert big["regime"] == "kernel-bound" and big["share busy"] == pytest.approx(0.95)
    assert big["largest categories (ms)"].startswith("convolution / matmul")
    assert big["slowest kernel (ms)"].startswith("cudnn::conv_kernel<float>")


def test_top_kernels_table_and_plot(gpu_run):
    top = rk.top_kernels_table(gpu_run, n=2)
    # Each series at its largest *profiled* batch: trt/fp16's batch-4 profile failed, so its batch 1.
    assert list(zip(top["backend/precision"], top["batch"]))[::2] == [("torch/fp32", 16), ("torch/fp16", 16),
                                                                     ("trt/fp16", 1)]
    assert list(top["share of busy"].round(2)[:2]) == [0.6, 0.3]
    figs = rk.plot_kernel_categories(gpu_run)
    assert len(figs) == 1
    ax_small, ax_big = figs[0].axes[:2]
    labels = [t.get_text() for t in ax_small.get_yticklabels()]
    assert labels == ["torch/fp32  (bs 1)", "torch/fp16  (bs 1)", "trt/fp16  (bs 1)"]
    assert [t.get_text() for t in ax_big.get_yticklabels()] == ["torch/fp32  (bs 16)", "torch/fp16  (bs 16)",
                                                                 "trt/fp16  (bs 1)"]
    import matplotlib.pyplot as plt

    plt.close("all")


def test_cpu_run_says_gpu_only(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=False))
    assert run.kernel_points.empty and run.kernels.empty
    assert "GPU only" in rk.kernels_markdown(run)
    assert rk.kernel_points_table(run).empty and rk.plot_kernel_categories(run) is None
