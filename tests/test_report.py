"""The analysis layer: tidy tables, decisions, speedups with CIs, stability, failures, Parquet export.

Fast tests use synthetic run folders written in exactly the layout ``lib.bench`` writes (a GPU run
with NVML columns, throttling, a crash, an OOM and a parity failure; and a CPU run), so the GPU code
paths are exercised on a machine without a GPU. Slow tests build one real tiny run with ``make
report`` (shared by test_html_render.py and test_compare.py through ``real_run_dir``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"
sys.path.insert(0, str(ROOT))

import lib  # noqa: E402
from lib import report  # noqa: E402

# --- synthetic runs ----------------------------------------------------------------------------

# (backend, precision) -> latency per item-ish scale (ms at batch 1, device mode)
GPU_COMBOS = {("torch", "fp32"): 2.0, ("torch", "fp16"): 1.2, ("trt", "fp16"): 0.5, ("ort", "fp32"): 1.5}
CPU_COMBOS = {("torch", "fp32"): 20.0, ("ort", "fp32"): 15.0}
ROUNDS = 4


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def make_fake_run(root: Path, gpu: bool = True, run_id: str | None = None, speed: float = 1.0, seed: int = 0,
                  gpu_name: str = "NVIDIA H100 80GB HBM3", throttle: bool = True, failures: bool = True,
                  batches=(1, 4, 16), shapes=("32x32",), combos: dict | None = None, samples: bool = True,
                  resources: bool = True, crash_all: bool = False) -> Path:
    """A run folder as lib.bench writes it. ``speed`` divides every latency (a faster 'run B');
    ``samples=False``: no sampler ticks; ``resources=False``: no tick inside any steady window;
    ``crash_all``: every backend's notebook crashed."""
    rng = np.random.default_rng(seed)
    device = "cuda" if gpu else "cpu"
    run_id = run_id or f"20260101-000000-{device}"
    run = root / "tiny_cnn" / run_id
    run.mkdir(parents=True)
    combos = combos or (GPU_COMBOS if gpu else CPU_COMBOS)
    batches, shapes = list(batches), list(shapes)
    params = {"model": "tiny_cnn", "backends": "auto", "precisions": "auto",
              "batch_sizes": ",".join(map(str, batches)), "shapes": ",".join(shapes), "warmup": 0.2, "iters": 5, "duration": 0.25, "rounds": ROUNDS, "point_cap": 2.0, "ci_target": 0.01,
              "noise_spread": 0.05, "host_slow": 0.10, "device": device, "outliers": "tukey",
              "weights": "", "seed": 0, "unstable_cv": 0.05, "channels_last": False, "tf32": True,
              "compile_mode": "default", "trt_workspace_gib": 4.0, "trt_opt_level": 3,
              "models_dir": str(FIXTURE_MODELS), "cache_dir": str(root / "build"), "options": {}}
    plan = {"device": device, "batch_sizes": batches, "shapes": shapes, "run_dir": "/elsewhere/" + run_id,
            "combos": [{"backend": b, "precision": p} for b, p in combos],
            "skipped": [{"backend": "trt-cudagraph", "precision": "*", "reason": "TensorRT is not installed"}]
            if gpu else [{"backend": "trt", "precision": "*", "reason": "needs a GPU (DEVICE=cpu)"}],
            "onnx_dir": "", "onnx_precisions": ["fp32"], "resumed": False}
    _write(run / "params.json", params)
    _write(run / "plan.json", plan)
    env = {"hostname": "gpu-box" if gpu else "cpu-box", "cpu": "Some CPU", "cpu_affinity": 16, "cpu_logical_cores": 16,
           "libraries": {"torch": "2.9.0", "onnxruntime-gpu": "1.23.0"},
           "gpu": {"name": gpu_name, "driver": "580.1", "cuda_driver": "13.0", "sm_clock_max_mhz": 1980,
                   "power_limit_w": 700.0} if gpu else None}
    modes = ["device", "end_to_end", "throughput"] if gpu else ["device", "end_to_end"]
    for (b, p), base in combos.items():
        d = run / "bench" / f"{b}-{p}"
        if crash_all or (failures and gpu and (b, p) == ("ort", "fp32")):
            _write(d / "notebook.failed.json", {"error": "DeadKernelError: Kernel died", "seconds": 3.0})
            continue
        _write(d / "engine.json", {"backend": b, "precision": p, "device": device, "summary": f"{b} engine",
                                   "load_s": 1.5, "info": {}, "baseline": {"rss_mib": 500.0}, "timer":
                                   "cuda_event" if gpu else "perf_counter", "reference": "PyTorch FP32 (CPU)",
                                   "environment": env, "sentinel": "a test sentinel",
                                   "passes": {"1": {"load_s": 1.5, "t_origin_unix": 1000.0},
                                              "2": {"load_s": 0.5, "t_origin_unix": 1100.0}}})
        t, ticks, medians = 0.5, [], {}
        for shape, batch in [(sh, bt) for sh in shapes for bt in batches]:
            key = f"bs{batch}_{shape}"
            pixels = np.prod([int(v) for v in shape.split("x")]) / 1024
            if failures and gpu and (b, p) == ("trt", "fp16") and batch == 16:
                _write(d / "points" / f"{key}.json", {"backend": b, "precision": p, "device": device, "batch": batch,
                                                      "shape": shape, "point": key, "status": "oom",
                                                      "error": "OutOfMemoryError: CUDA out of memory"})
                continue
            frames, rounds = [], []
            for mode in modes:
                n = 20 if mode == "throughput" else 60
                med = base * (0.4 + 0.6 * batch * pixels) / speed * (0.8 if mode == "throughput" else 1.0)
                med *= 1.15 if mode == "end_to_end" else 1.0
                ms = med * (1 + 0.01 * rng.standard_normal(n))
                if (b, p) == ("torch", "fp32") and batch == 4:
                    ms = med * (1 + 0.2 * rng.standard_normal(n)).clip(0.5)  # an unstable point
                per = n // ROUNDS
                for r in range(ROUNDS):  # lib.bench's rounds: half in each pass
                    x = ms[r * per:(r + 1) * per]
                    start = t
                    ts = t + np.cumsum(x) / 1e3
                    t = float(ts[-1]) + 0.3
                    frames.append(pd.DataFrame({"mode": mode, "round": r + 1, "pass": 1 + r // 2,
                                                "iter": np.arange(per), "ms": x, "wall_ms": x + 0.01, "t_s": ts,
                                                "requests": 8 if mode == "throughput" else 1}))
                    for tt in np.arange(start, t, 0.1):
                        tick = {"t_s": tt, "label": f"{b}/{p} bs={batch} shape={shape} {mode}", "rss_mib": 900.0,
                                "cpu_percent": 100.0 + rng.standard_normal()}
                        if gpu:
                            hot = throttle and (b, p) == ("trt", "fp16") and batch == 4
                            tick.update(gpu_util=95.0, gpu_mem_util=40.0, gpu_used_mib=3000.0, gpu_proc_mib=1200.0,
                                        sm_clock_mhz=1400.0 if hot else 1980.0, mem_clock_mhz=2619.0,
                                        temp_c=88.0 if hot else 61.0, power_w=690.0 if hot else 420.0,
                                        throttle_reasons=0x20 | 0x4 if hot else 0x0)
                        ticks.append(tick)
                    res = {"ticks": 5, "cpu_percent_mean": 100.0, "rss_mib_peak": 900.0, "throttle": ""}
                    if not resources:
                        res = {"ticks": 0}
                    elif gpu:
                        res.update(gpu_util_mean=95.0, sm_clock_mhz_mean=1900.0, temp_c_mean=62.0,
                                   power_w_mean=420.0, gpu_used_mib_peak=3000.0)
                    rounds.append({"mode": mode, "round": r + 1, "pass": 1 + r // 2,
                                   "timer": "cuda_event" if gpu else "perf_counter", "n": per,
                                   "median_ms": float(np.median(x)), "t0": start, "t1": t,
                                   "sentinel_us": 6.0 + 0.05 * rng.standard_normal(), "switched": True,
                                   "warmup_iters": 5, "warmup_s": 0.03,
                                   "requests_per_sample": 8 if mode == "throughput" else 1, "resources": res})
                if mode == "device":
                    medians[(batch, shape)] = float(np.median(ms))
            bad = failures and gpu and (b, p) == ("torch", "fp16") and batch == 1
            parity = {"passed": not bad, "cosine": 0.98 if bad else 0.99999, "rel_err": 0.2 if bad else 1e-4,
                      "max_abs_err": 0.5 if bad else 1e-4, "top1_agree": 1.0,
                      "problems": "logits: cosine 0.98 < 0.999" if bad else ""}
            _write(d / "points" / f"{key}.json", {"backend": b, "precision": p, "device": device, "batch": batch,
                                                  "shape": shape, "point": key, "status": "ok", "parity": parity,
                                                  "memory": {}, "nvml_process_mib": 1200.0 if gpu else None,
                                                  "compile_s": None, "first_warmup_iters": 5, "rounds": rounds})
            pd.concat(frames).to_parquet(d / "points" / f"{key}.parquet", index=False)
        if gpu:  # lib.bench's kernel profiles: smallest batch launch-bound (40% busy), largest kernel-bound (95%)
            _write(d / "kernels.json", {"points": [_fake_profile(bt, sh, med, b, small=bt == min(batches))
                                                   for (bt, sh), med in medians.items()
                                                   if bt in (min(batches), max(bt2 for bt2, _ in medians))]})
        if samples:
            pd.DataFrame(ticks).to_parquet(d / "samples.parquet", index=False)
        _write(d / "done.json", {"points": 3})
        (d / "benchmark.ipynb").write_text("{}")
    if failures and gpu:
        _write(run / "export.failed.json", {"error": "torch.onnx.export failed: UnsupportedOperatorError: aten::foo"})
    return run


def _fake_profile(batch: int, shape: str, median: float, backend: str, small: bool) -> dict:
    if backend == "trt" and not small:
        return {"batch": batch, "shape": shape, "device_median_ms": median,
                "error": "RuntimeError: CUPTI recorded no GPU activity"}
    busy = median * (0.4 if small else 0.95)
    # (name, launches, share of busy); lib.results derives the readable name and the category from the name
    kernels = [("void cudnn::conv_kernel<float>(int)", 20, 0.6), ("void op_generic_tensor_kernel<4, float>(int)", 30, 0.3),
               ("Memset (Device)", 2, 0.1)]
    return {"batch": batch, "shape": shape, "device_median_ms": median, "iters": 10, "busy_ms": busy,
            "kernel_ms": busy, "launches": 52.0,
            "kernels": [{"name": n, "calls": k, "ms": f * busy} for n, k, f in kernels]}


@pytest.fixture
def gpu_run(tmp_path):
    return lib.load_run(make_fake_run(tmp_path, gpu=True))


@pytest.fixture
def cpu_run(tmp_path):
    return lib.load_run(make_fake_run(tmp_path, gpu=False))


# --- one real run, shared with test_html_render.py and test_compare.py ------------------------------

_REAL: dict = {}


def build_real_run(tmp_path_factory) -> Path:
    """A real tiny_cnn run made with ``make report`` (~30 s), built once per session."""
    if "run" not in _REAL:
        base = tmp_path_factory.mktemp("real")
        reports, cache = base / "reports", base / "cache"
        proc = subprocess.run(["make", "--no-print-directory", "report", "MODEL=tiny_cnn",
                               f"MODELS_DIR={FIXTURE_MODELS}", "ITERS=3", "DURATION=0.1", "WARMUP=0.05",
                               f"REPORTS_DIR={reports}", f"CACHE_DIR={cache}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs = sorted(reports.glob("tiny_cnn/*/report.html"))
        assert runs, f"no report under {reports}: {proc.stderr[-2000:]}"
        _REAL["run"] = runs[-1].parent
    return _REAL["run"]


@pytest.fixture(scope="session")
def real_run_dir(tmp_path_factory):
    return build_real_run(tmp_path_factory)


# --- formatting --------------------------------------------------------------------------------

def test_fmt_num_reads_well():
    assert report.fmt_num(482.73) == "483"
    assert report.fmt_num(48.27) == "48.3"
    assert report.fmt_num(0.02811) == "0.0281"
    assert report.fmt_num(12345.6) == "12,346"
    assert report.fmt_num(None) == "–"
    assert report.fmt_num(float("nan")) == "–"
    assert report.fmt_num(3) == "3"
    assert report.fmt_num(1.37e-6) == "1.37e-06"
    assert report.fmt_num(0.000263) == "0.000263"
    assert report.fmt_pct(0.0523) == "5.2%"


def test_table_hides_index_and_shows_missing_as_dash(gpu_run):
    html = report.table(report.failures_table(gpu_run)).to_html()
    assert "None" not in html and ">nan<" not in html.lower()
    assert "–" in html
    assert "row_heading" not in html  # the index is hidden


# --- loading and failures ---------------------------------------------------------------------------

def test_failures_cover_every_kind(gpu_run):
    f = gpu_run.failures
    statuses = set(f["status"])
    assert {"unavailable", "export failed", "crashed", "oom", "parity failed"} <= statuses, statuses
    crashed = f[f["status"] == "crashed"].iloc[0]
    assert (crashed["backend"], crashed["precision"]) == ("ort", "fp32") and "Kernel died" in crashed["reason"]
    oom = f[f["status"] == "oom"].iloc[0]
    assert (oom["backend"], oom["batch"]) == ("trt", 16)
    assert "aten::foo" in f[f["status"] == "export failed"].iloc[0]["reason"]


def test_interrupted_sweep_lists_missing_points(tmp_path):
    path = make_fake_run(tmp_path, gpu=False)
    d = path / "bench" / "ort-fp32"
    (d / "done.json").unlink()
    for f in d.glob("points/bs16_*"):
        f.unlink()
    run = lib.load_run(path)
    missing = run.failures[run.failures["status"] == "not run"]
    assert list(zip(missing["backend"], missing["batch"])) == [("ort", 16)]


def test_load_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(lib.BenchbookError, match="not a benchbook run"):
        lib.load_run(tmp_path)
    with pytest.raises(lib.BenchbookError, match="does not exist"):
        lib.load_run(tmp_path / "nope")


# --- decisions ---------------------------------------------------------------------------------------

def test_speedups_have_intervals_from_rounds(gpu_run):
    sp = report.speedups(gpu_run)
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
    grid = report.speedup_table(sp, gpu_run)
    assert "batch 1" in grid.columns and "configuration" in grid.columns
    assert grid["batch 1"].str.contains("×").all()


def test_no_baseline_means_no_speedups(tmp_path):
    path = make_fake_run(tmp_path, gpu=False)
    shutil.rmtree(path / "bench" / "torch-fp32")
    plan = json.loads((path / "plan.json").read_text())
    plan["combos"] = [{"backend": "ort", "precision": "fp32"}]
    (path / "plan.json").write_text(json.dumps(plan))
    run = lib.load_run(path)
    sp = report.speedups(run)
    assert sp.empty
    assert "no PyTorch eager FP32" in report.speedup_table(sp, run).iloc[0, 0]
    assert "No PyTorch eager FP32" in report.summary_markdown(run, sp)


def test_decisions_skip_parity_failures_and_pick_the_fastest(gpu_run):
    sp = report.speedups(gpu_run)
    d = report.decision_table(gpu_run, sp)
    assert list(d["batch"]) == [1, 4, 16]
    row1 = d[d["batch"] == 1].iloc[0]
    tail = report.tail_label(gpu_run)
    assert tail == "p95"  # 15-30 samples per point: p99 would be the sample's maximum
    assert row1[f"lowest {tail}, device-resident"].startswith("trt/fp16")
    assert "vs torch/fp32" in row1[f"lowest {tail}, end-to-end"]
    assert "highest throughput (pipelined)" in d.columns
    # batch 16: trt ran out of memory there, torch/fp16 is next fastest
    assert d[d["batch"] == 16].iloc[0][f"lowest {tail}, device-resident"].startswith("torch/fp16")
    # torch/fp16 at batch 1 failed parity: never recommended
    ok = report._usable(gpu_run)
    assert not ((ok["series"] == "torch/fp16") & (ok["batch"] == 1)).any()


def test_budget_picks_highest_throughput_within_budget(gpu_run):
    t = report.budget_table(gpu_run, budget_ms=5.0)
    assert len(t) and (t["p95 ms"] <= 5.0).all()
    assert list(t["items/s"]) == sorted(t["items/s"], reverse=True)
    assert "items/s pipelined" in t.columns
    md = report.budget_markdown(gpu_run, 5.0)
    assert f"{t.iloc[0]['configuration']} at batch {t.iloc[0]['batch']}" in md
    assert "no configuration meets it" in report.budget_markdown(gpu_run, 0.01)


def test_summary_mentions_throttling_and_failures(gpu_run):
    md = report.summary_markdown(gpu_run, report.speedups(gpu_run), 10.0)
    assert "Lowest latency at batch 1" in md and "trt/fp16" in md
    assert "throttled" in md and "sw_thermal" in md
    assert "crashed" in md and "oom" in md
    assert "failed parity" in md


def test_latency_throughput_and_speedup_figures(gpu_run, cpu_run):
    import matplotlib.pyplot as plt

    for run in (gpu_run, cpu_run):
        sp = report.speedups(run)
        fig = report.plot_latency_throughput(run, 5.0)
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and len(ax.get_lines()) >= 2
        assert report.plot_speedups(run, sp, "end_to_end") is not None
        plt.close("all")


# --- every cell of the analysis notebook, on runs at the edges --------------------------------------

def run_analysis_cells(run_dir: Path, budget_ms: float = 10.0) -> dict:
    """Execute the analysis notebook's code cells in this process (display() prints; no kernel), with the
    parameters set; returns the namespace. Fast, so edge cases can each get a whole-notebook run."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "20_analysis.ipynb", as_version=4)
    ns: dict = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, "<analysis cell>", "exec"), ns)
        if "parameters" in cell.metadata.get("tags", []):
            ns.update(run_dir=str(run_dir), outliers="", budget_ms=budget_ms)
    return ns


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
        assert set(report.decision_table(ns["run"], ns["sp"])["shape"]) == {"32x32", "64x64"}
    plt.close("all")


# --- stability ---------------------------------------------------------------------------------------------

def test_gpu_health_shows_throttling(gpu_run):
    h = report.health_table(gpu_run).set_index("configuration")
    assert h.loc["trt/fp16", "% ticks throttled"] > 0
    assert "sw_thermal" in h.loc["trt/fp16", "reasons"] and "sw_power_cap" in h.loc["trt/fp16", "reasons"]
    assert h.loc["torch/fp32", "% ticks throttled"] == 0 and h.loc["torch/fp32", "reasons"] == "none"
    assert h.loc["trt/fp16", "SM MHz min"] == 1400
    figs = report.plot_health(gpu_run)
    assert len(figs) == 3  # ort/fp32 crashed: no timeline
    labels = [a.get_ylabel() for a in figs[0].axes]
    assert "SM MHz" in labels and "temp °C" in labels and "power W" in labels


def test_cpu_health_shows_cpu_and_rss(cpu_run):
    assert not cpu_run.has_gpu_samples
    h = report.health_table(cpu_run)
    assert "RSS MiB peak" in h.columns and "SM MHz median" not in h.columns
    labels = [a.get_ylabel() for a in report.plot_health(cpu_run)[0].axes]
    assert any("CPU %" in x for x in labels) and "RSS MiB" in labels
    assert "CPU run" in report.health_markdown(cpu_run)


def test_unstable_points_listed(gpu_run):
    u = report.unstable_table(gpu_run)
    assert set(u["configuration"]) == {"torch/fp32"} and set(u["batch"]) == {4}
    assert (u["CV"] > 0.05).all()


# --- results as data -------------------------------------------------------------------------------------

def test_to_parquet_round_trip(gpu_run, tmp_path):
    written = gpu_run.to_parquet(tmp_path / "out")
    assert sorted(p.name for p in written) == ["iterations.parquet", "kernel_points.parquet", "kernels.parquet",
                                               "points.parquet", "rounds.parquet", "samples.parquet"]
    kp = pd.read_parquet(tmp_path / "out" / "kernel_points.parquet")
    assert len(kp) == len(gpu_run.kernel_points) and kp["busy_share"].dtype.kind == "f"
    it = pd.read_parquet(tmp_path / "out" / "iterations.parquet")
    assert len(it) == len(gpu_run.iterations)
    assert {"backend", "precision", "batch", "shape", "mode", "iter", "ms", "wall_ms", "t_s", "requests"} <= set(it)
    s = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    assert {"t_s", "sm_clock_mhz", "temp_c", "power_w", "throttle_reasons"} <= set(s)
    pts = pd.read_parquet(tmp_path / "out" / "points.parquet")
    assert len(pts) == len(gpu_run.points) and pts["nvml_process_mib"].dtype.kind == "f"
    # the default target is the run folder itself
    assert all(p.parent == gpu_run.path for p in gpu_run.to_parquet())


def test_write_tables_and_links(gpu_run):
    sp = report.speedups(gpu_run)
    written = report.write_tables(gpu_run, sp)
    for name in ("iterations.parquet", "samples.parquet", "points.parquet", "summary.csv", "failures.csv",
                 "speedup.csv"):
        assert name in written and (gpu_run.path / name).exists()
    md = report.notebooks_markdown(gpu_run)
    assert "`bench/torch-fp32/benchmark.ipynb`" in md and "`bench/trt-fp16/benchmark.ipynb`" in md
    assert "ort/fp32: no executed notebook" in md and "is missing" in md  # crashed before writing it
    # issue 14: named, not linked: a report mailed on its own has no dead links
    assert "](" not in md and "](" not in report.data_markdown(gpu_run, written)


def test_run_copied_elsewhere_loads_the_same(tmp_path):
    a = make_fake_run(tmp_path / "a", gpu=True)
    b = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(a, b)
    ra, rb = lib.load_run(a), lib.load_run(b)
    pd.testing.assert_frame_equal(ra.points, rb.points)
    assert rb.path == b


# --- the real pipeline (slow) -------------------------------------------------------------------------------

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


def test_resources_note_says_why_the_gpu_was_not_sampled(tmp_path):
    """The sampler's NVML error is kept in engine.json and the report quotes it (it used to be dropped)."""
    run_dir = make_fake_run(tmp_path, gpu=True)
    eng = run_dir / "bench" / "torch-fp32" / "engine.json"
    e = json.loads(eng.read_text())
    e["sampler_gpu_error"] = "GpuError: NVML cannot start (NVMLError_LibraryNotFound)"
    eng.write_text(json.dumps(e))
    note = report.resources_note(lib.load_run(run_dir))
    assert "no GPU figures (NVML) for torch/fp32" in note and "NVMLError_LibraryNotFound" in note


def test_parity_failed_points_are_marked_in_the_plots(gpu_run):
    """The fake run's torch/fp16 batch 1 failed parity: the latency plot crosses it out and says so."""
    import matplotlib.pyplot as plt

    fig = report.plot_latency_vs_batch(gpu_run, "device")
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]  # one legend, below the panels
    assert "parity failed" in labels
    crosses = [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [1]
    plt.close("all")


def test_parity_table_has_a_row_per_output(tmp_path):
    run_dir = make_fake_run(tmp_path, gpu=False, failures=False)
    for pj in run_dir.glob("bench/*/points/*.json"):
        rec = json.loads(pj.read_text())
        rec["parity"]["outputs"] = {"logits": {"cosine": 0.99999, "rel_err": 1e-4, "max_abs_err": 1e-4,
                                               "centred_cosine": 0.9999, "centred_rel_err": 1e-3},
                                    "embedding": {"cosine": 0.9991, "rel_err": 2e-3, "max_abs_err": 3e-3,
                                                  "centred_cosine": 0.9990, "centred_rel_err": 1e-2}}
        pj.write_text(json.dumps(rec))
    t = report.parity_table(lib.load_run(run_dir))
    assert set(t["output"]) == {"logits", "embedding"} and len(t) == 2 * len(t.drop_duplicates(
        ["backend", "precision", "batch", "shape"]))
    assert "cosine, input-dependent part" in t.columns


# --- summary bugs (issue 12) -----------------------------------------------------------------------------

def test_budget_bullet_names_the_input_shape_and_the_table_lists_every_fit(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, shapes=("32x32", "64x64"), batches=(1, 2, 4, 8, 16)))
    text = report.budget_markdown(run, 1000.0)
    assert "(shape 32x32)" in text or "(shape 64x64)" in text
    assert "shape (" not in text  # was the pandas row's own .shape, e.g. "shape (38,)"
    n = int(text.split(" configurations meet the budget")[0].rsplit(" ", 1)[-1])
    assert n > 8 and len(report.budget_table(run, 1000.0)) == n  # was cut to 8 rows


def test_unstable_table_says_none_when_nothing_is_unstable(gpu_run):
    gpu_run.points["unstable"] = False
    gpu_run.points["noisy"] = False
    u = report.unstable_table(gpu_run)
    assert list(u.columns) == ["flagged points"] and len(u) == 1 and u.iloc[0, 0].startswith("none")


def test_no_usable_points_gives_an_empty_frame_not_rows_of_nan(gpu_run):
    gpu_run.points["parity_passed"] = False
    assert report._usable(gpu_run).empty


def test_a_peak_the_model_beats_is_not_quoted_as_a_share(cpu_run):
    eff = pd.DataFrame([{"backend": "ort", "precision": "fp32", "batch": 16, "shape": "32x32", "mode": "device",
                         "items_per_s": 1e4, "gflop_per_item": 1.0, "achieved_tflops": 0.45, "peak_tflops": 0.2,
                         "peak_share": 2.249, "peak_label": "measured", "peak_source": "measured"}])
    text = report.summary_markdown(cpu_run, None, 10.0, eff)
    assert "224.9%" not in text and "no share of peak is given" in text


def test_cpu_ep_fallback_is_reported(gpu_run):
    gpu_run.engines["trt/fp16"].setdefault("info", {})["cpu_ep_fallback"] = (
        "Fail: This session contains graph nodes that are assigned to the default CPU EP")
    text = report.summary_markdown(gpu_run, None, 10.0)
    assert "runs part of the graph on the CPU EP" in text and "trt/fp16" in text


def test_allocator_peak_and_tensorrt_scratch_are_separate_columns(tmp_path):
    """They used to share one "framework MiB" column (torch's allocator peak vs TensorRT's activation scratch)."""
    run_dir = make_fake_run(tmp_path, gpu=True, failures=False)
    for pj in run_dir.glob("bench/*/points/*.json"):
        rec = json.loads(pj.read_text())
        rec["memory"] = ({"trt_engine_device_memory_bytes": 3 << 20, "trt_io_buffer_bytes": 1 << 20}
                         if rec["backend"] == "trt" else {"torch_max_allocated_bytes": 40 << 20,
                                                          "torch_max_reserved_bytes": 64 << 20})
        pj.write_text(json.dumps(rec))
    run = lib.load_run(run_dir)
    p = run.points.set_index("backend")
    assert (p.loc["trt", "trt_activation_mib"] == 3).all() and p.loc["trt", "torch_max_allocated_mib"].isna().all()
    assert (p.loc["torch", "torch_max_allocated_mib"] == 40).all() and p.loc["torch", "trt_activation_mib"].isna().all()
    cols = report.summary_table(run).columns
    assert "torch allocator peak MiB" in cols and "TensorRT activation MiB" in cols and "framework MiB" not in cols
# --- issue 14: order and legibility rules that can be checked without a browser ---------------------------

def test_tables_sort_batches_and_shapes_as_numbers(tmp_path):
    run = lib.load_run(make_fake_run(tmp_path, gpu=True, batches=(1, 8, 32, 128), shapes=("128x128", "16x16"),
                                     failures=False))
    for frame in (report.parity_table(run), report.measurements_table(run)):
        cfg = frame["configuration"] if "configuration" in frame else frame["backend"] + "/" + frame["precision"]
        for (_, shape), g in frame.assign(cfg=cfg).groupby(["cfg", "shape"], sort=False):
            if "mode" in g:
                g = g[g["mode"] == g["mode"].iloc[0]]
            assert list(g["batch"]) == sorted(g["batch"]), list(g["batch"])
        first = frame.assign(cfg=cfg).drop_duplicates("cfg")
        assert list(frame.assign(cfg=cfg).query("cfg == @first.cfg.iloc[0]")["shape"].drop_duplicates()) == \
            ["16x16", "128x128"]
    sp = report.speedups(run)
    assert list(report.decision_table(run, sp)["shape"].drop_duplicates()) == ["16x16", "128x128"]
    grid = report.speedup_table(sp, run)
    assert list(grid[grid["mode"] == grid["mode"].iloc[0]]["shape"].drop_duplicates()) == ["16x16", "128x128"]
    from lib.plots import sorted_shapes

    assert sorted_shapes(["512", "128", "1024"]) == ["128", "512", "1024"]
    assert sorted_shapes(["288x288", "224x224", "static"]) == ["static", "224x224", "288x288"]


def test_modes_are_worded_as_everywhere_else_in_the_measurements_table(gpu_run):
    modes = set(report.measurements_table(gpu_run)["mode"])
    assert modes == {"device-resident", "end-to-end", "pipelined"}


def test_speedup_panels_share_one_scale(tmp_path):
    import matplotlib.pyplot as plt

    run = lib.load_run(make_fake_run(tmp_path, gpu=True, shapes=("16x16", "32x32"), failures=False))
    fig = report.plot_speedups(run, report.speedups(run), "end_to_end")
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
    fig = report.plot_latency_throughput(run, 10.0)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(r) for t in ax.texts]
        assert boxes, "the frontier is labelled"
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert fig.legends and all(not ax.get_legend() for ax in fig.axes)  # one legend, below the panels
    assert fig.get_size_inches()[0] <= 9.6
    plt.close("all")


def test_importing_the_report_and_compare_modules_changes_nothing_global():
    """No side effects at import: a user's own plots in the same kernel keep their style, the environment its
    variables (the notebooks call report.use_style() themselves)."""
    import subprocess
    import sys

    code = ("import os, matplotlib; before = dict(matplotlib.rcParams); env = dict(os.environ)\n"
            "import lib.report, lib.compare, lib.plots\n"
            "changed = [k for k in before if matplotlib.rcParams[k] != before[k]]\n"
            "assert not changed, changed\n"
            "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
            "lib.report.use_style(); assert matplotlib.rcParams['axes.grid'] is True\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr[-2000:]
