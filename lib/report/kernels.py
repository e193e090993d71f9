"""The report's "Where the GPU time goes" section: display of ``run.kernel_points`` and ``run.kernels``
(CUPTI profiles taken by ``lib.measure.kernels`` after each sweep's timing). Reads the loaded run only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..measure.kernels import CATEGORIES, short_name
from ..results.run import Run
from .format import fmt_num
from .markup import code, md
from .points import series_order

__all__ = ["kernels_markdown", "kernel_points_table", "top_kernels_table", "plot_kernel_categories",
           "LAUNCH_BOUND_SHARE"]

# Below this share of the request the GPU was busy, the host (launches, framework overhead) set the pace.
LAUNCH_BOUND_SHARE = 0.6
# Stacking order of the bars: the work itself first, data movement and the rest last.
_STACK = ("convolution / matmul", "attention", "normalization", "elementwise / activation", "reduction / pooling",
          "layout (NCHW<->NHWC, transpose, cast)", "copy/memset", "other")
assert set(_STACK) == set(CATEGORIES), "every category needs a place in the stack"
_COLOURS = dict(zip(_STACK, ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
                                 "#8c8c8c", "#ccb974"]))


def _profiled(run: Run) -> pd.DataFrame:
    kp = run.kernel_points
    if kp.empty:
        return kp
    kp = kp[kp["error"].isna() & kp["busy_ms"].notna()] if "error" in kp else kp
    order = {s: i for i, s in enumerate(series_order(run))}
    kp = kp.assign(series=kp["backend"] + "/" + kp["precision"])
    return kp.assign(_o=kp["series"].map(order)).sort_values(["_o", "shape", "batch"]).drop(columns="_o")


def fmt_count(v) -> str:
    """Launches per request: whole numbers without decimals (69, not 69.0); a fraction keeps one."""
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


def _whole(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    """``col`` as integers when every value is whole (launch counts: 69, not 69.0)."""
    v = frame[col]
    if len(v) and v.notna().all() and (v - v.round()).abs().max() < 1e-9:
        frame[col] = v.round().astype(int)
    return frame


def _ends(kp: pd.DataFrame, which: str) -> pd.DataFrame:
    """Per series and shape, the row of its smallest (``idxmin``) or largest (``idxmax``) profiled batch,
    in the report's series order (``kp`` comes sorted from ``_profiled``)."""
    idx = getattr(kp.groupby(["series", "shape"], sort=False)["batch"], which)()
    return kp.loc[kp.index.isin(idx)]


def _kernels_at(k: pd.DataFrame, point) -> pd.DataFrame:
    """The rows of ``run.kernels`` recorded at one profiled point (a row of ``run.kernel_points``), slowest first."""
    m = ((k["backend"] == point["backend"]) & (k["precision"] == point["precision"]) & (k["batch"] == point["batch"])
         & (k["shape"] == point["shape"]))
    return k[m].sort_values("ms", ascending=False)


def _by_category(rows: pd.DataFrame) -> pd.Series:
    """ms per request by category, largest first."""
    return rows.groupby("category")["ms"].sum().sort_values(ascending=False)


def _regime(share) -> str:
    if share is None or not np.isfinite(share):
        return "–"
    return "launch-bound" if share < LAUNCH_BOUND_SHARE else "kernel-bound"


def kernels_markdown(run: Run) -> str:
    if run.device != "cuda":
        return ("Kernel profiles are taken on a GPU only (CUPTI); this run was on a CPU. Where a CPU's time goes "
                "is best seen with `py-spy` or the framework's own profiler.")
    kp = _profiled(run)
    errors = run.kernel_points[run.kernel_points["error"].notna()] if not run.kernel_points.empty else run.kernel_points
    lines = [
        "After each backend's sweep, its smallest and largest measured batch of each shape are run again, 10 "
        "device-resident requests, under CUPTI (`torch.profiler`), which records every CUDA kernel, copy and memset "
        "in the process, whichever library launched it. **GPU busy** is the time at least one of them ran, per "
        "request; beside it, the timed (un-profiled) device-resident median. Their ratio says what limits a point: "
        f"under {LAUNCH_BOUND_SHARE:.0%} busy the GPU waited for the host (**launch-bound**: CUDA graphs, a larger "
        "batch or less framework overhead help); near 100% it is **kernel-bound** (only faster or fewer kernels "
        "help: fusion, lower precision, another backend's kernels). Categories come from kernel names and are "
        "heuristics; the full names are in `kernels.parquet`. Profiling adds host overhead per launch and can "
        "stretch kernels by a few percent (a share a little above 100% is kernel-bound), so these figures explain "
        "the timed ones and never replace them.",
    ]
    if kp.empty:
        lines.append("\nNo kernel profile was recorded in this run" + (
            f" ({len(errors)} failed: {md(errors['error'].iloc[0][:200])})." if len(errors) else "."))
        return "\n".join(lines)
    lines[-1] += "\n"
    big = _ends(kp, "idxmax")
    bound = big[big["busy_share"] >= LAUNCH_BOUND_SHARE]
    if len(bound):
        k = run.kernels
        for _, r in bound.iterrows():
            rows = _kernels_at(k, r)
            if rows.empty:
                continue
            top, cats = rows.iloc[0], _by_category(rows)
            lines.append(f"- **{md(r['series'])}** at batch {r['batch']}: GPU busy {fmt_num(r['busy_ms'])} ms of "
                         f"{fmt_num(r['device_median_ms'])} ms; most of it {md(cats.index[0])} "
                         f"({fmt_num(cats.iloc[0])} ms); slowest kernel {code(top['short'])} "
                         f"({fmt_num(top['ms'])} ms over {fmt_count(top['calls'])} launches).")
    small = _ends(kp, "idxmin")
    launch = small[small["busy_share"] < LAUNCH_BOUND_SHARE]
    if len(launch):
        names = ", ".join(f"{md(r['series'])} ({r['busy_share']:.0%} busy at batch {r['batch']})"
                          for _, r in launch.iterrows())
        lines.append(f"- Launch-bound: {names}.")
    if len(errors):
        lines.append(f"- Not profiled: " + "; ".join(f"{md(r['backend'] + '/' + r['precision'])} batch {r['batch']}: "
                                                    f"{md(str(r['error'])[:160])}" for _, r in errors.iterrows()) + ".")
    return "\n".join(lines)


def kernel_points_table(run: Run) -> pd.DataFrame:
    kp = _profiled(run)
    if kp.empty:
        return pd.DataFrame()
    k = run.kernels
    rows = []
    for _, r in kp.iterrows():
        sub = _kernels_at(k, r)
        cats, top = _by_category(sub), sub.head(1)
        rows.append({
            "backend/precision": r["series"], "batch": r["batch"], "shape": r["shape"],
            "device median ms": r["device_median_ms"], "GPU busy ms": r["busy_ms"], "share busy": r["busy_share"],
            "regime": _regime(r["busy_share"]), "launches": r["launches"],
            "largest categories (ms)": ", ".join(f"{c} {fmt_num(v)}" for c, v in cats.head(3).items()),
            "slowest kernel (ms)": (f"{short_name(top['kernel'].iloc[0], 60)} ({fmt_num(top['ms'].iloc[0])})"
                                    if len(top) else "–"),
        })
    return _whole(pd.DataFrame(rows), "launches")


def top_kernels_table(run: Run, n: int = 5) -> pd.DataFrame:
    """The ``n`` kernels that take longest per request, at each series' largest profiled batch."""
    kp = _profiled(run)
    if kp.empty:
        return pd.DataFrame()
    big = _ends(kp, "idxmax")
    k = run.kernels
    rows = []
    for _, r in big.iterrows():
        for _, x in _kernels_at(k, r).head(n).iterrows():
            rows.append({"backend/precision": r["series"], "batch": r["batch"], "shape": r["shape"],
                         "kernel": x["short"], "category": x["category"], "launches": x["calls"], "ms": x["ms"],
                         "share of busy": x["ms"] / r["busy_ms"] if r["busy_ms"] else None})
    return _whole(pd.DataFrame(rows), "launches") if rows else pd.DataFrame()


def plot_kernel_categories(run: Run):
    """Per series, GPU time per request by kernel category (stacked bars), and the timed device median
    (black tick): the gap between bar and tick is time the GPU waited for the host."""
    kp = _profiled(run)
    if kp.empty:
        return None
    k = run.kernels
    figs = []
    for shape, g in kp.groupby("shape", sort=False):
        ends = {"smallest batch": _ends(g, "idxmin"), "largest batch": _ends(g, "idxmax")}
        n = max(len(v) for v in ends.values())
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 0.42 * n + 1.6))  # the page's column (lib.report.plots.MAX_WIDTH_IN)
        used = set()
        for ax, (title, sel) in zip(axes, ends.items()):
            order = [s for s in series_order(run) if s in set(sel["series"])]
            sel = sel.set_index("series").loc[order]
            y = np.arange(len(sel))
            left = np.zeros(len(sel))
            per_series = [_by_category(_kernels_at(k, r)) for _, r in sel.iterrows()]
            for cat in _STACK:
                vals = np.array([float(c.get(cat, 0.0)) for c in per_series])
                if vals.sum() <= 0:
                    continue
                ax.barh(y, vals, left=left, color=_COLOURS.get(cat, "#999999"),
                        label=cat if cat not in used else None, height=0.7)
                used.add(cat)
                left += vals
            ax.plot(sel["device_median_ms"].to_numpy(dtype=float), y, "|", color="black", ms=16, mew=2,
                    label="timed device median" if "tick" not in used else None)
            used.add("tick")
            ax.set_yticks(y, [f"{s}  (bs {b})" for s, b in zip(sel.index, sel["batch"])])
            ax.invert_yaxis()
            ax.set_xlabel("ms per request")
            ax.set_title(f"{title}" + (f", shape {shape}" if kp["shape"].nunique() > 1 else ""), loc="left")
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8, frameon=False)
        fig.tight_layout()
        figs.append(fig)
    return figs
