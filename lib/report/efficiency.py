"""Section "Efficiency": achieved FLOP/s against the device's peak (FLOPs and peaks come from ``lib.measure.flops``
and ``lib.measure.peaks``, which cache what they count in the run folder; nothing is measured here).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..results.run import Run
from .format import fmt_num
from .markup import md
from .plots import legend_below
from .points import MODE_SHORT, multi_shape, palette, rate_mode, series_order


def efficiency_markdown(run: Run, flops: pd.DataFrame, peaks: dict, eff: pd.DataFrame | None = None) -> str:
    parts = []
    for r in flops.itertuples(index=False):
        if np.isfinite(r.flops_per_item):
            parts.append(f"shape {md(r.shape)}: **{fmt_num(r.flops_per_item / 1e9)} GFLOP per item**")
        else:
            parts.append(f"shape {md(r.shape)}: not counted ({md(r.note)})")
    peak_lines = [f"- {md(k.upper())}: **{fmt_num(v.tflops)} TFLOP/s** — {md(v.label)}" for k, v in peaks.items()]
    tf32 = run.device == "cuda" and bool(run.params.get("tf32", True))
    notes = ("FP32 on this GPU ran with TF32 allowed (`tf32=1`), so FP32 points are compared with the TF32 peak."
             if tf32 else "")
    methods = sorted({str(m) for m in flops.get("method", pd.Series(dtype=str)) if m})
    method = md("; ".join(methods)) if methods else "the benchmark step's counter"
    return ("FLOPs counted once per shape by the benchmark step with " + method + " (convolutions, matrix "
            "multiplies and attention; a multiply-add counts 2; elementwise ops are not counted), stored in "
            "`flops.json` (by operator in the table below): " + "; ".join(parts) + ". Achieved TFLOP/s = FLOPs per item × "
            "items/s. Peaks used:\n\n" + ("\n".join(peak_lines) or "- none") +
            ("\n\n" + notes if notes else "") +
            ("\n\nA *measured* peak is the best rate of a large matrix multiply with torch on this machine "
             "(`peaks.json`): it is what this machine reached, not a datasheet figure." if any(
                 v.source == "measured" for v in peaks.values()) else "") +
            ("\n\n**Some points exceed 100% of the measured peak**: the peak was measured while the machine was "
             "busier than during those measurements (or the model's kernels beat a plain matmul). Delete `peaks.json` "
             "and re-run the analysis on a quiet machine to measure it again."
             if eff is not None and not eff.empty and (eff["peak_share"] > 1).any() else ""))


def efficiency_table(run: Run, eff: pd.DataFrame, mode: str | None = None) -> pd.DataFrame:
    if eff is None or eff.empty:
        return pd.DataFrame()
    mode = mode or rate_mode(run)
    d = eff[eff["mode"] == mode].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    out = pd.DataFrame({"configuration": d["series"], "batch": d["batch"], "shape": d["shape"],
                        "items/s": d["items_per_s"], "GFLOP per item": d["gflop_per_item"],
                        "achieved TFLOP/s": d["achieved_tflops"], "peak TFLOP/s": d["peak_tflops"],
                        "% of peak": d["peak_share"]})  # which peak each precision uses is listed above the table
    if not multi_shape(run):
        out = out.drop(columns="shape")
    return out.sort_values(["configuration", "batch"]).reset_index(drop=True)


def plot_efficiency(run: Run, eff: pd.DataFrame, mode: str | None = None):
    if eff is None or eff.empty or not eff["achieved_tflops"].notna().any():
        return None
    mode = mode or rate_mode(run)
    d = eff[eff["mode"] == mode].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    pal = palette(run)
    has_share = d["peak_share"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_share else 1, figsize=(9.6 if has_share else 6.5, 3.8), squeeze=False)
    for ax, col, label in zip(axes[0], ("achieved_tflops", "peak_share"), ("achieved TFLOP/s", "share of peak (%)")):
        for shape in sorted(d["shape"].unique()):
            for s in [s for s in series_order(run) if s in set(d["series"])]:
                g = d[(d["series"] == s) & (d["shape"] == shape)].sort_values("batch")
                y = g[col] * (100 if col == "peak_share" else 1)
                ax.plot(g["batch"], y, "-o", color=pal.get(s), ms=5,
                        label=s + (f" {shape}" if d["shape"].nunique() > 1 else ""))
        ax.set_xscale("log", base=2)
        batches = sorted(d["batch"].unique())
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{label} ({MODE_SHORT[mode]})")
    fig.tight_layout()
    legend_below(fig, *axes[0, 0].get_legend_handles_labels())  # below the axes, not over the batch-1 points
    return fig
