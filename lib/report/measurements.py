"""Section "All measurements": every point and mode with the columns that decide, and the full summary
table written as ``summary.csv``.
"""

from __future__ import annotations

import pandas as pd

from ..results.run import Run
from .format import fmt_num, is_missing
from .plots import shape_key
from .points import MODE_SHORT, multi_shape, series_order, tail_label


def summary_table(run: Run, mode: str | None = None) -> pd.DataFrame:
    """One row per backend x precision x batch x shape x mode: statistics over every raw sample, the interval
    from the rounds, flags; the outlier rule's figures only in the columns labelled presentation."""
    p = run.points
    if p.empty:
        return p
    if mode:
        p = p[p["mode"] == mode]
    cols = {"backend": "backend", "precision": "precision", "batch": "batch", "shape": "shape", "mode": "mode",
            "median_ms": "median ms", "ci_low_ms": "95% low ms", "ci_high_ms": "95% high ms", "rounds": "rounds",
            "items_per_s": "items/s", "cv": "CV", "noisy": "noisy", "unstable": "unstable", "p90_ms": "p90 ms",
            "p95_ms": "p95 ms", "p99_ms": "p99 ms", "mean_ms": "mean ms", "std_ms": "std ms", "min_ms": "min ms",
            "max_ms": "max ms", "n": "samples", "filtered_median_ms": "filtered median ms (presentation)",
            "dropped": "outliers dropped (presentation)"}
    out = p[list(cols)].rename(columns=cols)
    extra = {"res_rss_mib_peak": "peak RSS MiB", "res_cpu_percent_mean": "CPU %·core", "res_gpu_util_mean": "GPU util",
             "res_sm_clock_mhz_mean": "SM MHz", "res_temp_c_mean": "temp °C", "res_power_w_mean": "power W",
             "nvml_process_mib": "VRAM process MiB (NVML)", "torch_max_allocated_mib": "torch allocator peak MiB",
             "trt_activation_mib": "TensorRT activation MiB", "res_throttle": "throttle"}
    for k, label in extra.items():
        if k in p and p[k].map(lambda v: not is_missing(v) and v != "").any():
            out[label] = p[k].values
    return out.sort_values(["mode", "shape", "batch", "median ms"]).reset_index(drop=True)


def measurements_table(run: Run) -> pd.DataFrame:
    """"All measurements" for a reader: one row per point and mode, the columns that decide (median and its
    95 % interval from the rounds, the supported tail percentile, items/s, CV, flags, rounds, samples) and the
    resources that explain them; the full set of statistics is in ``summary.csv`` and ``points.parquet``."""
    p = run.points
    if p.empty:
        return p
    out = pd.DataFrame({"configuration": p["backend"] + "/" + p["precision"], "batch": p["batch"],
                        "shape": p["shape"], "mode": p["mode"].map(lambda m: MODE_SHORT.get(m, m)),
                        "median ms (95% interval)": [f"{fmt_num(m)} ({fmt_num(lo)}–{fmt_num(hi)})" for m, lo, hi in
                                                     zip(p["median_ms"], p["ci_low_ms"], p["ci_high_ms"])],
                        f"{tail_label(run)} ms": p["tail_ms"], "items/s": p["items_per_s"],
                        "CV": p["cv"], "unstable": p["unstable"]})
    if "noisy" in p:
        out["noisy"] = p["noisy"].values
    out["rounds"] = p["rounds"].values  # the sample counts are in summary.csv
    extra = {"nvml_process_mib": "VRAM MiB", "res_gpu_util_mean": "GPU util %", "res_power_w_mean": "power W",
             "res_rss_mib_peak": "peak RSS MiB"}
    for k, label in extra.items():
        if k in p and p[k].map(lambda v: not is_missing(v) and v != "").any():
            if label == "peak RSS MiB" and "VRAM MiB" in out:
                continue  # on a GPU the device memory is the one that limits
            out[label] = p[k].values
    if not multi_shape(run):
        out = out.drop(columns="shape")
    keys = pd.DataFrame({"m": p["mode"].map({m: i for i, m in enumerate(MODE_SHORT)}).values,
                         "s": p["shape"].map(shape_key).values, "b": p["batch"].values,
                         "c": (p["backend"] + "/" + p["precision"]).map(
                             {s: i for i, s in enumerate(series_order(run))}).values})
    return out.iloc[keys.sort_values(["m", "s", "b", "c"], kind="stable").index].reset_index(drop=True)
