"""``lib.report.stability``: device health, flagged points, resources.
"""

from __future__ import annotations

import json

import lib
from lib.report import stability

from .fake_runs import make_fake_run


def test_gpu_health_shows_throttling(gpu_run):
    h = stability.health_table(gpu_run).set_index("configuration")
    assert h.loc["trt/fp16", "% ticks throttled"] > 0
    assert "sw_thermal" in h.loc["trt/fp16", "reasons"] and "sw_power_cap" in h.loc["trt/fp16", "reasons"]
    assert h.loc["torch/fp32", "% ticks throttled"] == 0 and h.loc["torch/fp32", "reasons"] == "none"
    assert h.loc["trt/fp16", "SM MHz min"] == 1400
    figs = stability.plot_health(gpu_run)
    assert len(figs) == 3  # ort/fp32 crashed: no timeline
    labels = [a.get_ylabel() for a in figs[0].axes]
    assert "SM MHz" in labels and "temp °C" in labels and "power W" in labels


def test_rss_comes_from_the_backends_own_process(cpu_run):
    """Pass 2 runs every backend in one process (lib/sweep/second_pass.py): its RSS holds what earlier backends
    left, so a backend's RSS peak is its pass-1 process's."""
    s = cpu_run.samples
    first = s.index[(s["backend"] == "torch")][:3]
    cpu_run.samples = s.assign(**{"pass": 1}).copy()
    cpu_run.samples.loc[first, ["pass", "rss_mib"]] = [2, 99999.0]
    h = stability.health_table(cpu_run).set_index("configuration")
    assert h.loc["torch/fp32", "RSS MiB peak"] == 900.0


def test_cpu_health_shows_cpu_and_rss(cpu_run):
    assert not cpu_run.has_gpu_samples
    h = stability.health_table(cpu_run)
    assert "RSS MiB peak" in h.columns and "SM MHz median" not in h.columns
    labels = [a.get_ylabel() for a in stability.plot_health(cpu_run)[0].axes]
    assert any("CPU %" in x for x in labels) and "RSS MiB\n(own process)" in labels
    assert "CPU run" in stability.health_markdown(cpu_run)


def test_unstable_points_listed(gpu_run):
    u = stability.unstable_table(gpu_run)
    assert set(u["configuration"]) == {"torch/fp32"} and set(u["batch"]) == {4}
    assert (u["CV"] > 0.05).all()


def test_resources_note_says_why_the_gpu_was_not_sampled(tmp_path):
    """The sampler's NVML error is kept in engine.json and the report quotes it (it used to be dropped)."""
    run_dir = make_fake_run(tmp_path, gpu=True)
    eng = run_dir / "bench" / "torch-fp32" / "engine.json"
    e = json.loads(eng.read_text())
    e["sampler_gpu_error"] = "GpuError: NVML cannot start (NVMLError_LibraryNotFound)"
    eng.write_text(json.dumps(e))
    note = stability.resources_note(lib.load_run(run_dir))
    assert "no GPU figures (NVML) for torch/fp32" in note and "NVMLError_LibraryNotFound" in note


def test_unstable_table_says_none_when_nothing_is_unstable(gpu_run):
    gpu_run.points["unstable"] = False
    gpu_run.points["noisy"] = False
    u = stability.unstable_table(gpu_run)
    assert list(u.columns) == ["flagged points"] and len(u) == 1 and u.iloc[0, 0].startswith("none")
