"""Run folders for the report's tests. Synthetic ones (``make_fake_run``) are written in exactly the layout
``lib.sweep.bench`` writes (a GPU run with NVML columns, throttling, a crash, an OOM and a parity failure; and a CPU
run), so the GPU code paths are exercised on a machine without a GPU; ``build_real_run`` makes one real tiny
run with ``make report`` (shared through the ``real_run_dir`` fixture of ``conftest.py``);
``run_analysis_cells`` executes the analysis notebook's cells in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"
sys.path.insert(0, str(ROOT))  # this checkout's lib, whatever is installed

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
    """A run folder as lib.sweep.bench writes it. ``speed`` divides every latency (a faster 'run B');
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
                for r in range(ROUNDS):  # lib.sweep.bench's rounds: half in each pass
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
        if gpu:  # lib.sweep.bench's kernel profiles: smallest batch launch-bound (40% busy), largest kernel-bound (95%)
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
    # (name, launches, share of busy); lib.results.run derives the readable name and the category from the name
    kernels = [("void cudnn::conv_kernel<float>(int)", 20, 0.6), ("void op_generic_tensor_kernel<4, float>(int)", 30, 0.3),
               ("Memset (Device)", 2, 0.1)]
    return {"batch": batch, "shape": shape, "device_median_ms": median, "iters": 10, "busy_ms": busy,
            "kernel_ms": busy, "launches": 52.0,
            "kernels": [{"name": n, "calls": k, "ms": f * busy} for n, k, f in kernels]}


# --- one real run, shared by the report's tests (test_render.py, test_compare.py ...) ----------------

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


# --- every cell of the analysis notebook ------------------------------------------------------------

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
