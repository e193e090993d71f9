"""Tables, figures and text for the analysis notebook. Display code only: it reads a loaded ``Run``
(``lib.results``) and never measures anything (FLOPs and peaks come from ``lib.flops`` and
``lib.peaks``, which cache what they count in the run folder).

Conventions: every table goes through ``table()`` (index hidden, numbers rounded for reading, a
missing value shown as "–"); every figure through ``show()`` (embedded PNG); a backend/precision is
called a *series* ("ort/fp32") and keeps one colour in every figure. Decisions use the parity-passing
points only, and the tail percentile over *every* raw sample (``tail_ms``: p99 where a point has at
least 100 samples, else p95): a latency budget has to cover the tail that outlier filtering would hide.
Every comparison (speedups, "lowest latency") is judged with the round-based intervals of
``lib.stats``: one that falls within the noise is called inconclusive, never quoted as a win.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .markup import code, md
from .plots import use_style  # the notebooks call report.use_style() before plotting
from .results.run import Run
from .common.stats import ratio_interval, verdict

__all__ = ["show", "table", "fmt_num", "MODE_LABELS", "BASELINE", "title_markdown", "summary_markdown",
           "decision_table", "speedups", "speedup_table", "plot_speedups", "budget_table", "budget_markdown",
           "plot_latency_throughput", "efficiency_markdown", "efficiency_table", "plot_efficiency",
           "summary_table", "measurements_table", "best_per_batch", "parity_table", "environment_table", "params_table",
           "engines_table", "plot_latency_vs_batch", "plot_throughput_vs_batch", "plot_distributions",
           "plot_resources", "plot_timeline", "plot_health", "health_table", "health_markdown", "unstable_table",
           "failures_table", "outlier_note", "write_tables", "data_markdown", "notebooks_markdown",
           "host_noise_markdown", "plot_host_sentinel", "tail_label", "use_style"]

MODE_LABELS = {
    "device": "device-resident latency (inputs already on the device, outputs left there)",
    "end_to_end": "end-to-end latency (host arrays in, host arrays out, copies included)",
    "throughput": "pipelined throughput (back-to-back requests, one sync per window)",
}
MODE_SHORT = {"device": "device-resident", "end_to_end": "end-to-end", "throughput": "pipelined"}
BASELINE = ("torch", "fp32")  # PyTorch eager FP32: what every speedup is relative to
# NVML clock-event reasons that mean the GPU slowed down (idle, application-clock and display settings do not)
THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")



# --- display helpers -----------------------------------------------------------------------

def show(fig, dpi: int = 100) -> None:
    """Display a figure (or a list of them) as embedded PNGs whatever matplotlib backend is active,
    then free it (the HTML report then carries the image itself, and no figure is shown twice)."""
    from IPython.display import Image, Markdown, display

    if fig is None:
        return
    if isinstance(fig, str):
        display(Markdown(fig))
        return
    if isinstance(fig, (list, tuple)):
        for f in fig:
            show(f, dpi)
        return
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def _isnan(x) -> bool:
    try:
        return x is None or (isinstance(x, float) and math.isnan(x)) or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def fmt_num(x, sig: int = 3) -> str:
    """A number for reading: 3 significant digits, thousands separated, no needless decimals
    (482.7 -> '483', 0.02811 -> '0.0281', 12345.6 -> '12,346'); missing -> '–'."""
    if _isnan(x):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax < 1e-4:
        return f"{x:.{sig - 1}e}"
    if ax >= 10 ** (sig - 1):
        return f"{x:,.0f}"
    decimals = max(0, sig - 1 - int(math.floor(math.log10(ax))))
    return f"{x:,.{decimals}f}"


def fmt_pct(x) -> str:
    """A fraction as a percentage: 0.0523 -> '5.2%', 0.00041 -> '0.041%'."""
    if _isnan(x):
        return "–"
    v = float(x) * 100
    if v != 0 and abs(v) < 0.001:
        return "<0.001%"
    return f"{fmt_num(v, 2) if abs(v) < 1 else f'{v:.1f}'}%"


def fmt_x(x) -> str:
    """A speedup or ratio: 1.3612 -> '1.36×', 3193.7 -> '3,194×'."""
    return "–" if _isnan(x) else f"{fmt_num(float(x))}×"


_x = fmt_x


def _g(x) -> str:
    """A parameter value in prose: 10.0 -> '10', 2.5 -> '2.5'."""
    return f"{float(x):g}"


def _fmt_bool(v) -> str:
    return "–" if _isnan(v) else ("yes" if v else "no")


def table(frame: pd.DataFrame, formats: dict | None = None, highlight: str | None = None, max_rows: int = 500):
    """A DataFrame ready to display: index hidden, numbers formatted for reading, missing as '–'.

    Columns named 'CV', '% ...' or 'share ...' are fractions shown as percentages; bool columns as
    yes/no; other numbers with ``fmt_num``. ``highlight``: a bool column whose true rows are shaded."""
    if frame is None:
        frame = pd.DataFrame()
    if frame.empty:
        frame = pd.DataFrame({"": ["(none)"]}) if frame.columns.empty else frame
    frame = frame.head(max_rows).reset_index(drop=True)
    fmt = {}
    for c in frame.columns:
        col = frame[c]
        name = str(c)
        if formats and c in formats:
            fmt[c] = formats[c]
        elif name == "cosine":  # parity thresholds sit at 0.999..0.9999: show enough nines
            fmt[c] = lambda v: "–" if _isnan(v) else f"{float(v):.6f}"
        elif name == "CV" or name.startswith("% ") or name.startswith("share"):
            fmt[c] = fmt_pct
        elif col.dtype == bool or (col.dtype == object and col.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all()
                                   and col.notna().any()):
            fmt[c] = _fmt_bool
        elif pd.api.types.is_numeric_dtype(col):
            fmt[c] = fmt_num
    # escape: cells are data (kernel names like "f<float>", error messages), never markup
    st = frame.style.format(fmt, na_rep="–", escape="html").hide(axis="index")
    st = st.set_table_attributes('class="bb-table"')
    text = [c for c in frame.columns if c not in fmt or fmt[c] is _fmt_bool]
    numeric = [c for c in frame.columns if c not in text]
    if numeric:
        st = st.set_properties(subset=numeric, **{"white-space": "nowrap"})
    if text:  # words read left-aligned, numbers right-aligned
        st = st.set_properties(subset=text, **{"text-align": "left"})
        st = st.set_table_styles([{"selector": f"th.col{list(frame.columns).index(c)}", "props": "text-align: left"}
                                  for c in text], overwrite=False)
    if highlight and highlight in frame:
        flags = frame[highlight].fillna(False).astype(bool).to_numpy()
        st = st.apply(lambda r: ["background-color: #fff3cd" if flags[r.name] else "" for _ in r], axis=1)
    return st


def _series_col(p: pd.DataFrame) -> pd.Series:
    return p["backend"] + "/" + p["precision"]


def _series_order(run: Run) -> list[str]:
    order = [f"{c['backend']}/{c['precision']}" for c in run.plan.get("combos", [])]
    if not run.points.empty:
        order += [s for s in dict.fromkeys(_series_col(run.points)) if s not in order]
    return order


def _palette(run: Run) -> dict:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(_series_order(run))}


def _usable(run: Run) -> pd.DataFrame:
    """Points a decision may use: parity did not fail."""
    p = run.points
    if p.empty:
        return p
    ok = p[p["parity_passed"].map(lambda v: v is not False and v is not np.False_)]
    return ok.assign(series=_series_col(ok))  # the filtered frame's own series: assigning p's would add rows back


def _rate_mode(run: Run) -> str:
    return "throughput" if (not run.points.empty and (run.points["mode"] == "throughput").any()) else "device"


def _multi_shape(run: Run) -> bool:
    return len(run.plan.get("shapes", [])) > 1


# --- summary: decisions ---------------------------------------------------------------------

def _rounds_of(run: Run, backend: str, precision: str, batch, shape, mode) -> tuple[np.ndarray, np.ndarray]:
    r = run.point_rounds(backend, precision, batch, shape, mode)
    return r["median_ms"].to_numpy(dtype=float), r["pass"].to_numpy()


def compare_points(run: Run, a: tuple, b: tuple, mode: str, shape) -> tuple[float, float, float, str]:
    """Per-item latency of a over b, a and b being (backend, precision, batch) at one shape and mode:
    (median_a / batch_a) / (median_b / batch_b) (for one batch size, the ratio of medians), its 95 %
    interval from both sides' rounds (``lib.stats.ratio_interval``) and the verdict ('lower', 'higher',
    'no clear difference')."""
    p = run.points
    sel = (p["shape"] == shape) & (p["mode"] == mode)

    def side(backend, precision, batch):
        m = p[sel & (p["backend"] == backend) & (p["precision"] == precision) & (p["batch"] == batch)]["median_ms"]
        r, g = _rounds_of(run, backend, precision, batch, shape, mode)
        return (float(m.iloc[0]) / batch if len(m) else float("nan")), r / batch, g

    ma, ra, ga = side(*a)
    mb, rb, gb = side(*b)
    if not (ma == ma and mb == mb):
        return float("nan"), float("nan"), float("nan"), "no clear difference"
    ratio = ma / mb
    lo, hi = ratio_interval(ra, rb, ratio, ga, gb)
    return ratio, lo, hi, verdict(lo, hi)


def speedups(run: Run) -> pd.DataFrame:
    """Speedup of every point over PyTorch eager FP32 at the same batch, shape and mode:
    median(baseline ms) / median(ms), each the median over every raw sample (the tables' figure), with a
    95 % interval from both sides' round medians (``lib.stats.ratio_interval``: rounds, not single
    iterations, are the independent units). ``verdict``: 'faster' / 'slower' only when the interval lies
    beyond ±1 % of 1, else 'no clear difference' (``significant`` False). Empty when the run has no
    torch/fp32 points."""
    cols = ["backend", "precision", "batch", "shape", "mode", "median_ms", "baseline_median_ms", "speedup",
            "ci_low", "ci_high", "significant", "verdict", "rounds", "baseline_rounds"]
    p = run.points
    if p.empty or not ((p["backend"] == BASELINE[0]) & (p["precision"] == BASELINE[1])).any():
        return pd.DataFrame(columns=cols)
    base = p[(p["backend"] == BASELINE[0]) & (p["precision"] == BASELINE[1])].set_index(["batch", "shape", "mode"])
    rows = []
    for r in p.itertuples(index=False):
        key = (r.batch, r.shape, r.mode)
        if key not in base.index:
            continue
        b = base.loc[key]
        ratio = float(b["median_ms"]) / r.median_ms
        rb, gb = _rounds_of(run, *BASELINE, *key)
        rx, gx = _rounds_of(run, r.backend, r.precision, *key)
        lo, hi = ratio_interval(rb, rx, ratio, gb, gx)
        is_base = (r.backend, r.precision) == BASELINE
        v = "baseline" if is_base else {"lower": "slower", "higher": "faster"}.get(verdict(lo, hi), "no clear difference")
        rows.append({"backend": r.backend, "precision": r.precision, "batch": r.batch, "shape": r.shape,
                     "mode": r.mode, "median_ms": r.median_ms, "baseline_median_ms": float(b["median_ms"]),
                     "speedup": ratio, "ci_low": lo, "ci_high": hi, "significant": v in ("faster", "slower"),
                     "verdict": v, "rounds": len(rx), "baseline_rounds": len(rb)})
    return pd.DataFrame(rows, columns=cols)


def tail_label(run: Run) -> str:
    """What ``tail_ms`` is in this run: 'p99' where every point has >= 100 samples, else 'p99/p95'."""
    p = run.points
    if p.empty or "tail_q" not in p:
        return "p99"
    qs = sorted({int(q) for q in p["tail_q"].dropna() if q}, reverse=True)
    return "/".join(f"p{q}" for q in qs) or "max"


def _speedup_of(sp: pd.DataFrame, series: str, batch, shape, mode) -> str:
    if sp is None or sp.empty:
        return ""
    m = sp[(sp["backend"] + "/" + sp["precision"] == series) & (sp["batch"] == batch) & (sp["shape"] == shape)
           & (sp["mode"] == mode)]
    if m.empty:
        return ""
    r = m.iloc[0]
    if series == "/".join(BASELINE):
        return " (the baseline)"
    if not r["significant"]:
        return (f" ({_x(r['speedup'])} vs torch/fp32, 95% {fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])}: "
                f"inconclusive, within the noise)")
    return f" ({_x(r['speedup'])} vs torch/fp32, 95% {fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])})"


def _runner_up_note(run: Run, ranked: pd.DataFrame, mode: str, higher_is_better: bool = False) -> str:
    """' — within the noise of X (inconclusive)' when the best of ``ranked`` (sorted best first) cannot
    be told apart from the next configuration by their rounds; '' when it is clearly ahead."""
    if len(ranked) < 2:
        return ""
    a, b = ranked.iloc[0], ranked.iloc[1]
    if a["shape"] != b["shape"]:
        return ""
    pa = (*a["series"].split("/"), a["batch"])
    pb = (*b["series"].split("/"), b["batch"])
    _, lo, hi, v = compare_points(run, pa, pb, mode, a["shape"])
    if v == "no clear difference":
        other = b["series"] + (f" at batch {b['batch']}" if a["batch"] != b["batch"] else "")
        what = "time per item" if higher_is_better else "latency"
        return f" — **inconclusive**: within the noise of {other} ({fmt_num(lo)}–{fmt_num(hi)}× its {what})"
    return ""


def decision_table(run: Run, sp: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per shape and batch size: the configuration with the lowest p99 end-to-end and device-resident
    latency and the one with the highest throughput, each with its speedup over PyTorch eager FP32."""
    ok = _usable(run)
    if ok.empty:
        return pd.DataFrame()
    rate_mode = _rate_mode(run)
    rows = []
    for (shape, batch), g in ok.groupby(["shape", "batch"], sort=True):
        row = {"shape": shape, "batch": batch}
        for mode, col in (("end_to_end", f"lowest {tail_label(run)}, end-to-end"),
                          ("device", f"lowest {tail_label(run)}, device-resident")):
            m = g[g["mode"] == mode].sort_values("tail_ms")
            row[col] = (f"{m.iloc[0]['series']}: {fmt_num(m.iloc[0]['tail_ms'])} ms"
                        f"{_speedup_of(sp, m.iloc[0]['series'], batch, shape, mode)}") if len(m) else "–"
        t = g[g["mode"] == rate_mode].sort_values("items_per_s", ascending=False)
        row[f"highest throughput ({MODE_SHORT[rate_mode]})"] = (
            f"{t.iloc[0]['series']}: {fmt_num(t.iloc[0]['items_per_s'])} items/s"
            f"{_speedup_of(sp, t.iloc[0]['series'], batch, shape, rate_mode)}") if len(t) else "–"
        rows.append(row)
    from .plots import shape_key

    out = pd.DataFrame(rows)
    out = out.iloc[sorted(range(len(out)), key=lambda i: (shape_key(out["shape"].iloc[i]), out["batch"].iloc[i]))]
    out = out.reset_index(drop=True)  # shapes in numeric order, as in every other section
    return out if _multi_shape(run) else out.drop(columns="shape")


best_per_batch = decision_table  # the old name


def budget_table(run: Run, budget_ms: float = 10.0, mode: str = "end_to_end", top: int | None = None) -> pd.DataFrame:
    """Configurations (series × batch × shape) whose p99 ``mode`` latency over every sample is within
    ``budget_ms``, by throughput (batch / median latency of that mode: one batch at a time). Every one of
    them (the summary counts them all), unless ``top`` limits it."""
    ok = _usable(run)
    if ok.empty:
        return pd.DataFrame()
    m = ok[(ok["mode"] == mode) & (ok["tail_ms"] <= budget_ms)].sort_values("items_per_s", ascending=False)
    if m.empty:
        lat = ok[ok["mode"] == mode].sort_values("tail_ms")
        best = (f"; the lowest is {lat.iloc[0]['series']} at batch {lat.iloc[0]['batch']}: "
                f"{fmt_num(lat.iloc[0]['tail_ms'])} ms") if len(lat) else ""
        return pd.DataFrame({"within the budget": [f"none: every configuration's p99 {MODE_SHORT.get(mode, mode)} "
                                                   f"latency is above {_g(budget_ms)} ms{best}"]})
    pipelined = ok[ok["mode"] == "throughput"].set_index(["series", "batch", "shape"])["items_per_s"]
    rows = []
    for r in (m if top is None else m.head(top)).itertuples(index=False):
        row = {"configuration": r.series, "batch": r.batch, "shape": r.shape, f"{tail_label(run)} ms": r.tail_ms,
               "median ms": r.median_ms, "items/s": r.items_per_s}
        if len(pipelined):
            row["items/s pipelined"] = pipelined.get((r.series, r.batch, r.shape), np.nan)
        row["flag"] = ", ".join(f for f, on in (("unstable", r.unstable), ("noisy", r.noisy)) if on) or "–"
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty and not _multi_shape(run):
        out = out.drop(columns="shape")
    return out


def budget_markdown(run: Run, budget_ms: float = 10.0, mode: str = "end_to_end") -> str:
    ok = _usable(run)
    what = f"{tail_label(run)} {MODE_SHORT.get(mode, mode)} latency ≤ {_g(budget_ms)} ms"
    if ok.empty:
        return f"**Latency budget ({what})**: no measurements."
    m = ok[ok["mode"] == mode]
    within = m[m["tail_ms"] <= budget_ms].sort_values("items_per_s", ascending=False)
    if within.empty:
        best = m.sort_values("tail_ms").iloc[0]
        return (f"**Latency budget ({what})**: no configuration meets it. The lowest tail is "
                f"**{md(best['series'])}** at batch {best['batch']}: {fmt_num(best['tail_ms'])} ms.")
    b = within.iloc[0]
    n_over = int((m["tail_ms"] > budget_ms).sum())
    shape = f" (shape {md(b['shape'])})" if _multi_shape(run) else ""  # b["shape"]: b.shape is the row's own shape
    return (f"**Latency budget ({what})**: the highest throughput within it is **{md(b['series'])} at batch "
            f"{b['batch']}**{shape}: "
            f"{fmt_num(b['items_per_s'])} items/s at {tail_label(run)} {fmt_num(b['tail_ms'])} ms. "
            f"{_n(len(within), 'configuration')} meet{'s' if len(within) == 1 else ''} the budget, {n_over} "
            f"do{'es' if n_over == 1 else ''} not. "
            f"(Budget: the analysis notebook's `budget_ms` parameter; throughput = batch / median latency, "
            f"one batch at a time.)")


def speedup_table(sp: pd.DataFrame, run: Run | None = None) -> pd.DataFrame:
    """Speedups over PyTorch eager FP32 as a grid: a row per mode and series, a column per batch size;
    each cell 'speedup× (95% CI low–high)'; '=' marks a CI that includes 1 (no clear difference)."""
    if sp is None or sp.empty:
        return pd.DataFrame({"speedup": ["no PyTorch eager FP32 (torch/fp32) points in this run: nothing to "
                                         "compare with"]})
    d = sp.assign(series=sp["backend"] + "/" + sp["precision"])
    d = d[d["series"] != "/".join(BASELINE)]
    if d.empty:
        return pd.DataFrame({"speedup": ["only the baseline (torch/fp32) ran"]})

    def cell(r):
        mark = "" if r["significant"] else " = (within the noise)"
        return f"{_x(r['speedup'])} ({fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])}){mark}"

    d = d.assign(cell=d.apply(cell, axis=1), mode_label=d["mode"].map(MODE_SHORT))
    multi_shape = _multi_shape(run) if run is not None else d["shape"].nunique() > 1
    index = ["mode_label", "shape", "series"] if multi_shape else ["mode_label", "series"]
    grid = d.pivot_table(index=index, columns="batch", values="cell", aggfunc="first")
    grid.columns = [f"batch {b}" for b in grid.columns]
    order = {m: i for i, m in enumerate(MODE_SHORT.values())}
    grid = grid.reset_index().rename(columns={"mode_label": "mode", "series": "configuration"})
    from .plots import shape_key

    series = {s: i for i, s in enumerate(_series_order(run))} if run is not None else {}
    by = {"mode": lambda s: s.map(order), "configuration": lambda s: s.map(lambda v: series.get(v, len(series))),
          "shape": lambda s: s.map(shape_key)}
    cols = [c for c in ("mode", "shape", "configuration") if c in grid]
    grid = grid.sort_values(cols, key=lambda s: by[s.name](s), kind="stable")
    return grid.reset_index(drop=True)


def plot_speedups(run: Run, sp: pd.DataFrame, mode: str = "end_to_end"):
    """Speedup over PyTorch eager FP32 per batch size with its 95% CI (error bars), one bar per series
    (``lib.plots.speedup_bars``)."""
    from .plots import speedup_bars

    if sp is None or sp.empty:
        return None
    d = sp[(sp["mode"] == mode)].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    d = d[d["series"] != "/".join(BASELINE)]
    if d.empty:
        return None
    return speedup_bars(d, _series_order(run), _palette(run), _x, _plain_log,
                        f"Speedup over torch/fp32, {MODE_SHORT.get(mode, mode)} median, 95% interval from rounds")


def plot_latency_throughput(run: Run, budget_ms: float | None = 10.0, stat: str = "tail_ms",
                            modes: tuple[str, ...] = ("end_to_end", "device")):
    """Latency–throughput trade-off: x = p99 latency (every sample), y = items/s (batch / median
    latency); one faint curve per series over its batch sizes, the Pareto frontier drawn and labelled
    (``lib.plots.latency_throughput``). The dashed line is the budget."""
    from .plots import latency_throughput

    ok = _usable(run)
    if ok.empty:
        return None
    return latency_throughput(ok, _series_order(run), _palette(run), MODE_SHORT, _plain_log, budget_ms, stat, modes,
                              tail=tail_label(run), mark=_mark_parity_failed)


def title_markdown(run: Run) -> str:
    env = run.environment
    gpu = env.get("gpu") or {}
    if gpu.get("name"):
        where = f"GPU **{md(gpu.get('name'))}** (driver {md(gpu.get('driver'))}, CUDA {md(gpu.get('cuda_driver'))})"
    elif env:
        where = (f"CPU **{md(env.get('cpu') or 'unknown')}** "
                 f"({md(env.get('cpu_affinity') or env.get('cpu_logical_cores'))} cores usable)")
    else:
        where = f"**{md(run.device)}** (machine details not recorded: no backend loaded)"
    libs = env.get("libraries", {})
    versions = ", ".join(f"{k} {md(libs[k])}" for k in ("torch", "onnxruntime-gpu", "onnxruntime", "tensorrt",
                                                   "tensorrt-cu12", "tensorrt-cu13", "tensorrt-rtx-cu13") if k in libs)
    return (f"# {md(run.params['model'])}: benchmark report\n\n"
            f"Run {code(run.path.name)} on {where}. Batch sizes {md(', '.join(map(str, run.plan['batch_sizes'])))}; "
            f"shapes {md(', '.join(run.plan['shapes']))}; {len(run.plan['combos'])} backend/precision runs "
            f"({md(', '.join(c['backend'] + '/' + c['precision'] for c in run.plan['combos']))}), "
            f"{len(run.plan['skipped'])} skipped." + (f" {versions}." if versions else "")
            + f"\n\n{weights_markdown(run)}")


def weights_markdown(run: Run) -> str:
    """Which weights the model ran with: the WEIGHTS file and its sha256 (recorded at plan time in
    fingerprint.json), or seeded random weights with calibrated BatchNorm statistics."""
    weights = run.params.get("weights") or ""
    if not weights:
        return (f"Weights: **seeded random** (seed {run.params.get('seed', 0)}), BatchNorm statistics calibrated on "
                "seeded inputs so every layer runs at a realistic scale; no trained weights, so top-1 agreement "
                "between backends can flip on near-ties.")
    from .common.runstate import FINGERPRINT_FILE

    digest = None
    try:
        digest = json.loads((run.path / FINGERPRINT_FILE).read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        pass
    shown = f"sha256 `{digest}`" if digest else "sha256 not recorded (a run made before fingerprints were kept)"
    return (f"Weights: **loaded from `WEIGHTS={weights}`** ({shown}), read as a state dict; BatchNorm "
            "calibration was **skipped** (the file's own statistics are used).")


def summary_markdown(run: Run, sp: pd.DataFrame | None = None, budget_ms: float = 10.0,
                     eff: pd.DataFrame | None = None) -> str:
    """The conclusions, in a few lines: fastest at batch 1, highest throughput, within the budget,
    best efficiency, stability and failures."""
    p = run.points
    if p.empty:
        return ("**No backend produced numbers.** See *Failures and skips* for why.")
    ok = _usable(run)
    lines = [host_noise_markdown(run)]
    lat_mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
    winners = {g.sort_values("tail_ms").iloc[0]["series"]
               for _, g in ok[ok["mode"] == lat_mode].groupby(["shape", "batch"])}
    if len(winners) == 1 and ok["series"].nunique() > 1:
        lines.append(f"- **{md(winners.pop())} has the lowest {tail_label(run)} {MODE_SHORT[lat_mode]} latency at every batch size "
                     f"and shape measured.**")
    for shape in sorted(ok["shape"].unique()):
        tag = f" (shape {md(shape)})" if _multi_shape(run) else ""
        m = ok[(ok["mode"] == lat_mode) & (ok["shape"] == shape)]
        b1 = m[m["batch"] == m["batch"].min()].sort_values("median_ms")
        if len(b1):
            r = b1.iloc[0]
            lines.append(f"- **Lowest latency at batch {r['batch']}{tag}**: **{md(r['series'])}**, median "
                         f"{fmt_num(r['median_ms'])} ms, {tail_label(run)} {fmt_num(r['tail_ms'])} ms "
                         f"({MODE_SHORT[lat_mode]}){_speedup_of(sp, r['series'], r['batch'], shape, lat_mode)}"
                         f"{_runner_up_note(run, b1, lat_mode)}.")
        rm = _rate_mode(run)
        t = ok[(ok["mode"] == rm) & (ok["shape"] == shape)].sort_values("items_per_s", ascending=False)
        if len(t):
            r = t.iloc[0]
            lines.append(f"- **Highest throughput{tag}**: **{md(r['series'])} at batch {r['batch']}**, "
                         f"{fmt_num(r['items_per_s'])} items/s ({MODE_SHORT[rm]})"
                         f"{_speedup_of(sp, r['series'], r['batch'], shape, rm)}"
                         f"{_runner_up_note(run, t, rm, higher_is_better=True)}.")
    lines.append("- " + budget_markdown(run, budget_ms, lat_mode))
    from .report_energy import energy_summary_lines

    lines.extend(energy_summary_lines(run, budget_ms))
    if sp is not None and not sp.empty:
        d = sp[(sp["backend"] + "/" + sp["precision"] != "/".join(BASELINE)) & (sp["mode"] == lat_mode)]
        if len(d):
            lines.append(f"- **Against PyTorch eager FP32** ({MODE_SHORT[lat_mode]}): "
                         f"{int((d['verdict'] == 'faster').sum())} of {len(d)} points are faster with 95% confidence, "
                         f"{int((d['verdict'] == 'slower').sum())} slower, {int((~d['significant']).sum())} within "
                         f"the noise (inconclusive); speedups range "
                         f"{_x(d['speedup'].min())}–{_x(d['speedup'].max())}.")
    elif not ((p["backend"] == BASELINE[0]) & (p["precision"] == BASELINE[1])).any():
        lines.append("- No PyTorch eager FP32 (torch/fp32) points in this run: no speedups are computed.")
    from .report_quant import has_quantized, quant_markdown

    if has_quantized(run):  # INT8/FP8: the fastest configuration within the accuracy tolerance (MAX_ACC_DROP)
        lines.extend(line for line in quant_markdown(run).splitlines()
                     if line.startswith(("- **Fastest within", "- **No configuration", "- **Random weights")))
    if eff is not None and not eff.empty and eff["peak_share"].notna().any():
        e = eff[eff["mode"] == _rate_mode(run)].sort_values("peak_share", ascending=False)
        if len(e) and np.isfinite(e.iloc[0]["peak_share"]):
            r = e.iloc[0]
            where = f"{md(r['backend'] + '/' + r['precision'])} at batch {r['batch']}"
            if r["peak_share"] > 1:  # a "peak" the model beat is no peak: quoting a share of it would mislead
                lines.append(f"- **Efficiency**: best {fmt_num(r['achieved_tflops'])} TFLOP/s ({where}); no share of "
                             f"peak is given: the {'measured' if r['peak_source'] == 'measured' else 'datasheet'} "
                             f"peak ({fmt_num(r['peak_tflops'])} TFLOP/s) is below it, so it is not this machine's "
                             "peak (see *Efficiency*).")
            else:
                lines.append(f"- **Efficiency**: best {fmt_num(r['achieved_tflops'])} TFLOP/s, {fmt_pct(r['peak_share'])} "
                             f"of {'a measured' if r['peak_source'] == 'measured' else 'the datasheet'} peak "
                             f"({where}); see *Efficiency*.")
    unstable, noisy = p[p["unstable"]], p[p["noisy"]]
    lines.append(f"- **Stability**: {len(noisy)} of {len(p)} measurements are *noisy* (their round medians "
                 f"span more than {float(run.params.get('noise_spread', 0.05)):.0%}) and {len(unstable)} *unstable* (CV above "
                 f"{float(run.params.get('unstable_cv', 0.05)):.0%}); both are flagged in the tables"
                 + ("; " + health_markdown(run, short=True) if run.has_gpu_samples else "") + ".")
    f = run.failures
    if len(f):
        counts = f["status"].value_counts()
        lines.append(f"- **Failures and skips**: " + ", ".join(f"{n} {md(s)}" for s, n in counts.items())
                     + " (see *Failures and skips*).")
    else:
        lines.append("- **Failures and skips**: none; every planned point produced numbers and passed parity.")
    for n, e in run.engines.items():  # lib.trt_build: a cached TensorRT-RTX plan that runs, but suboptimally
        if (e.get("info") or {}).get("plan_warning"):
            lines.append(f"- **Warning ({md(n)})**: {md(e['info']['plan_warning'])}")
    fallback = {n: (e.get("info") or {}).get("cpu_ep_fallback") for n, e in run.engines.items()}
    fallback = {n: v for n, v in fallback.items() if v and v != "none"}
    if fallback:  # lib.engines.ort_engine: the session could not be made with CPU fallback disabled
        lines.append("- **Warning: ONNX Runtime runs part of the graph on the CPU EP** for "
                     + ", ".join(md(n) for n in fallback) + " (nodes its GPU provider does not take; their host time "
                     "and copies are inside these figures). ONNX Runtime said: " + md(next(iter(fallback.values()))[:300]))
    bad_parity = p[p["parity_passed"].map(lambda v: v is False or v is np.False_)]
    if len(bad_parity):
        pts = bad_parity.drop_duplicates(["backend", "precision", "batch", "shape"])
        lines.append(f"- {len(pts)} point(s) failed parity ("
                     + ", ".join(f"{md(r.backend + '/' + r.precision)} batch {r.batch}" for r in pts.itertuples())
                     + "): left out of every recommendation.")
    return "\n".join(lines)


# --- efficiency -----------------------------------------------------------------------------

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
    mode = mode or _rate_mode(run)
    d = eff[eff["mode"] == mode].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    out = pd.DataFrame({"configuration": d["series"], "batch": d["batch"], "shape": d["shape"],
                        "items/s": d["items_per_s"], "GFLOP per item": d["gflop_per_item"],
                        "achieved TFLOP/s": d["achieved_tflops"], "peak TFLOP/s": d["peak_tflops"],
                        "% of peak": d["peak_share"]})  # which peak each precision uses is listed above the table
    if not _multi_shape(run):
        out = out.drop(columns="shape")
    return out.sort_values(["configuration", "batch"]).reset_index(drop=True)


def plot_efficiency(run: Run, eff: pd.DataFrame, mode: str | None = None):
    if eff is None or eff.empty or not eff["achieved_tflops"].notna().any():
        return None
    mode = mode or _rate_mode(run)
    d = eff[eff["mode"] == mode].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    pal = _palette(run)
    has_share = d["peak_share"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_share else 1, figsize=(9.6 if has_share else 6.5, 3.8), squeeze=False)
    for ax, col, label in zip(axes[0], ("achieved_tflops", "peak_share"), ("achieved TFLOP/s", "share of peak (%)")):
        for shape in sorted(d["shape"].unique()):
            for s in [s for s in _series_order(run) if s in set(d["series"])]:
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
    from .plots import legend_below

    legend_below(fig, *axes[0, 0].get_legend_handles_labels())  # below the axes, not over the batch-1 points
    return fig


# --- the full tables ------------------------------------------------------------------------

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
        if k in p and p[k].map(lambda v: not _isnan(v) and v != "").any():
            out[label] = p[k].values
    return out.sort_values(["mode", "shape", "batch", "median ms"]).reset_index(drop=True)


def _in_order(run: Run, frame: pd.DataFrame, then: tuple[str, ...] = ("shape", "batch")) -> pd.DataFrame:
    """Rows by configuration (the plan's order), then shape (numerically, as every section orders them),
    then batch (as a number, never as text)."""
    from .plots import shape_key

    order = {s: i for i, s in enumerate(_series_order(run))}
    keys = {"_series": (frame["backend"] + "/" + frame["precision"]).map(lambda s: order.get(s, len(order))),
            "_shape": frame["shape"].map(shape_key), "_batch": pd.to_numeric(frame["batch"], errors="coerce")}
    cols = ["_series"] + [f"_{c}" for c in then]
    return (frame.assign(**{k: keys[k] for k in cols}).sort_values(cols, kind="stable").drop(columns=cols)
            .reset_index(drop=True))


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
        if k in p and p[k].map(lambda v: not _isnan(v) and v != "").any():
            if label == "peak RSS MiB" and "VRAM MiB" in out:
                continue  # on a GPU the device memory is the one that limits
            out[label] = p[k].values
    if not _multi_shape(run):
        out = out.drop(columns="shape")
    from .plots import shape_key

    keys = pd.DataFrame({"m": p["mode"].map({m: i for i, m in enumerate(MODE_SHORT)}).values,
                         "s": p["shape"].map(shape_key).values, "b": p["batch"].values,
                         "c": (p["backend"] + "/" + p["precision"]).map(
                             {s: i for i, s in enumerate(_series_order(run))}).values})
    return out.iloc[keys.sort_values(["m", "s", "b", "c"], kind="stable").index].reset_index(drop=True)


def parity_table(run: Run) -> pd.DataFrame:
    """A row per point and output (a model with several outputs shows each, not only the worst)."""
    d = run.parity
    if d.empty:  # a run recorded before per-output figures: the worst output per point
        p = run.points
        if p.empty:
            return p
        d = p[p["mode"] == "device"].rename(columns={"parity_passed": "passed", "parity_cosine": "cosine",
                                                     "parity_rel_err": "rel_err", "parity_max_abs_err": "max_abs_err",
                                                     "parity_top1": "top1_agree"})
    cols = {"backend": "backend", "precision": "precision", "batch": "batch", "shape": "shape", "output": "output",
            "passed": "passed", "cosine": "cosine", "centred_cosine": "cosine, input-dependent part",
            "rel_err": "max |err| / max |ref|", "centred_rel_err": "same, input-dependent part",
            "max_abs_err": "max |err|", "top1_agree": "top-1 agreement"}
    cols = {k: v for k, v in cols.items() if k in d and (k not in ("centred_cosine", "centred_rel_err", "top1_agree",
                                                                     "output") or d[k].notna().any())}
    return _in_order(run, d[list(cols)].rename(columns=cols))


def environment_table(run: Run) -> pd.DataFrame:
    env = dict(run.environment)
    libs = env.pop("libraries", {})
    gpu = env.pop("gpu", None) or {}
    rows = [(k, v) for k, v in env.items()]
    rows += [(f"gpu.{k}", v) for k, v in gpu.items()]
    rows += [(f"version: {k}", v) for k, v in libs.items()]
    if not gpu:
        rows.append(("gpu", "none (no NVIDIA GPU visible to NVML)"))
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


def params_table(run: Run) -> pd.DataFrame:
    rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in run.params.items()]
    rows += [("resolved device", run.plan["device"]), ("resolved batch sizes", run.plan["batch_sizes"]),
             ("resolved shapes", run.plan["shapes"])]
    return pd.DataFrame(rows, columns=["parameter", "value"]).astype({"value": str})


def engines_table(run: Run) -> pd.DataFrame:
    rows = []
    for name, e in run.engines.items():
        info = e.get("info", {})
        rows.append({"backend/precision": name, "what": e.get("summary", ""), "timer": e.get("timer"),
                     "load/build s": e.get("load_s", float("nan")),
                     "details": ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("compile_s", "compile_graphs"))[:300],
                     "parity reference": e.get("reference")})
    return pd.DataFrame(rows)


def failures_table(run: Run) -> pd.DataFrame:
    """Every backend or point that produced no numbers (unavailable here, skipped, export failure,
    crash, out of memory, error) or whose parity failed, with the reason."""
    f = run.failures
    if f.empty:
        return pd.DataFrame({"status": ["none: every planned point produced numbers and passed parity"]})
    order = {s: i for i, s in enumerate(("export failed", "crashed", "oom", "error", "parity failed", "not run",
                                         "unavailable", "skipped"))}
    f = f.assign(_o=f["status"].map(lambda s: order.get(s, 99))).sort_values(["_o", "backend"], kind="stable")
    f = f.drop(columns="_o").copy()
    f["batch"] = f["batch"].map(lambda v: "–" if _isnan(v) else str(int(v)))
    f["reason"] = f["reason"].map(lambda s: "–" if _isnan(s) or str(s).strip() == "" else str(s).strip())
    return f.rename(columns={"precision": "precision", "status": "status"}).reset_index(drop=True)


def outlier_note(run: Run) -> str:
    p = run.points
    n = int(p["n"].sum()) if not p.empty else 0
    dropped = int(p["dropped"].sum()) if not p.empty else 0
    return (f"Outlier rule, for presentation only: {md(run.rule.label)}. It would drop {dropped} of {n} samples "
            f"({(dropped / n * 100) if n else 0:.2f}%); it affects only the distribution plots and the columns "
            f"labelled *presentation*. Every other figure (median, percentiles, CV, flags, speedups) is over every "
            f"raw sample, and every sample is kept on disk. Percentiles are shown only where the sample supports "
            f"them (p99: ≥ 100 samples, p95: ≥ 20, p90: ≥ 10). Points with CV > "
            f"{float(run.params.get('unstable_cv', 0.05)):.0%} are flagged unstable, points whose round medians "
            f"span more than {float(run.params.get('noise_spread', 0.05)):.0%} noisy (shaded).")


# --- figures: latency, throughput, distributions --------------------------------------------

def _mark_parity_failed(ax, g: pd.DataFrame, x: str, y: str) -> None:
    """A red cross over each point whose parity failed: its number is drawn, but it is not a result to use."""
    if "parity_passed" not in g:
        return
    bad = g[g["parity_passed"].map(lambda v: v is False or v is np.False_)]
    if len(bad):
        ax.plot(bad[x], bad[y], "x", color="#c0392b", ms=11, mew=2.2, zorder=5,
                label="parity failed" if "parity failed" not in ax.get_legend_handles_labels()[1] else None)


def _lineplot(run: Run, y: str, mode: str, ylabel: str, title: str, logy: bool):
    from .plots import lines_by_batch, sorted_shapes

    p = run.points[run.points["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    if p.empty:
        return None
    shapes = sorted_shapes(p["shape"])
    return lines_by_batch(p, y, shapes, _series_order(run), _palette(run), _plain_log, ylabel, title, logy,
                          float(run.params.get("unstable_cv", 0.05)), mark=_mark_parity_failed)


def plot_latency_vs_batch(run: Run, mode: str = "device"):
    """Median latency per batch size (a black ring marks an unstable point)."""
    return _lineplot(run, "median_ms", mode, "median latency (ms, log)", f"Latency, {MODE_SHORT.get(mode, mode)}", True)


def _shape_dim_name(run: Run) -> str:
    """The model's one shape dim (e.g. 'seq'), from its config; 'shape' when it cannot be read."""
    try:
        from .config.models import get_model

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
    pal = _palette(run)
    batches = sorted(p["batch"].unique())
    sizes = sorted(int(s) for s in shapes)
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 3.8), squeeze=False)
    for ax, b in zip(axes[0], batches):
        sub = p[p["batch"] == b]
        for s in [s for s in _series_order(run) if s in set(sub["series"])]:
            g = sub[sub["series"] == s].sort_values("size")
            ax.plot(g["size"], g["median_ms"], "-o", color=pal.get(s), label=s, ms=5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_log(ax)
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.set_xlabel(dim)
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"Latency vs {dim}, {MODE_SHORT.get(mode, mode)} — batch {b}")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_throughput_vs_batch(run: Run):
    mode = _rate_mode(run)
    return _lineplot(run, "items_per_s", mode, "items / s", f"Throughput ({MODE_SHORT[mode]})", False)


def plot_distributions(run: Run, mode: str = "device"):
    """Latency distribution per batch size (outliers filtered by the run's rule, as in the tables), log axis."""
    from .plots import distributions

    it = run.iterations
    if it.empty:
        return None
    it = it[it["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    keep = np.zeros(len(it), dtype=bool)
    for _, idx in it.groupby(["series", "batch", "shape"]).groups.items():
        keep[it.index.get_indexer(idx)] = run.rule.keep_mask(it.loc[idx, "ms"].to_numpy())
    return distributions(it[keep], _series_order(run), _palette(run), _plain_log,
                         f"{MODE_SHORT.get(mode, mode)} latency (ms, log)")


def plot_resources(run: Run):
    """Peak memory and mean utilisation per backend (steady windows of the device-resident runs)."""
    p = run.points[run.points["mode"] == "device"].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    if p.empty:
        return None
    gpu = "res_gpu_util_mean" in p and p["res_gpu_util_mean"].notna().any()
    metrics = [("res_rss_mib_peak", "peak process RSS (MiB)"), ("res_cpu_percent_mean", "process CPU % (100 = 1 core)")]
    if gpu:
        metrics = [("nvml_process_mib", "VRAM, process (NVML, MiB)"), ("res_gpu_util_mean", "GPU utilisation % (mean)")] + metrics
    metrics = [(k, t) for k, t in metrics if k in p and pd.to_numeric(p[k], errors="coerce").notna().any()]
    if not metrics:
        return "No resource figures: no sampler tick fell inside a steady window (measurements too short?)."
    pal = _palette(run)
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(3.2 * len(metrics), 9.6), 3.4), squeeze=False)
    series = [s for s in _series_order(run) if s in set(p["series"])]
    batches = sorted(p["batch"].unique())
    w = 0.8 / max(len(series), 1)
    for ax, (k, title) in zip(axes[0], metrics):
        for i, s in enumerate(series):
            g = p[p["series"] == s].groupby("batch")[k].max().reindex(batches)
            ax.bar(np.arange(len(batches)) + (i - (len(series) - 1) / 2) * w, pd.to_numeric(g, errors="coerce"),
                   w, color=pal.get(s), label=s)
        ax.set_xticks(np.arange(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("batch")
        ax.set_title(title, fontsize=10)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def resources_note(run: Run) -> str:
    base = {}
    for name, e in run.engines.items():
        base[name] = e.get("baseline", {})
    first = next(iter(base.values()), {})
    parts = [f"Process RSS before loading: {fmt_num(first.get('rss_mib', float('nan')))} MiB"]
    if "gpu_used_mib" in first:
        parts.append(f"GPU memory in use device-wide before loading: {fmt_num(first['gpu_used_mib'])} MiB (idle baseline)")
    no_nvml = {n: e["sampler_gpu_error"] for n, e in run.engines.items() if e.get("sampler_gpu_error")}
    if no_nvml:  # the GPU was not sampled: say why, instead of leaving the GPU columns empty without a word
        parts.append("**no GPU figures (NVML) for " + ", ".join(md(n) for n in no_nvml) + "**: "
                     + md(next(iter(no_nvml.values()))))
    return ("Figures over each measurement's steady window (its timed window minus the first 0.25 s), sampled at "
            "about 10 Hz; memory is the peak, utilisation the mean. " + "; ".join(parts) + ".")


# --- stability: the device over time --------------------------------------------------------

def _segments(t: pd.Series, y: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """x, y with a NaN break wherever time goes backwards (a resumed sweep restarts its clock)."""
    t = t.to_numpy(dtype=float)
    y = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
    if len(t) < 2:
        return t, y
    breaks = np.where(np.diff(t) < 0)[0] + 1
    return np.insert(t, breaks, np.nan), np.insert(y, breaks, np.nan)


def _throttle_frame(s: pd.DataFrame) -> pd.DataFrame:
    """One bool column per throttling reason, per tick."""
    from .measure.sampler import throttle_names

    if "throttle_reasons" not in s:
        return pd.DataFrame(index=s.index)
    names = s["throttle_reasons"].map(lambda m: set(throttle_names(int(m))) if not _isnan(m) else set())
    return pd.DataFrame({r: names.map(lambda n, r=r: r in n) for r in THROTTLING}, index=s.index)


def _n(count: int, noun: str) -> str:
    """'1 configuration', '3 configurations'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def health_table(run: Run) -> pd.DataFrame:
    """Per backend/precision sweep: what the device did while it ran. On a GPU: SM clock (median,
    minimum, and the GPU's maximum), temperature, power against the limit, and the share of ticks
    with a throttling reason; on a CPU: process CPU % and RSS."""
    s = run.samples
    if s.empty:
        return pd.DataFrame()
    gpu = run.has_gpu_samples
    env_gpu = run.environment.get("gpu") or {}
    rows = []
    for series in _series_order(run):
        b, prec = series.split("/", 1)
        t = s[(s["backend"] == b) & (s["precision"] == prec)]
        if t.empty:
            continue
        busy = t[t["label"].fillna("") != ""] if "label" in t else t
        busy = busy if len(busy) else t
        row = {"configuration": series, "seconds": float(t["t_s"].max() - t["t_s"].min())}
        if gpu:
            num = lambda c: pd.to_numeric(busy[c], errors="coerce") if c in busy else pd.Series(dtype=float)  # noqa: E731
            lim = env_gpu.get("power_limit_w")
            row.update({"SM MHz median": num("sm_clock_mhz").median(), "SM MHz min": num("sm_clock_mhz").min(),
                        "temp °C max": num("temp_c").max(), "power W mean": num("power_w").mean(),
                        # the peak against the limit (the mean says how hard it worked, the peak whether it capped)
                        "% of power limit, max": num("power_w").max() / lim if lim else np.nan,
                        "GPU util % mean": num("gpu_util").mean()})
            th = _throttle_frame(busy)
            any_th = th.any(axis=1) if len(th.columns) else pd.Series(False, index=busy.index)
            row["% ticks throttled"] = float(any_th.mean()) if len(any_th) else np.nan
            row["reasons"] = ", ".join(c for c in th.columns if th[c].any()) or "none"
        else:
            row.update({"CPU % mean (100 = 1 core)": pd.to_numeric(busy["cpu_percent"], errors="coerce").mean(),
                        "CPU % max": pd.to_numeric(busy["cpu_percent"], errors="coerce").max(),
                        "RSS MiB peak": pd.to_numeric(t["rss_mib"], errors="coerce").max()})
        rows.append(row)
    return pd.DataFrame(rows)


def health_markdown(run: Run, short: bool = False) -> str:
    """One sentence on whether the device held its clocks (GPU) or what the CPU did."""
    h = health_table(run)
    if h.empty:
        return "no resource samples in this run"
    if run.has_gpu_samples:
        throttled = h[h["% ticks throttled"].fillna(0) > 0]
        if throttled.empty:
            txt = "the GPU reported no throttling (power, thermal or slowdown) while measuring"
        else:
            txt = ("**the GPU throttled** during " + ", ".join(
                f"{md(r['configuration'])} ({fmt_pct(r['% ticks throttled'])} of ticks: {md(r['reasons'])})"
                for _, r in throttled.iterrows()) + ": those latencies include reduced clocks")
        lo = h["SM MHz min"].min()
        env_gpu = run.environment.get("gpu") or {}
        txt += f"; SM clock from {fmt_num(lo)} to {fmt_num(h['SM MHz median'].max())} MHz (median)"
        if env_gpu.get("sm_clock_max_mhz"):
            txt += f", the GPU's maximum is {fmt_num(env_gpu['sm_clock_max_mhz'])} MHz"
        if env_gpu.get("power_limit_w") and not short:
            txt += f"; power limit {fmt_num(env_gpu['power_limit_w'])} W"
        return txt if short else txt + "."
    cores = run.environment.get("cpu_affinity") or run.environment.get("cpu_logical_cores")
    txt = (f"CPU run: the process used {fmt_num(h['CPU % mean (100 = 1 core)'].mean())}% CPU on average "
           f"({md(cores)} cores usable = {int(cores) * 100 if cores else '?'}%); no GPU clocks to watch")
    return txt if short else txt + ". Other work on the machine is not measured: a noisy neighbour shows as a high CV."


def unstable_table(run: Run) -> pd.DataFrame:
    p = run.points
    if p.empty:
        return pd.DataFrame()
    u = p[(p["unstable"] | p["noisy"]).astype(bool)]
    u = u.assign(series=_series_col(u))  # not p's: assigning a longer Series to an empty frame adds NaN rows
    if u.empty:
        return pd.DataFrame({"flagged points": [
            f"none: every CV ≤ {float(run.params.get('unstable_cv', 0.05)):.0%} and every point's round medians "
            f"within {float(run.params.get('noise_spread', 0.05)):.0%} of each other"]})
    out = pd.DataFrame({"configuration": u["series"], "batch": u["batch"], "shape": u["shape"],
                        "mode": u["mode"].map(MODE_SHORT),
                        "flag": [", ".join(f for f, on in (("noisy", a), ("unstable", b)) if on)
                                 for a, b in zip(u["noisy"], u["unstable"])],
                        "median ms": u["median_ms"], "95% interval ms": [f"{fmt_num(lo)}–{fmt_num(hi)}" for lo, hi in
                                                                        zip(u["ci_low_ms"], u["ci_high_ms"])],
                        "rounds": u["rounds"], "round spread": u["round_spread"],
                        "slow-host rounds": u["host_slow_rounds"], "CV": u["cv"], "samples": u["n"]})
    if not _multi_shape(run):
        out = out.drop(columns="shape")
    return out.sort_values("round spread", ascending=False).reset_index(drop=True)


def _plain_log(ax, axis: str = "y") -> None:
    """Log-scale tick labels as plain numbers (0.5, 2, 20) rather than 2×10⁻¹."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()  # call after plotting: the data's range
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 3.2 else (1.0, 2.0, 5.0) if decades > 1.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades > 0.6 else (
        1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    a.set_major_locator(LogLocator(base=10, subs=subs))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def _line(ax, t: pd.DataFrame, col: str, color: str, lw: float = 1.2) -> np.ndarray:
    if col not in t:
        return np.array([])
    x, y = _segments(t["t_s"], t[col])
    ax.plot(x, y, color=color, lw=lw)
    return y[np.isfinite(y)]


def _limit_line(ax, value, label: str, color: str, series, headroom: float) -> None:
    """A dotted line at a device limit (max clock, power limit), labelled at the right; y from 0 to above
    both the limit and the data."""
    if value:
        ax.axhline(value, color=color, ls=":", lw=1)
        ax.annotate(label, (1, value), xycoords=("axes fraction", "data"), fontsize=7, ha="right", va="bottom",
                    color=color)
    top = max([v for v in (value, series.max() if len(series) else None) if v] or [1])
    ax.set_ylim(0, top * headroom)


def plot_health(run: Run) -> list:
    """Per backend/precision sweep, on one time axis: every timed iteration (log ms, coloured by batch
    and mode), then on a GPU the SM clock, temperature, power and the throttle reasons NVML reported;
    on a CPU the process CPU % and RSS. A throttled or disturbed stretch shows as a step in both."""
    it = run.iterations
    if it.empty:
        return []
    s = run.samples
    gpu = run.has_gpu_samples
    env_gpu = run.environment.get("gpu") or {}
    figs = []
    for series in _series_order(run):
        b, prec = series.split("/", 1)
        sub = it[(it["backend"] == b) & (it["precision"] == prec)]
        if sub.empty:
            continue
        t = s[(s["backend"] == b) & (s["precision"] == prec)] if not s.empty else s
        th = _throttle_frame(t) if gpu and not t.empty else pd.DataFrame()
        th_rows = [c for c in th.columns if th[c].any()] if not th.empty else []
        ratios = [2.4, 0.9, 0.9, 0.9, 0.2 * max(len(th_rows), 1) + 0.3] if gpu else [2.4, 0.9, 0.9]
        fig, axes = plt.subplots(len(ratios), 1, figsize=(9.6, 1.05 * sum(ratios) + 0.5), sharex=True,
                                 gridspec_kw={"height_ratios": ratios, "hspace": 0.12})
        ax = axes[0]
        cmap = plt.get_cmap("tab20")
        for i, ((batch, mode), g) in enumerate(sub.groupby(["batch", "mode"], sort=True)):
            ax.plot(g["t_s"], g["ms"], ".", ms=2.5, color=cmap(i % 20),
                    label=f"bs {batch} {MODE_SHORT.get(mode, mode)}")
        ax.set_yscale("log")
        _plain_log(ax)
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{series}: every timed iteration, and the {'GPU' if gpu else 'process'} meanwhile", loc="left")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.02), markerscale=3)
        if gpu:
            y = _line(axes[1], t, "sm_clock_mhz", "#2c7fb8")
            mx = env_gpu.get("sm_clock_max_mhz")
            _limit_line(axes[1], mx, f"max {fmt_num(mx)}", "#2c7fb8", y, 1.15)
            axes[1].set_ylabel("SM MHz")
            y = _line(axes[2], t, "temp_c", "#d95f0e")
            if len(y):
                axes[2].set_ylim(min(30, y.min() - 5), max(90, y.max() + 5))
            axes[2].set_ylabel("temp °C")
            y = _line(axes[3], t, "power_w", "#636363")
            lim = env_gpu.get("power_limit_w")
            _limit_line(axes[3], lim, f"limit {fmt_num(lim)} W", "#636363", y, 1.2)
            axes[3].set_ylabel("power W")
            a3 = axes[4]
            if th_rows:
                tt = t["t_s"].to_numpy(dtype=float)
                dt = float(np.nanmedian(np.abs(np.diff(tt)))) if len(tt) > 1 else 0.1
                for k, r in enumerate(th_rows):
                    on = tt[th[r].to_numpy()]
                    a3.broken_barh([(v, dt) for v in on], (k - 0.4, 0.8), color="#c0392b")
                a3.set_yticks(range(len(th_rows)), th_rows, fontsize=7)
                a3.set_ylim(-0.6, len(th_rows) - 0.4)
            else:
                a3.set_yticks([])
                a3.text(0.01, 0.5, "no throttling reported by NVML", transform=a3.transAxes, va="center", fontsize=8,
                        color="#2e7d32")
            a3.set_ylabel("throttle", fontsize=8)
        else:
            y = _line(axes[1], t, "cpu_percent", "#2c7fb8", lw=1)
            axes[1].set_ylim(0, max(100, y.max() if len(y) else 100) * 1.15)
            axes[1].set_ylabel("CPU %\n(100 = 1 core)")
            y = _line(axes[2], t, "rss_mib", "#756bb1")
            axes[2].set_ylim(0, (y.max() if len(y) else 1) * 1.15)
            axes[2].set_ylabel("RSS MiB")
        axes[-1].set_xlabel("seconds since the backend's sweep began")
        fig.align_ylabels(axes)
        figs.append(fig)
    return figs


plot_timeline = plot_health  # the old name


# --- results as data, links -------------------------------------------------------------------

def write_tables(run: Run, sp: pd.DataFrame | None = None, eff: pd.DataFrame | None = None) -> list[str]:
    """The run's tidy tables as Parquet (``Run.to_parquet``) and the report's tables as CSV, in the run folder."""
    written = [p.name for p in run.to_parquet()]
    frames = {"summary": summary_table(run), "parity": parity_table(run), "failures": run.failures,
              "speedup": sp, "efficiency": eff, "energy": _energy_table(run)}
    for name, frame in frames.items():
        if frame is None or frame.empty:
            continue
        frame.to_csv(run.path / f"{name}.csv", index=False)
        written.append(f"{name}.csv")
    return written


def _energy_table(run: Run) -> pd.DataFrame:
    from .report_energy import energy_table

    return energy_table(run)


def data_markdown(run: Run, written: list[str]) -> str:
    # Names, not links: a report mailed or copied on its own carries none of these files (they stay in the
    # run folder), and a link to one would be dead.
    files = ", ".join(f"`{w}`" for w in written)
    return (f"In the run folder `{run.path.name}/` beside this report (they do not travel inside it): {files}.\n\n"
            "- `iterations.parquet`: a row per timed sample (backend, precision, batch, shape, mode, iter, ms, "
            "wall_ms, t_s, requests).\n"
            "- `samples.parquet`: a row per resource-sampler tick (backend, precision, t_s, label, rss_mib, "
            "cpu_percent and on a GPU gpu_util, sm_clock_mhz, mem_clock_mhz, temp_c, power_w, throttle_reasons, ...).\n"
            "- `points.parquet`: a row per point and mode with its statistics, resources and parity.\n"
            "- `kernel_points.parquet`, `kernels.parquet` (GPU runs): a row per kernel-profiled point (GPU busy ms "
            "per request beside the timed median), and a row per kernel name there (category, launches, ms).\n\n"
            "The schema is in `reports/README.md` and `lib/results.py`. Load: "
            "`pandas.read_parquet('<run>/iterations.parquet')`, or everything with "
            "`import lib; run = lib.load_run('<run>')` (`run.iterations`, `run.samples`, `run.points`, "
            "`run.failures`, `run.kernel_points`, `run.kernels`).")


def notebooks_markdown(run: Run) -> str:
    """The executed notebooks in the run folder, by path (not linked: they do not travel with a mailed report)."""
    lines = []
    for c in run.plan.get("combos", []):
        combo = f"{c['backend']}-{c['precision']}"
        rel = f"bench/{combo}/benchmark.ipynb"
        exists = (run.path / rel).exists()
        failed = " — **failed**, see *Failures and skips*" if (run.path / f"bench/{combo}/notebook.failed.json").exists() else ""
        if exists:
            lines.append(f"- {md(c['backend'] + '/' + c['precision'])}: {code(rel)}{failed}")
        else:
            lines.append(f"- {md(c['backend'] + '/' + c['precision'])}: no executed notebook ({code(rel)} is missing)"
                         f"{failed}")
    for name, what in (("export.ipynb", "export (PyTorch → ONNX)"), ("analysis.ipynb", "this analysis")):
        # analysis.ipynb gets its name only once it completes (lib/cli.py), after this cell ran
        if (run.path / name).exists() or name == "analysis.ipynb":
            lines.append(f"- {what}: `{name}`")
    return (f"Executed notebooks of this run, in its folder `{run.path.name}/` (open them with `make lab` or "
            "JupyterLab; they are not inside this report):\n\n" + "\n".join(lines))


def reference_name(run: Run) -> str:
    """What parity compares with, as the benchmark step recorded it (PyTorch FP32 on the CPU, or ONNX Runtime's
    CPU EP on the FP32 ONNX for a model given as ONNX)."""
    return next((e.get("reference") for e in run.engines.values() if e.get("reference")), None) or (
        "PyTorch FP32 (CPU)" if ("torch", "fp32") in {(c["backend"], c["precision"]) for c in run.plan.get("combos", [])}
        else "the FP32 reference")


def has_baseline(run: Run) -> bool:
    return tuple(BASELINE) in {(c["backend"], c["precision"]) for c in run.plan.get("combos", [])}


def heading_markdown(run: Run, section: str) -> str:
    """A section's heading and lead, naming what this run really compares with (``section``: "decision",
    "speedup" or "parity")."""
    base = "PyTorch eager FP32 (torch/fp32)"
    if section == "parity":
        return f"## Parity against {md(reference_name(run))}"
    if section == "decision":
        return ("### Fastest configuration per batch size\n\nLowest tail latency (p99 over every raw sample; p95 where "
                "a point has fewer than 100 samples) and highest throughput at each batch size, among points that "
                "passed parity"
                + (f"; in brackets the speedup over {base} with its 95% interval from the rounds." if has_baseline(run)
                   else "."))
    if section == "speedup":
        if not has_baseline(run):
            return (f"### Speedup over {base}\n\nNot computed: {base} is not in this run"
                    + (" (the model is given as ONNX: no PyTorch backend can run it)."
                       if "ONNX" in reference_name(run) else "."))
        return (f"### Speedup over {base}\n\nmedian(torch/fp32) / median(configuration), each the median over every raw "
                "sample, at the same batch, shape and mode, with a 95% interval from both sides' round medians "
                "(rounds, not iterations, are the independent units). `=` marks a speedup within the noise: its "
                "interval reaches within ±1% of 1, so no difference is claimed.")
    raise ValueError(f"section {section!r}: use decision, speedup or parity")


def parity_note(run: Run) -> str:
    from .measure.parity import CALIBRATION_ITEMS, CENTRED_THRESHOLDS, THRESHOLDS

    src = next((e.get("reference") for e in run.engines.values()), "PyTorch FP32 (CPU)")
    th = "; ".join(f"{p}: cosine ≥ {c}, max|err|/max|ref| ≤ {r:g} (input-dependent part: ≥ {cc}, ≤ {cr:g})"
                   for p, ((c, r), (cc, cr)) in ((p, (THRESHOLDS[p], CENTRED_THRESHOLDS[p])) for p in THRESHOLDS))
    why = "" if run.params.get("weights") else " (with random weights it rarely does)"
    return (f"Reference: {md(src)}, on a fresh seeded input per point (not the timed arrays), through the "
            "device path (outputs fetched after a device-resident request) and the end-to-end path; a point "
            "passes when both do, for every output. Besides the raw outputs, each output's *input-dependent "
            f"part* is compared: minus the reference's mean output over {CALIBRATION_ITEMS} seeded calibration "
            "inputs" + ("" if run.params.get("weights") else
                        ". With random weights most of an output is the same for every input, and the raw figures "
                        "alone would pass a wrong engine") + f". Pass thresholds — {th}. Top-1 agreement is shown, not gated, and only "
            f"where the reference's top-1 class varies between inputs{why}.")


def export_table(run: Run) -> pd.DataFrame:
    """The exported ONNX files for a reader: the path under the cache folder (not the absolute one),
    a short hash; everything else the export recorded is in the run folder's ``export.json``."""
    files = run.export.get("files") if run.export else None
    if files:
        d = pd.DataFrame(files)
        cache = str(run.params.get("cache_dir") or "")
        if "path" in d:
            d["path"] = d["path"].map(lambda v: os.path.relpath(str(v), cache) if cache and str(v).startswith(cache)
                                      else str(v))
            d = d.rename(columns={"path": f"file (under CACHE_DIR)" if cache else "file"})
        if "sha256" in d:
            d["sha256"] = d["sha256"].map(lambda v: str(v)[:12])
        # the reader's order and short headers; a column with nothing in it (no FP16 file) is left out
        names = {"precision": "precision", "source": "source", "file (under CACHE_DIR)": "file (under CACHE_DIR)",
                 "file": "file", "MB": "MB", "export/convert s (original)": "export s", "cache hit": "cache hit",
                 "ORT vs PyTorch cosine": "ORT vs PyTorch cosine",
                 "FP16 vs FP32 ONNX cosine (ORT CPU)": "FP16 vs FP32 cosine", "sha256": "sha256"}
        cols = [c for c in names if c in d and d[c].notna().any()] + [c for c in d if c not in names]
        return d[cols].rename(columns=names)
    why = (run.export or {}).get("error") or (run.export or {}).get("note") or "no export record in this run"
    return pd.DataFrame({"export": [str(why)[-600:]]})


def styled(frame: pd.DataFrame):
    """The full measurement table, flagged rows shaded (``table`` with the highlight)."""
    return table(frame.assign(flagged=frame["noisy"] | frame["unstable"]) if "noisy" in frame else frame,
                 highlight="flagged" if "noisy" in frame else "unstable")


def _sentinel_kind(run: Run) -> str:
    return next((e.get("sentinel") for e in run.engines.values() if e.get("sentinel")), "a fixed tiny workload")


def host_noise_markdown(run: Run) -> str:
    """The summary's first line: was the host quiet, and how much of the run ran while it was slow."""
    h = run.host_noise
    if not h["rounds"]:
        return "- **Host**: no rounds measured."
    share = h["slow_rounds"] / h["rounds"]
    p = run.points
    noisy = int(p["noisy"].sum()) if not p.empty else 0
    what = (f"the host sentinel ({_sentinel_kind(run)}) was {fmt_num(h['best_us'])}–{fmt_num(h['max_us'])} µs, "
            f"median {fmt_num(h['median_us'])} µs")
    if h.get("waited_rounds"):
        what += (f"; the sweep waited {h['waited_s']:.1f} s in all, before {h['waited_rounds']} rounds, for the "
                 f"host to come back within {h['threshold']:.0%} of its best")
    if share >= 0.05 or noisy:
        return (f"- **The host was noisy during this run**: {h['slow_rounds']} of {h['rounds']} rounds "
                f"({share:.0%}) ran while the host was more than {h['threshold']:.0%} slower than its best "
                f"({what}); {noisy} of {len(p)} measurements are flagged *noisy*. Conclusions whose intervals "
                f"overlap are marked **inconclusive** below; rerun on a quieter host (or with more `ROUNDS`) to "
                f"settle them.")
    return (f"- **The host was quiet**: {h['slow_rounds']} of {h['rounds']} rounds ran while it was more than "
            f"{h['threshold']:.0%} slower than its best ({what}).")


def plot_host_sentinel(run: Run):
    """The host sentinel over the run, one dot per round, by backend; slow-host rounds ringed."""
    r = run.rounds
    if r.empty or not r["sentinel_us"].notna().any():
        return None
    h = run.host_noise
    pal = _palette(run)
    d = r.assign(series=r["backend"] + "/" + r["precision"])
    fig, ax = plt.subplots(figsize=(10, 3.0))
    for s in [s for s in _series_order(run) if s in set(d["series"])]:
        g = d[d["series"] == s]
        ax.plot(g["run_t_s"], g["sentinel_us"], ".", ms=3, color=pal.get(s), label=s)
    slow = d[d["host_slow"]]
    if len(slow):
        ax.plot(slow["run_t_s"], slow["sentinel_us"], "o", mfc="none", mec="#c0392b", ms=6, mew=0.8,
                label="slow host")
    ax.axhline(h["best_us"], color="#444", lw=1, ls="--")
    ax.axhline(h["best_us"] * (1 + h["threshold"]), color="#c0392b", lw=1, ls=":")
    ax.set_xlabel("seconds since the run's first measurement")
    ax.set_ylabel("sentinel (µs)")
    ax.set_title(f"Host sentinel before every round: {_sentinel_kind(run)} (dashed: best, dotted: slow threshold)",
                 loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    return fig


def method_markdown(run: Run) -> str:
    p = run.params
    timers = sorted({e.get("timer") for e in run.engines.values()} - {None})
    return "\n".join([
        "How these numbers were measured:",
        f"- Every backend is timed by one module (`lib/timing.py`) with timer(s): {md(', '.join(timers) or 'n/a')} "
        "(`cuda_event` = CUDA events on the engine's stream; `perf_counter` = host clock).",
        f"- **Rounds**: every point and mode is measured in at least {p.get('rounds', 1)} rounds. A round is a "
        f"same-shape warm-up (the point's first: {p['warmup']} s and ≥ 2 iterations; after a switch from another "
        f"point: 0.03 s) and then at least {p['iters']} iterations and {p['duration']} s. Each round visits every "
        "point and mode once, in a seeded random order; the backends run in two passes (pass 1 in plan order, "
        "pass 2 in reverse), half of the minimum rounds in each, so every backend is measured at two moments "
        f"of the run. After the minimum, a point gets more rounds (pass 2) until its 95% interval is within "
        f"±{float(p.get('ci_target', 0.01)):.0%} of its median or it reached {p.get('point_cap', '?')} timed "
        "seconds. Every timed iteration is kept raw (`iterations.parquet`, `rounds.parquet`).",
        "- **Figures and intervals**: a point's figure is the median over all its raw samples. Its 95% interval "
        "comes from its round medians (Student t on their logarithms; where the two passes disagree more than the "
        "rounds within them, the passes' spread is used), never from resampling single iterations, which share "
        "the host's state of their round. Speedups use Welch's t on both sides' log round medians and are "
        "called only beyond ±1%; anything else is *no clear difference* (inconclusive).",
        f"- **Host sentinel**: before every round, {_sentinel_kind(run)} is timed; a round whose sentinel is more "
        f"than {float(p.get('host_slow', 0.10)):.0%} above the run's best (5th percentile) ran on a slow host.",
        *[f"- **{k}**: {v}." for k, v in MODE_LABELS.items()],
        "- On a CPU nothing is asynchronous: the throughput figure is batch / median device-resident latency.",
        f"- {outlier_note(run)}",
        f"- Decisions (summary, budget) use the tail ({tail_label(run)}) over *every* sample and leave out points "
        "that failed parity. Speedups are median(torch/fp32) / median(configuration) at the same batch, shape and "
        "mode; '=' marks one within the noise.",
        "- Resource figures of a point are over its rounds' timed windows (after the first 0.25 s of a window, or "
        "its second half when shorter: NVML averages utilisation over its last sample period); memory peaks are "
        "from the point's characterisation, when it was bound alone.",
        "- Resources: psutil (process RSS, CPU %) and NVML (utilisation, memory, clocks, temperature, power, "
        "throttle reasons) sampled in a background thread at ~10 Hz.",
        "- Load the raw data: `import lib; run = lib.load_run('<this run folder>')` → `run.iterations`, "
        "`run.samples`, `run.points`, `run.failures`.",
    ])


def relpath(target: Path | str, start: Path | str) -> str:
    """A relative link from folder ``start`` to ``target`` (POSIX separators, for HTML)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()
