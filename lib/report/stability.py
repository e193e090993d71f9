"""Sections "Stability", "Memory and utilisation" and "Failures and skips": the host sentinel timed before
every round, the noisy and unstable points, what the device's clocks, power and temperature did over the
run, memory and utilisation per point, and every backend or point that produced no numbers.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..results.run import Run
from ..measure.sampler import throttle_names
from .format import fmt_num, fmt_pct, is_missing
from .markup import md
from .plots import plain_log
from .points import MODE_SHORT, multi_shape, palette, series_of, series_order


# NVML clock-event reasons that mean the GPU slowed down (idle, application-clock and display settings do not)
THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


# Worst first: what broke, then what was not measured
FAILURE_ORDER = ("export failed", "crashed", "oom", "error", "parity failed", "not run", "unavailable", "skipped")


def failure_rows(f: pd.DataFrame, first: tuple[str, ...] = (), reason_chars: int | None = None) -> pd.DataFrame:
    """Failure rows (``Run.failures``, or several runs' with a column per ``first``) for reading: grouped by
    ``first``, the worst status first, batch and reason as text (a reason cut to its last ``reason_chars``)."""
    order = {s: i for i, s in enumerate(FAILURE_ORDER)}
    f = f.assign(_o=f["status"].map(lambda s: order.get(s, 99))).sort_values([*first, "_o", "backend"], kind="stable")
    f = f.drop(columns="_o").copy()
    f["batch"] = f["batch"].map(lambda v: "–" if is_missing(v) else str(int(v)))
    f["reason"] = f["reason"].map(lambda s: "–" if is_missing(s) or str(s).strip() == "" else
                                  str(s).strip()[-reason_chars:] if reason_chars else str(s).strip())
    return f.reset_index(drop=True)


def failures_table(run: Run) -> pd.DataFrame:
    """Every backend or point that produced no numbers (unavailable here, skipped, export failure,
    crash, out of memory, error) or whose parity failed, with the reason."""
    if run.failures.empty:
        return pd.DataFrame({"status": ["none: every planned point produced numbers and passed parity"]})
    return failure_rows(run.failures)


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
    pal = palette(run)
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(3.2 * len(metrics), 9.6), 3.4), squeeze=False)
    series = [s for s in series_order(run) if s in set(p["series"])]
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
    if "throttle_reasons" not in s:
        return pd.DataFrame(index=s.index)
    names = s["throttle_reasons"].map(lambda m: set(throttle_names(int(m))) if not is_missing(m) else set())
    return pd.DataFrame({r: names.map(lambda n, r=r: r in n) for r in THROTTLING}, index=s.index)


def _own_process(t: pd.DataFrame) -> pd.DataFrame:
    """A backend's ticks with RSS only where its process was its own: pass 2 runs every backend in one process
    (lib/sweep/second_pass.py), whose RSS holds what earlier backends left; there RSS is NaN."""
    if "pass" not in t or not (t["pass"] != 2).any():
        return t
    return t.assign(rss_mib=t["rss_mib"].where(t["pass"] != 2))


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
    for series in series_order(run):
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
                        "RSS MiB peak": pd.to_numeric(_own_process(t)["rss_mib"], errors="coerce").max()})
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
    u = u.assign(series=series_of(u))  # not p's: assigning a longer Series to an empty frame adds NaN rows
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
    if not multi_shape(run):
        out = out.drop(columns="shape")
    return out.sort_values("round spread", ascending=False).reset_index(drop=True)


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
    for series in series_order(run):
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
        plain_log(ax)
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
            y = _line(axes[2], t.assign(rss_mib=_own_process(t)["rss_mib"]), "rss_mib", "#756bb1")
            axes[2].set_ylim(0, (y.max() if len(y) else 1) * 1.15)
            axes[2].set_ylabel("RSS MiB\n(own process)")
        axes[-1].set_xlabel("seconds since the backend's sweep began")
        fig.align_ylabels(axes)
        figs.append(fig)
    return figs


plot_timeline = plot_health  # the old name


def sentinel_kind(run: Run) -> str:
    return next((e.get("sentinel") for e in run.engines.values() if e.get("sentinel")), "a fixed tiny workload")


def host_noise_markdown(run: Run) -> str:
    """The summary's first line: was the host quiet, and how much of the run ran while it was slow."""
    h = run.host_noise
    if not h["rounds"]:
        return "- **Host**: no rounds measured."
    share = h["slow_rounds"] / h["rounds"]
    p = run.points
    noisy = int(p["noisy"].sum()) if not p.empty else 0
    what = (f"the host sentinel ({sentinel_kind(run)}) was {fmt_num(h['best_us'])}–{fmt_num(h['max_us'])} µs, "
            f"median {fmt_num(h['median_us'])} µs")
    if h.get("waited_rounds"):
        what += (f"; the sweep waited {h['waited_s']:.1f} s in all, before {h['waited_rounds']} rounds, for the "
                 f"host to come back within {h['threshold']:.0%} of its best")
    cause = ""
    if run.device == "cpu" and h.get("cpu_wait_median") == h.get("cpu_wait_median") and h["slow_rounds"]:
        k = h["cpu_wait_rounds"]
        cause = (f" In {k} of the slow rounds the benchmark's threads waited for a CPU more than "
                 f"{h['threshold']:.0%} of the time: other processes on this machine took its cores (close them, or "
                 f"give the benchmark cores of its own). "
                 + (f"The other {h['slow_rounds'] - k} had no such wait inside them and were slow by the sentinel "
                    f"alone: a burst just before or after the round, or the machine itself running slower (a "
                    f"virtual machine's neighbours, its clocks), which a process inside it cannot see or change."
                    if h["slow_rounds"] > k else ""))
    if share >= 0.05 or noisy:
        return (f"- **The host was noisy during this run**: {h['slow_rounds']} of {h['rounds']} rounds "
                f"({share:.0%}) ran while the host was more than {h['threshold']:.0%} slower than its best "
                f"({what}).{cause} {noisy} of {len(p)} measurements are flagged *noisy*. Conclusions whose intervals "
                f"overlap are marked **inconclusive** below; rerun on a quieter host (or with more `ROUNDS`) to "
                f"settle them.")
    return (f"- **The host was quiet**: {h['slow_rounds']} of {h['rounds']} rounds ran while it was more than "
            f"{h['threshold']:.0%} slower than its best ({what}).{cause}").rstrip()


def plot_host_sentinel(run: Run):
    """The host sentinel over the run, one dot per round, by backend; slow-host rounds ringed."""
    r = run.rounds
    if r.empty or not r["sentinel_us"].notna().any():
        return None
    h = run.host_noise
    pal = palette(run)
    d = r.assign(series=r["backend"] + "/" + r["precision"])
    fig, ax = plt.subplots(figsize=(10, 3.0))
    for s in [s for s in series_order(run) if s in set(d["series"])]:
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
    ax.set_title(f"Host sentinel before every round: {sentinel_kind(run)} (dashed: best, dotted: slow threshold)",
                 loc="left")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    return fig
