"""Sections "Latency and throughput vs batch size" and "Latency distributions": the median per point over
every raw sample against batch size (and shape), and the distribution of each point's samples under the
presentation rule for outliers.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config.models import get_model
from ..results.run import Run
from .plots import distributions, lines_by_batch, mark_parity_failed, plain_log, sorted_shapes
from .points import MODE_SHORT, palette, rate_mode, series_order


def _lineplot(run: Run, y: str, mode: str, ylabel: str, title: str, logy: bool):
    p = run.points[run.points["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    if p.empty:
        return None
    shapes = sorted_shapes(p["shape"])
    return lines_by_batch(p, y, shapes, series_order(run), palette(run), plain_log, ylabel, title, logy,
                          float(run.params.get("unstable_cv", 0.05)), mark=mark_parity_failed)


def plot_latency_vs_batch(run: Run, mode: str = "device"):
    """Median latency per batch size (a black ring marks an unstable point)."""
    return _lineplot(run, "median_ms", mode, "median latency (ms, log)", f"Latency, {MODE_SHORT.get(mode, mode)}", True)


def _shape_dim_name(run: Run) -> str:
    """The model's one shape dim (e.g. 'seq'), from its config; 'shape' when it cannot be read."""
    try:
        dims = get_model(run.params["model"], run.params.get("models_dir") or None).shape_dims
        return dims[0] if len(dims) == 1 else "shape"
    except Exception:
        return "shape"


def plot_latency_vs_shape(run: Run, mode: str = "device"):
    """Median latency against the swept size (e.g. sequence length), one panel per batch size: for models
    with a single shape dim (labels such as "128") and a run over two or more shapes; else None."""
    p = run.points
    if p.empty:
        return None
    p = p[p["mode"] == mode]
    shapes = [s for s in run.plan.get("shapes", []) if s in set(p["shape"])]
    if len(shapes) < 2 or not all(str(s).isdecimal() for s in shapes):
        return None
    dim = _shape_dim_name(run)
    p = p.assign(series=lambda d: d["backend"] + "/" + d["precision"], size=p["shape"].astype(int))
    pal = palette(run)
    batches = sorted(p["batch"].unique())
    sizes = sorted(int(s) for s in shapes)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 3.8), squeeze=False)
    for ax, b in zip(axes[0], batches):
        sub = p[p["batch"] == b]
        for s in [s for s in series_order(run) if s in set(sub["series"])]:
            g = sub[sub["series"] == s].sort_values("size")
            ax.plot(g["size"], g["median_ms"], "-o", color=pal.get(s), label=s, ms=5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain_log(ax)
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.set_xlabel(dim)
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"Latency vs {dim}, {MODE_SHORT.get(mode, mode)} — batch {b}")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_throughput_vs_batch(run: Run):
    mode = rate_mode(run)
    return _lineplot(run, "items_per_s", mode, "items / s", f"Throughput ({MODE_SHORT[mode]})", False)


def plot_distributions(run: Run, mode: str = "device"):
    """Latency distribution per batch size (outliers filtered by the run's rule, as in the tables), log axis."""
    it = run.iterations
    if it.empty:
        return None
    it = it[it["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    keep = np.zeros(len(it), dtype=bool)
    for _, idx in it.groupby(["series", "batch", "shape"]).groups.items():
        keep[it.index.get_indexer(idx)] = run.rule.keep_mask(it.loc[idx, "ms"].to_numpy())
    return distributions(it[keep], series_order(run), palette(run), plain_log,
                         f"{MODE_SHORT.get(mode, mode)} latency (ms, log)")
