"""The report's shared plots and its one palette, drawn to stay legible with many configurations (10 backend/precision
series x 4 batch sizes on a GPU) and on a narrow screen: figures at most ``MAX_WIDTH_IN`` wide (the
page's column at 100 dpi, so a browser never scales their text down on a laptop), legends below the
axes instead of over the data, labels placed where they do not collide, one axis scale across panels.

The section modules (``lib.report.summary``, ``latency`` ...) and the compare page call these; a
backend/precision *series* keeps the colour ``series_colours`` gives it in every figure of a page."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from ..config.model_config import split_shape

# The report's and the compare page's look: applied by use_style(), which the notebooks call, never at import
# (importing lib.report must not restyle a user's own plots in the same kernel).
STYLE = {"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8}


def use_style() -> None:
    """Apply ``STYLE`` to matplotlib (the analysis and compare notebooks call it once, before any plot)."""
    plt.rcParams.update(STYLE)



def series_colours(series) -> dict:
    """The one palette: each series (in its order, duplicates once) a tab10 colour, cycling past ten."""
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(dict.fromkeys(series))}


def mark_parity_failed(ax, g: pd.DataFrame, x: str, y: str) -> None:
    """A red cross over each point whose parity failed: its number is drawn, but it is not a result to use."""
    if "parity_passed" not in g:
        return
    bad = g[g["parity_passed"].map(lambda v: v is False or v is np.False_)]
    if len(bad):
        ax.plot(bad[x], bad[y], "x", color="#c0392b", ms=11, mew=2.2, zorder=5,
                label="parity failed" if "parity failed" not in ax.get_legend_handles_labels()[1] else None)


def plain_log(ax, axis: str = "y") -> None:
    """Log-scale tick labels as plain numbers (0.5, 2, 20) rather than 2×10⁻¹."""
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()  # call after plotting: the data's range
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 3.2 else (1.0, 2.0, 5.0) if decades > 1.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades > 0.6 else (
        1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    a.set_major_locator(LogLocator(base=10, subs=subs))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


MAX_WIDTH_IN = 9.6  # 960 px at the report's 100 dpi: fits the page's 1200 px column, and shrinks least at 800 px
UNSTABLE_RING = "#111111"  # not a series colour (tab10 has no black)


def shape_key(label) -> tuple:
    """Sort key of a shape label: numerically per dim ('128' < '512', '224x224' < '288x288'), 'static' first."""
    values = split_shape(label)
    if values is not None:
        return (1, values)
    return (0 if str(label) == "static" else 2, (str(label),))


def sorted_shapes(values) -> list:
    return sorted(dict.fromkeys(values), key=shape_key)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return (n + cols - 1) // cols, cols


def legend_below(fig, handles, labels, axes_bottom: float | None = None) -> None:
    """One legend for the figure, under its panels, in as many columns as fit the width."""
    if not handles:
        return
    width_in = fig.get_size_inches()[0]
    longest = max(len(str(lb)) for lb in labels)
    ncol = max(1, min(len(labels), int(width_in / (0.35 + 0.075 * longest))))
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False,
               fontsize=9, handlelength=1.8, columnspacing=1.2)


def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(b) for b in boxes)


# Offsets (points) tried for a label, nearest first: right-up, right-down, left-up, left-down, then further.
_OFFSETS = [(6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"), (-6, -5, "right", "top"),
            (10, 14, "left", "bottom"), (10, -14, "left", "top"), (-10, 14, "right", "bottom"),
            (-10, -14, "right", "top"), (0, 18, "center", "bottom"), (0, -18, "center", "top")]


def place_labels(ax, items, fontsize: float = 8) -> None:
    """Annotate ``items`` ([(x, y, text, colour)]) so that no two labels overlap and none covers a point:
    each label takes the first offset around its point whose box is free (matplotlib has no automatic
    label placement, and the one package that does it, adjustText, is not a dependency worth adding
    for this)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = []
    for x, y, _, _ in items:  # the points themselves are taken
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 4, py - 4, px + 4, py + 4))
    axes_box = ax.get_window_extent(renderer)
    for x, y, text, colour in items:
        chosen = None
        for dx, dy, ha, va in _OFFSETS:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color=colour)
            box = t.get_window_extent(renderer)
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            if inside and not _overlaps(box, taken):
                chosen = box
                break
            t.remove()
        if chosen is None:  # nowhere free: the nearest place, better than no label
            dx, dy, ha, va = _OFFSETS[0]
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color=colour)
            chosen = t.get_window_extent(renderer)
        taken.append(chosen)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (lower x and higher y), by x."""
    order = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.array(front, dtype=int)


def latency_throughput(ok: pd.DataFrame, series_order: list[str], palette: dict, mode_short: dict,
                       plain_log, budget_ms: float | None, stat: str, modes: tuple[str, ...], tail: str = "p99",
                       mark=None, styles: dict | None = None):
    """Latency–throughput: every configuration's curve over its batch sizes drawn faint, the Pareto
    frontier (the configurations worth choosing: nothing else is both faster and higher-throughput)
    drawn strongly, each of its points labelled with its configuration and batch. ``styles``: a line style
    per series (the compare page's runs), default solid."""
    styles = styles or {}
    modes = tuple(m for m in modes if (ok["mode"] == m).any())
    shapes = sorted_shapes(ok["shape"])
    if not modes or not shapes:
        return None
    panels = [(shape, mode) for shape in shapes for mode in modes]
    rows, cols = _grid(len(panels), 2)
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH_IN, 4.6 * rows), squeeze=False)
    used = []
    for k, (shape, mode) in enumerate(panels):
        ax = axes[k // cols, k % cols]
        sub = ok[(ok["shape"] == shape) & (ok["mode"] == mode)]
        for s in [s for s in series_order if s in set(sub["series"])]:
            g = sub[sub["series"] == s].sort_values("batch")
            ax.plot(g[stat], g["items_per_s"], marker="o", ls=styles.get(s, "-"), color=palette.get(s), ms=3.5, lw=1,
                    alpha=0.35)
            used.append(s)
            if mark is not None:  # e.g. a cross over points whose parity failed
                mark(ax, g, stat, "items_per_s")
        x, y = sub[stat].to_numpy(float), sub["items_per_s"].to_numpy(float)
        good = np.isfinite(x) & np.isfinite(y)
        front = sub[good].iloc[pareto_front(x[good], y[good])]
        ax.plot(front[stat], front["items_per_s"], "-", color="#222", lw=1.8, zorder=3)
        ax.scatter(front[stat], front["items_per_s"], s=46, c=[palette.get(s) for s in front["series"]],
                   edgecolors="#222", linewidths=1.2, zorder=4)
        if budget_ms:
            ax.axvline(budget_ms, color="#c0392b", ls="--", lw=1.2, zorder=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log(ax, "x")
        plain_log(ax, "y")
        ax.margins(x=0.12, y=0.12)
        ax.set_xlabel(f"{tail} {mode_short[mode]} latency (ms, log)")
        ax.set_ylabel("items / s (log)")
        ax.set_title(mode_short[mode] + (f", shape {shape}" if len(shapes) > 1 else ""))
        place_labels(ax, [(r[stat], r["items_per_s"], f"{r['series']} bs {r['batch']}", "#222")
                          for _, r in front.iterrows()])
    for k in range(len(panels), rows * cols):
        axes[k // cols, k % cols].set_visible(False)
    fig.suptitle("Latency vs throughput: the labelled line is the Pareto frontier (up and left is better)",
                 fontsize=11)
    fig.tight_layout()
    seen = list(dict.fromkeys(used))
    handles = [Line2D([], [], color=palette.get(s), ls=styles.get(s, "-"), marker="o", ms=5, lw=1.5) for s in seen]
    labels = list(seen)
    handles.append(Line2D([], [], color="#222", lw=1.8, marker="o", mfc="white", mec="#222"))
    labels.append("Pareto frontier")
    if budget_ms:
        handles.append(Line2D([], [], color="#c0392b", ls="--", lw=1.2))
        labels.append(f"latency budget {budget_ms:g} ms")
    legend_below(fig, handles, labels)
    return fig


def speedup_bars(d: pd.DataFrame, series_order: list[str], palette: dict, fmt_x, plain_log, title: str):
    """Speedup bars per batch size with their 95% CI, one panel per shape stacked (titles cannot collide),
    one y scale for every panel (log when the range needs it, for all of them); values written upright
    above each bar's interval, so neighbours do not run into each other."""
    shapes = sorted_shapes(d["shape"])
    hi, lo = np.nanmax(d["ci_high"]), np.nanmin(d["ci_low"])
    log = hi / max(lo, 1e-9) > 20  # a huge range: bars on a log axis, or the small ones vanish
    n_series = d["series"].nunique()
    n_bars = n_series * d["batch"].nunique()  # per panel: the figure grows with them, up to the column
    fig, axes = plt.subplots(len(shapes), 1, figsize=(min(MAX_WIDTH_IN, max(5.0, 2.0 + 0.3 * n_bars)),
                                                      3.4 * len(shapes) + 0.3), squeeze=False, sharey=True)
    for ax, shape in zip(axes[:, 0], shapes):
        sub = d[d["shape"] == shape]
        batches = sorted(sub["batch"].unique())
        series = [s for s in series_order if s in set(sub["series"])]
        w = min(0.84 / max(len(series), 1), 0.3)
        for i, s in enumerate(series):
            g = sub[sub["series"] == s].set_index("batch").reindex(batches)
            x = np.arange(len(batches)) + (i - (len(series) - 1) / 2) * w
            yerr = np.vstack([g["speedup"] - g["ci_low"], g["ci_high"] - g["speedup"]])
            ax.bar(x, g["speedup"], w * 0.92, color=palette.get(s), label=s, yerr=yerr, capsize=2, ecolor="#333",
                   error_kw={"lw": 0.8})
            for xi, v, top in zip(x, g["speedup"], g["ci_high"]):
                if np.isfinite(v):
                    ax.annotate(fmt_x(v), (xi, top if np.isfinite(top) else v), textcoords="offset points",
                                xytext=(0, 3), ha="center", va="bottom", rotation=90, fontsize=7)
        ax.axhline(1, color="#444", lw=1, ls="--")
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("speedup (×)")
        if len(shapes) > 1:
            ax.set_title(f"shape {shape}", fontsize=10)
    if log:
        axes[0, 0].set_yscale("log")
        axes[0, 0].set_ylim(min(0.5, lo * 0.7), hi * 4)
        plain_log(axes[0, 0])
    else:
        axes[0, 0].set_ylim(0, hi * 1.35)  # room for the upright labels
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend_below(fig, handles, labels if n_series else [])
    return fig


def lines_by_batch(p: pd.DataFrame, y: str, shapes: list, series_order: list[str], palette: dict, plain_log,
                   ylabel: str, title: str, logy: bool, unstable_cv: float | None = None, mark=None):
    """A value against batch size, a line per configuration, a panel per shape; the legend below the
    panels (never over the batch-1 points); unstable points ringed in black (no series uses black)."""
    rows, cols = _grid(len(shapes), 2)
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH_IN if len(shapes) > 1 else 7.2, 3.9 * rows),
                             squeeze=False)
    used, any_unstable = [], False
    for k, shape in enumerate(shapes):
        ax = axes[k // cols, k % cols]
        sub = p[p["shape"] == shape]
        for s in [s for s in series_order if s in set(sub["series"])]:
            g = sub[sub["series"] == s].sort_values("batch")
            ax.plot(g["batch"], g[y], "-o", color=palette.get(s), ms=5)
            used.append(s)
            flagged = pd.Series(False, index=g.index)
            for col in ("unstable", "noisy"):
                if col in g:
                    flagged |= g[col].fillna(False).astype(bool)
            if flagged.any():
                u = g[flagged]
                ax.plot(u["batch"], u[y], "o", mfc="none", mec=UNSTABLE_RING, ms=11, mew=1.4)
                any_unstable = True
            if mark is not None:  # e.g. a cross over points whose parity failed
                mark(ax, g, "batch", y)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
            plain_log(ax)
        batches = sorted(sub["batch"].unique())
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title + (f", shape {shape}" if len(shapes) > 1 else ""))
    for k in range(len(shapes), rows * cols):
        axes[k // cols, k % cols].set_visible(False)
    fig.tight_layout()
    seen = list(dict.fromkeys(used))
    handles = [Line2D([], [], color=palette.get(s), marker="o", ms=5) for s in seen]
    labels = list(seen)
    if any_unstable:
        handles.append(Line2D([], [], ls="none", marker="o", mfc="none", mec=UNSTABLE_RING, ms=10, mew=1.4))
        labels.append("noisy or unstable" + (f" (CV > {unstable_cv:.0%})" if unstable_cv else ""))
    for ax in fig.axes:  # the parity marker's own legend entry, once
        h, lab = ax.get_legend_handles_labels()
        if "parity failed" in lab and "parity failed" not in labels:
            handles.append(h[lab.index("parity failed")])
            labels.append("parity failed")
    legend_below(fig, handles, labels)
    return fig


def distributions(it: pd.DataFrame, series_order: list[str], palette: dict, plain_log, ylabel: str):
    """Box plots of the (filtered) samples, a panel per batch size, on a log axis: fast and slow
    backends differ by 10-100x, and a linear axis flattens the fast ones to a line."""
    batches = sorted(it["batch"].unique())
    if not batches:
        return None
    shapes = sorted_shapes(it["shape"])
    rows, cols = _grid(len(batches), 2)
    fig, axes = plt.subplots(rows, cols, figsize=(MAX_WIDTH_IN, 3.9 * rows), squeeze=False)
    for k, b in enumerate(batches):
        ax = axes[k // cols, k % cols]
        sub = it[it["batch"] == b]
        labels, data, colors = [], [], []
        for s in [s for s in series_order if s in set(sub["series"])]:
            for shape in shapes:
                x = sub[(sub["series"] == s) & (sub["shape"] == shape)]["ms"].to_numpy()
                if len(x):
                    labels.append(s + (f" {shape}" if len(shapes) > 1 else ""))
                    data.append(x)
                    colors.append(palette.get(s))
        bp = ax.boxplot(data, patch_artist=True, widths=0.6, flierprops={"markersize": 2})
        for patch, c in zip(bp["boxes"], colors):
            patch.set_facecolor(c)
            patch.set_alpha(0.6)
        ax.set_yscale("log")
        plain_log(ax)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"batch {b}")
        ax.set_ylabel(ylabel)
    for k in range(len(batches), rows * cols):
        axes[k // cols, k % cols].set_visible(False)
    fig.tight_layout()
    return fig
