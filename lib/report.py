"""Tables and plots for the analysis notebook. Display code only: it reads a loaded ``Run``
(``lib.results``) and never measures anything."""

from __future__ import annotations

import json

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .results import Run

__all__ = ["show", "MODE_LABELS", "summary_table", "best_per_batch", "parity_table", "environment_table", "params_table",
           "engines_table", "plot_latency_vs_batch", "plot_throughput_vs_batch", "plot_distributions",
           "plot_resources", "plot_timeline", "outlier_note", "write_tables"]

MODE_LABELS = {
    "device": "device-resident latency (inputs already on the device, outputs left there)",
    "end_to_end": "end-to-end latency (host arrays in, host arrays out, copies included)",
    "throughput": "pipelined throughput (back-to-back requests, one sync per window)",
}
sns.set_theme(style="whitegrid", context="notebook")


def show(fig, dpi: int = 100) -> None:
    """Display a figure as an embedded PNG whatever matplotlib backend is active, then free it
    (the HTML report then carries the image itself, and no figure is shown twice)."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue()))


def _series(run: Run) -> pd.Series:
    p = run.points
    return p["backend"] + "/" + p["precision"]


def summary_table(run: Run, mode: str | None = None) -> pd.DataFrame:
    """One row per backend x precision x batch x shape x mode, statistics under the run's outlier rule."""
    p = run.points
    if p.empty:
        return p
    if mode:
        p = p[p["mode"] == mode]
    cols = {"backend": "backend", "precision": "precision", "batch": "batch", "shape": "shape", "mode": "mode",
            "median_ms": "median ms", "p90_ms": "p90 ms", "p95_ms": "p95 ms", "p99_ms": "p99 ms",
            "mean_ms": "mean ms", "std_ms": "std ms", "cv": "CV", "items_per_s": "items/s",
            "p99_raw_ms": "p99 raw ms", "n": "samples", "dropped": "outliers dropped", "unstable": "unstable"}
    out = p[list(cols)].rename(columns=cols)
    if "res_rss_mib_peak" in p:
        out["peak RSS MiB"] = p["res_rss_mib_peak"].values
    if "res_cpu_percent_mean" in p:
        out["CPU %"] = p["res_cpu_percent_mean"].values
    if "res_gpu_util_mean" in p:
        out["GPU util %"] = p["res_gpu_util_mean"].values
    if "nvml_process_mib" in p and p["nvml_process_mib"].notna().any():
        out["VRAM process MiB"] = p["nvml_process_mib"].values
    if "framework_mem_mib" in p and p["framework_mem_mib"].notna().any():
        out["framework MiB"] = p["framework_mem_mib"].values
    return out.sort_values(["mode", "shape", "batch", "median ms"]).reset_index(drop=True)


def best_per_batch(run: Run) -> pd.DataFrame:
    """Fastest backend/precision per batch and shape: lowest device-resident median, and highest throughput."""
    p = run.points
    if p.empty:
        return p
    p = p.assign(series=_series(run))
    ok = p[p["parity_passed"].fillna(False)]
    rows = []
    for (shape, batch), g in ok.groupby(["shape", "batch"]):
        lat = g[g["mode"] == "device"].sort_values("median_ms")
        e2e = g[g["mode"] == "end_to_end"].sort_values("median_ms")
        thr_mode = "throughput" if (g["mode"] == "throughput").any() else "device"
        thr = g[g["mode"] == thr_mode].sort_values("items_per_s", ascending=False)
        rows.append({
            "shape": shape, "batch": batch,
            "lowest latency (device)": f"{lat.iloc[0]['series']}: {lat.iloc[0]['median_ms']:.3f} ms" if len(lat) else "",
            "lowest latency (end-to-end)": f"{e2e.iloc[0]['series']}: {e2e.iloc[0]['median_ms']:.3f} ms" if len(e2e) else "",
            "highest throughput": f"{thr.iloc[0]['series']}: {thr.iloc[0]['items_per_s']:,.0f} items/s" if len(thr) else "",
        })
    return pd.DataFrame(rows)


def parity_table(run: Run) -> pd.DataFrame:
    p = run.points
    if p.empty:
        return p
    d = p[p["mode"] == "device"]
    cols = {"backend": "backend", "precision": "precision", "batch": "batch", "shape": "shape",
            "parity_passed": "passed", "parity_cosine": "cosine", "parity_rel_err": "max |err| / max |ref|",
            "parity_max_abs_err": "max |err|", "parity_top1": "top-1 agreement"}
    return d[list(cols)].rename(columns=cols).reset_index(drop=True)


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
                     "load/build s": round(e.get("load_s", float("nan")), 2),
                     "details": ", ".join(f"{k}={v}" for k, v in info.items() if k != "compile_s")[:300],
                     "parity reference": e.get("reference")})
    return pd.DataFrame(rows)


def outlier_note(run: Run) -> str:
    p = run.points
    n = int(p["n"].sum()) if not p.empty else 0
    dropped = int(p["dropped"].sum()) if not p.empty else 0
    return (f"Outlier rule for presentation: {run.rule.label}. Dropped {dropped} of {n} samples "
            f"({(dropped / n * 100) if n else 0:.2f}%); every sample is kept on disk, and 'p99 raw ms' is over all of them. "
            f"Points with CV > {float(run.params.get('unstable_cv', 0.05)):.0%} are flagged unstable.")


def _lineplot(run: Run, y: str, mode: str, ylabel: str, title: str, logy: bool):
    p = run.points[run.points["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    shapes = sorted(p["shape"].unique())
    fig, axes = plt.subplots(1, len(shapes), figsize=(7 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        sub = p[p["shape"] == shape].sort_values("batch")
        sns.lineplot(data=sub, x="batch", y=y, hue="series", marker="o", ax=ax)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(sorted(sub["batch"].unique()), labels=[str(b) for b in sorted(sub["batch"].unique())])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} — shape {shape}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency_vs_batch(run: Run, mode: str = "device"):
    return _lineplot(run, "median_ms", mode, "median latency (ms, log)", f"Latency ({mode})", True)


def plot_throughput_vs_batch(run: Run):
    mode = "throughput" if (run.points["mode"] == "throughput").any() else "device"
    return _lineplot(run, "items_per_s", mode, "items / s", f"Throughput ({mode})", False)


def plot_distributions(run: Run, mode: str = "device"):
    """Latency distribution per batch size (outliers filtered by the run's rule, as in the tables)."""
    it = run.iterations
    it = it[it["mode"] == mode].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    keep = np.zeros(len(it), dtype=bool)
    for _, idx in it.groupby(["series", "batch", "shape"]).groups.items():
        keep[it.index.get_indexer(idx)] = run.rule.keep_mask(it.loc[idx, "ms"].to_numpy())
    it = it[keep]
    batches = sorted(it["batch"].unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(max(4.5 * len(batches), 7), 4.2), squeeze=False)
    for ax, b in zip(axes[0], batches):
        sns.boxplot(data=it[it["batch"] == b], x="series", y="ms", ax=ax, fliersize=1.5, hue="shape")
        ax.set_title(f"batch {b}")
        ax.set_xlabel("")
        ax.set_ylabel(f"{mode} latency (ms)")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    return fig


def plot_resources(run: Run):
    """Peak memory and mean utilisation per backend (steady windows of the device-resident runs)."""
    p = run.points[run.points["mode"] == "device"].assign(series=lambda d: d["backend"] + "/" + d["precision"])
    gpu = "res_gpu_util_mean" in p and p["res_gpu_util_mean"].notna().any()
    metrics = [("res_rss_mib_peak", "peak process RSS (MiB)"), ("res_cpu_percent_mean", "process CPU % (mean)")]
    if gpu:
        metrics = [("nvml_process_mib", "VRAM, process (NVML, MiB)"), ("res_gpu_util_mean", "GPU utilisation % (mean)")] + metrics
    metrics = [(k, t) for k, t in metrics if k in p and p[k].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.8 * len(metrics), 4), squeeze=False)
    for ax, (k, title) in zip(axes[0], metrics):
        sns.barplot(data=p, x="batch", y=k, hue="series", ax=ax)
        ax.set_title(title)
        ax.set_ylabel("")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_timeline(run: Run):
    """Every timed sample in order, per backend, over the sampler's CPU/GPU readings."""
    it = run.iterations[run.iterations["mode"] != "throughput"]
    combos = list(dict.fromkeys(it["backend"] + "/" + it["precision"]))
    s = run.samples
    gpu = not s.empty and "gpu_util" in s and s["gpu_util"].notna().any()
    fig, axes = plt.subplots(len(combos), 1, figsize=(12, 2.8 * len(combos)), squeeze=False, sharex=False)
    for ax, combo in zip(axes[:, 0], combos):
        b, prec = combo.split("/")
        sub = it[(it["backend"] == b) & (it["precision"] == prec)]
        for (batch, mode), g in sub.groupby(["batch", "mode"]):
            ax.plot(g["t_s"], g["ms"], ".", ms=2, label=f"bs {batch} {mode}")
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"{combo}: every timed iteration over time")
        ax.legend(fontsize=6, ncol=4, loc="upper left")
        if not s.empty:
            t = s[(s["backend"] == b) & (s["precision"] == prec)]
            ax2 = ax.twinx()
            col, lab = ("gpu_util", "GPU util %") if gpu else ("cpu_percent", "process CPU %")
            ax2.plot(t["t_s"], t[col], color="grey", alpha=0.5, lw=1)
            ax2.set_ylabel(lab, color="grey")
            ax2.grid(False)
    axes[-1, 0].set_xlabel("seconds since the backend's sweep began")
    fig.tight_layout()
    return fig


def write_tables(run: Run) -> list[str]:
    """The report's tables as files in the run folder (CSV + Parquet), for anyone who wants the numbers."""
    written = []
    for name, frame in {"summary": summary_table(run), "parity": parity_table(run), "failures": run.failures}.items():
        if frame is None or frame.empty:
            continue
        frame.to_csv(run.path / f"{name}.csv", index=False)
        written.append(f"{name}.csv")
    if not run.points.empty:
        run.points.to_parquet(run.path / "points.parquet", index=False)
        written.append("points.parquet")
    return written


def title_markdown(run: Run) -> str:
    env = run.environment
    gpu = (env.get("gpu") or {}).get("name")
    where = f"{gpu} (driver {(env.get('gpu') or {}).get('driver')})" if gpu else f"CPU: {env.get('cpu')}"
    return (f"# {run.params['model']}: benchmark report\n\n"
            f"Run `{run.path.name}` on **{run.plan['device']}** — {where}; "
            f"batch sizes {run.plan['batch_sizes']}, shapes {', '.join(run.plan['shapes'])}; "
            f"{len(run.plan['combos'])} backend/precision runs, {len(run.plan['skipped'])} skipped. "
            f"Executed per-backend notebooks are in the run folder under `bench/<backend>-<precision>/benchmark.ipynb`.")


def summary_markdown(run: Run) -> str:
    p = run.points
    if p.empty:
        return "**No backend produced numbers.** See *Failures and skipped backends*."
    ok = p[(p["mode"] == "device") & p["parity_passed"].fillna(False)]
    lines = []
    for batch in sorted(ok["batch"].unique()):
        g = ok[ok["batch"] == batch].sort_values("median_ms")
        best = g.iloc[0]
        lines.append(f"- batch {batch}: fastest **{best['backend']}/{best['precision']}** at "
                     f"{best['median_ms']:.3f} ms median (p99 {best['p99_ms']:.3f} ms, "
                     f"{best['items_per_s']:,.0f} items/s)")
    unstable = int(p["unstable"].sum())
    fails = len(run.failures)
    return ("Fastest device-resident configuration per batch size (parity passed):\n\n" + "\n".join(lines) +
            f"\n\n{unstable} of {len(p)} measurements flagged unstable (CV above threshold); "
            f"{fails} failed or skipped entries (see below).")


def resources_note(run: Run) -> str:
    base = {}
    for name, e in run.engines.items():
        base[name] = e.get("baseline", {})
    first = next(iter(base.values()), {})
    parts = [f"Process RSS before loading: {first.get('rss_mib', float('nan')):.0f} MiB"]
    if "gpu_used_mib" in first:
        parts.append(f"GPU memory in use device-wide before loading: {first['gpu_used_mib']:.0f} MiB (idle baseline)")
    return ("Figures over each measurement's steady window (its timed window minus the first 0.25 s), sampled at "
            "about 10 Hz; memory is the peak, utilisation the mean. " + "; ".join(parts) + ".")


def styled(frame: pd.DataFrame):
    """Round for reading; unstable rows highlighted."""
    if frame.empty:
        return frame
    fmt = {c: "{:.3f}" for c in frame.columns if c.endswith(" ms")}
    fmt.update({"CV": "{:.1%}", "items/s": "{:,.1f}"})
    fmt.update({c: "{:.0f}" for c in ("peak RSS MiB", "CPU %", "GPU util %", "VRAM process MiB", "framework MiB")
                if c in frame})
    return (frame.style.format(fmt, na_rep="–")
            .apply(lambda r: ["background-color: #fff3cd" if r.get("unstable") else "" for _ in r], axis=1)
            .hide(axis="index"))


def parity_note(run: Run) -> str:
    from .parity import THRESHOLDS

    src = next((e.get("reference") for e in run.engines.values()), "PyTorch FP32 (CPU)")
    th = "; ".join(f"{p}: cosine ≥ {c}, max|err|/max|ref| ≤ {r:g}" for p, (c, r) in THRESHOLDS.items())
    return (f"Reference: {src} on the same seeded input per point. Pass thresholds — {th}. "
            "Top-1 agreement is shown, not gated (random weights make near-ties).")


def failures_table(run: Run) -> pd.DataFrame:
    if run.failures.empty:
        return pd.DataFrame({"status": ["none: every planned point produced numbers and passed parity"]})
    return run.failures


def export_table(run: Run) -> pd.DataFrame:
    files = run.export.get("files") if run.export else None
    return pd.DataFrame(files) if files else pd.DataFrame({"export": ["no export record in this run"]})


def method_markdown(run: Run) -> str:
    p = run.params
    timers = sorted({e.get("timer") for e in run.engines.values()} - {None})
    return "\n".join([
        "How these numbers were measured:",
        f"- Every backend is timed by one module (`lib/timing.py`) with timer(s): {', '.join(timers) or 'n/a'} "
        "(`cuda_event` = CUDA events on the engine's stream; `perf_counter` = host clock).",
        f"- Warm-up on the benchmarked shape: {p['warmup']} s and at least 2 iterations; then at least "
        f"{p['iters']} iterations and {p['duration']} s per measurement. Every timed iteration is kept raw "
        "(`points.parquet`, `bench/*/points/*.parquet`).",
        *[f"- **{k}**: {v}." for k, v in MODE_LABELS.items()],
        "- On a CPU nothing is asynchronous: the throughput figure is batch / median device-resident latency.",
        f"- {outlier_note(run)}",
        "- Resources: psutil (process RSS, CPU %) and NVML (utilisation, memory, clocks, temperature, power, "
        "throttle reasons) sampled in a background thread at ~10 Hz.",
        "- Load the raw data: `import lib; run = lib.load_run('<this run folder>')` → `run.iterations`, "
        "`run.samples`, `run.points`, `run.failures`.",
    ])
