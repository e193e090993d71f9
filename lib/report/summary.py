"""Section "Summary" (and the report's title): decisions, the latency budget, speedups over PyTorch eager FP32
and the latency–throughput trade-off.

Decisions use the parity-passing points only, and the tail percentile over *every* raw sample (``tail_ms``:
p99 where a point has at least 100 samples, else p95): a latency budget has to cover the tail that outlier
filtering would hide. Every comparison (speedups, "lowest latency") is judged with the round-based
intervals of ``lib.common.stats``: one that falls within the noise is called inconclusive, never quoted as a win.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..backends import backend_libraries
from ..results.run import Run
from ..common.runstate import FINGERPRINT_FILE
from ..common.stats import ratio_interval, verdict
from .energy import energy_summary_lines
from .format import counted, fmt_g, fmt_num, fmt_pct, fmt_x
from .markup import code, md
from .plots import latency_throughput, mark_parity_failed, plain_log, shape_key, speedup_bars
from .points import (BASELINE, MODE_SHORT, compare_points, multi_shape, palette, rate_mode, rounds_of, series_order,
                     tail_label, usable_points)
from .quant import has_quantized, quant_markdown
from .stability import health_markdown, host_noise_markdown


def speedups(run: Run) -> pd.DataFrame:
    """Speedup of every point over PyTorch eager FP32 at the same batch, shape and mode:
    median(baseline ms) / median(ms), each the median over every raw sample (the tables' figure), with a
    95 % interval from both sides' round medians (``lib.common.stats.ratio_interval``: rounds, not single
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
        rb, gb = rounds_of(run, *BASELINE, *key)
        rx, gx = rounds_of(run, r.backend, r.precision, *key)
        lo, hi = ratio_interval(rb, rx, ratio, gb, gx)
        is_base = (r.backend, r.precision) == BASELINE
        v = "baseline" if is_base else {"lower": "slower", "higher": "faster"}.get(verdict(lo, hi), "no clear difference")
        rows.append({"backend": r.backend, "precision": r.precision, "batch": r.batch, "shape": r.shape,
                     "mode": r.mode, "median_ms": r.median_ms, "baseline_median_ms": float(b["median_ms"]),
                     "speedup": ratio, "ci_low": lo, "ci_high": hi, "significant": v in ("faster", "slower"),
                     "verdict": v, "rounds": len(rx), "baseline_rounds": len(rb)})
    return pd.DataFrame(rows, columns=cols)


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
        return (f" ({fmt_x(r['speedup'])} vs torch/fp32, 95% {fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])}: "
                f"inconclusive, within the noise)")
    return f" ({fmt_x(r['speedup'])} vs torch/fp32, 95% {fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])})"


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
    ok = usable_points(run)
    if ok.empty:
        return pd.DataFrame()
    rate = rate_mode(run)
    rows = []
    for (shape, batch), g in ok.groupby(["shape", "batch"], sort=True):
        row = {"shape": shape, "batch": batch}
        for mode, col in (("end_to_end", f"lowest {tail_label(run)}, end-to-end"),
                          ("device", f"lowest {tail_label(run)}, device-resident")):
            m = g[g["mode"] == mode].sort_values("tail_ms")
            row[col] = (f"{m.iloc[0]['series']}: {fmt_num(m.iloc[0]['tail_ms'])} ms"
                        f"{_speedup_of(sp, m.iloc[0]['series'], batch, shape, mode)}") if len(m) else "–"
        t = g[g["mode"] == rate].sort_values("items_per_s", ascending=False)
        row[f"highest throughput ({MODE_SHORT[rate]})"] = (
            f"{t.iloc[0]['series']}: {fmt_num(t.iloc[0]['items_per_s'])} items/s"
            f"{_speedup_of(sp, t.iloc[0]['series'], batch, shape, rate)}") if len(t) else "–"
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.iloc[sorted(range(len(out)), key=lambda i: (shape_key(out["shape"].iloc[i]), out["batch"].iloc[i]))]
    out = out.reset_index(drop=True)  # shapes in numeric order, as in every other section
    return out if multi_shape(run) else out.drop(columns="shape")


best_per_batch = decision_table  # the old name


def budget_table(run: Run, budget_ms: float = 10.0, mode: str = "end_to_end", top: int | None = None) -> pd.DataFrame:
    """Configurations (series × batch × shape) whose p99 ``mode`` latency over every sample is within
    ``budget_ms``, by throughput (batch / median latency of that mode: one batch at a time). Every one of
    them (the summary counts them all), unless ``top`` limits it."""
    ok = usable_points(run)
    if ok.empty:
        return pd.DataFrame()
    m = ok[(ok["mode"] == mode) & (ok["tail_ms"] <= budget_ms)].sort_values("items_per_s", ascending=False)
    if m.empty:
        lat = ok[ok["mode"] == mode].sort_values("tail_ms")
        best = (f"; the lowest is {lat.iloc[0]['series']} at batch {lat.iloc[0]['batch']}: "
                f"{fmt_num(lat.iloc[0]['tail_ms'])} ms") if len(lat) else ""
        return pd.DataFrame({"within the budget": [f"none: every configuration's p99 {MODE_SHORT.get(mode, mode)} "
                                                   f"latency is above {fmt_g(budget_ms)} ms{best}"]})
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
    if not out.empty and not multi_shape(run):
        out = out.drop(columns="shape")
    return out


def budget_markdown(run: Run, budget_ms: float = 10.0, mode: str = "end_to_end") -> str:
    ok = usable_points(run)
    what = f"{tail_label(run)} {MODE_SHORT.get(mode, mode)} latency ≤ {fmt_g(budget_ms)} ms"
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
    shape = f" (shape {md(b['shape'])})" if multi_shape(run) else ""  # b["shape"]: b.shape is the row's own shape
    return (f"**Latency budget ({what})**: the highest throughput within it is **{md(b['series'])} at batch "
            f"{b['batch']}**{shape}: "
            f"{fmt_num(b['items_per_s'])} items/s at {tail_label(run)} {fmt_num(b['tail_ms'])} ms. "
            f"{counted(len(within), 'configuration')} meet{'s' if len(within) == 1 else ''} the budget, {n_over} "
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
        return f"{fmt_x(r['speedup'])} ({fmt_num(r['ci_low'])}–{fmt_num(r['ci_high'])}){mark}"

    d = d.assign(cell=d.apply(cell, axis=1), mode_label=d["mode"].map(MODE_SHORT))
    multi = multi_shape(run) if run is not None else d["shape"].nunique() > 1
    index = ["mode_label", "shape", "series"] if multi else ["mode_label", "series"]
    grid = d.pivot_table(index=index, columns="batch", values="cell", aggfunc="first")
    grid.columns = [f"batch {b}" for b in grid.columns]
    order = {m: i for i, m in enumerate(MODE_SHORT.values())}
    grid = grid.reset_index().rename(columns={"mode_label": "mode", "series": "configuration"})
    series = {s: i for i, s in enumerate(series_order(run))} if run is not None else {}
    by = {"mode": lambda s: s.map(order), "configuration": lambda s: s.map(lambda v: series.get(v, len(series))),
          "shape": lambda s: s.map(shape_key)}
    cols = [c for c in ("mode", "shape", "configuration") if c in grid]
    grid = grid.sort_values(cols, key=lambda s: by[s.name](s), kind="stable")
    return grid.reset_index(drop=True)


def plot_speedups(run: Run, sp: pd.DataFrame, mode: str = "end_to_end"):
    """Speedup over PyTorch eager FP32 per batch size with its 95% CI (error bars), one bar per series
    (``plots.speedup_bars``)."""
    if sp is None or sp.empty:
        return None
    d = sp[(sp["mode"] == mode)].assign(series=lambda x: x["backend"] + "/" + x["precision"])
    d = d[d["series"] != "/".join(BASELINE)]
    if d.empty:
        return None
    return speedup_bars(d, series_order(run), palette(run), fmt_x, plain_log,
                        f"Speedup over torch/fp32, {MODE_SHORT.get(mode, mode)} median, 95% interval from rounds")


def plot_latency_throughput(run: Run, budget_ms: float | None = 10.0, stat: str = "tail_ms",
                            modes: tuple[str, ...] = ("end_to_end", "device")):
    """Latency–throughput trade-off: x = p99 latency (every sample), y = items/s (batch / median
    latency); one faint curve per series over its batch sizes, the Pareto frontier drawn and labelled
    (``plots.latency_throughput``). The dashed line is the budget."""
    ok = usable_points(run)
    if ok.empty:
        return None
    return latency_throughput(ok, series_order(run), palette(run), MODE_SHORT, plain_log, budget_ms, stat, modes,
                              tail=tail_label(run), mark=mark_parity_failed)


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
    runtimes = [d for dists in backend_libraries().values() for d in dists]  # what the backends declare
    versions = ", ".join(f"{k} {md(libs[k])}" for k in runtimes if k in libs)
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
    ok = usable_points(run)
    lines = [host_noise_markdown(run)]
    lat_mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
    winners = {g.sort_values("tail_ms").iloc[0]["series"]
               for _, g in ok[ok["mode"] == lat_mode].groupby(["shape", "batch"])}
    if len(winners) == 1 and ok["series"].nunique() > 1:
        lines.append(f"- **{md(winners.pop())} has the lowest {tail_label(run)} {MODE_SHORT[lat_mode]} latency at every batch size "
                     f"and shape measured.**")
    for shape in sorted(ok["shape"].unique()):
        tag = f" (shape {md(shape)})" if multi_shape(run) else ""
        m = ok[(ok["mode"] == lat_mode) & (ok["shape"] == shape)]
        b1 = m[m["batch"] == m["batch"].min()].sort_values("median_ms")
        if len(b1):
            r = b1.iloc[0]
            lines.append(f"- **Lowest latency at batch {r['batch']}{tag}**: **{md(r['series'])}**, median "
                         f"{fmt_num(r['median_ms'])} ms, {tail_label(run)} {fmt_num(r['tail_ms'])} ms "
                         f"({MODE_SHORT[lat_mode]}){_speedup_of(sp, r['series'], r['batch'], shape, lat_mode)}"
                         f"{_runner_up_note(run, b1, lat_mode)}.")
        rm = rate_mode(run)
        t = ok[(ok["mode"] == rm) & (ok["shape"] == shape)].sort_values("items_per_s", ascending=False)
        if len(t):
            r = t.iloc[0]
            lines.append(f"- **Highest throughput{tag}**: **{md(r['series'])} at batch {r['batch']}**, "
                         f"{fmt_num(r['items_per_s'])} items/s ({MODE_SHORT[rm]})"
                         f"{_speedup_of(sp, r['series'], r['batch'], shape, rm)}"
                         f"{_runner_up_note(run, t, rm, higher_is_better=True)}.")
    lines.append("- " + budget_markdown(run, budget_ms, lat_mode))
    lines.extend(energy_summary_lines(run, budget_ms))
    if sp is not None and not sp.empty:
        d = sp[(sp["backend"] + "/" + sp["precision"] != "/".join(BASELINE)) & (sp["mode"] == lat_mode)]
        if len(d):
            lines.append(f"- **Against PyTorch eager FP32** ({MODE_SHORT[lat_mode]}): "
                         f"{int((d['verdict'] == 'faster').sum())} of {len(d)} points are faster with 95% confidence, "
                         f"{int((d['verdict'] == 'slower').sum())} slower, {int((~d['significant']).sum())} within "
                         f"the noise (inconclusive); speedups range "
                         f"{fmt_x(d['speedup'].min())}–{fmt_x(d['speedup'].max())}.")
    elif not ((p["backend"] == BASELINE[0]) & (p["precision"] == BASELINE[1])).any():
        lines.append("- No PyTorch eager FP32 (torch/fp32) points in this run: no speedups are computed.")
    if has_quantized(run):  # INT8/FP8: the fastest configuration within the accuracy tolerance (MAX_ACC_DROP)
        lines.extend(line for line in quant_markdown(run).splitlines()
                     if line.startswith(("- **Fastest within", "- **No configuration", "- **Random weights")))
    if eff is not None and not eff.empty and eff["peak_share"].notna().any():
        e = eff[eff["mode"] == rate_mode(run)].sort_values("peak_share", ascending=False)
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
    for n, e in run.engines.items():  # lib.backends.tensorrt.build: a cached TensorRT-RTX plan that runs, but suboptimally
        if (e.get("info") or {}).get("plan_warning"):
            lines.append(f"- **Warning ({md(n)})**: {md(e['info']['plan_warning'])}")
    fallback = {n: (e.get("info") or {}).get("cpu_ep_fallback") for n, e in run.engines.items()}
    fallback = {n: v for n, v in fallback.items() if v and v != "none"}
    if fallback:  # lib.backends.ort.engine: the session could not be made with CPU fallback disabled
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
