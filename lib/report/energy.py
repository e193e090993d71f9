"""Energy and cost for the analysis notebook (display code only: it reads ``run.points``' energy columns,
which ``lib.measure.energy`` measured, and the run's ``price_per_hour``).

Cost per million inferences = price per hour / 3600 s x 10^6 / items per second, at the configuration's
rate figure: pipelined throughput on a GPU (requests back to back, as a loaded server runs), batch /
median latency on a CPU. It is the machine's price spread over what it serves at full load: it
assumes the machine does nothing else and is kept busy.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..measure.energy import MIN_SPAN_S, MIN_UPDATES, MIN_WINDOW_S
from ..results.run import Run
from .format import fmt_num
from .plots import MAX_WIDTH_IN, legend_below, pareto_front, place_labels, plain_log, sorted_shapes
from .points import MODE_SHORT, multi_shape, palette, rate_mode, series_order, usable_points

__all__ = ["cost_per_million", "energy_frame", "energy_table", "energy_summary_lines", "energy_markdown",
           "plot_energy"]

SOURCE_LABELS = {"nvml_energy_counter": "NVML energy counter", "nvml_sampled_power": "sampled NVML power x time",
                 "rapl": "RAPL (CPU packages)"}


def cost_per_million(price_per_hour: float, items_per_s) -> float:
    """The machine's price spread over a million inferences at ``items_per_s`` (NaN where either is missing)."""
    if not price_per_hour or items_per_s is None or not np.isfinite(items_per_s) or items_per_s <= 0:
        return float("nan")
    return price_per_hour / 3600.0 * 1e6 / float(items_per_s)


def _price(run: Run) -> float:
    return float(run.params.get("price_per_hour") or 0.0)


def energy_frame(run: Run) -> pd.DataFrame:
    """One row per parity-passing configuration (series x batch x shape): its rate-mode throughput, energy
    and cost, and the p99 of its latency mode (end-to-end where measured) for budget decisions."""
    ok = usable_points(run)
    if ok.empty:
        return pd.DataFrame()
    rate = rate_mode(run)
    lat_mode = "end_to_end" if (ok["mode"] == "end_to_end").any() else "device"
    key = ["series", "backend", "precision", "batch", "shape"]
    r = ok[ok["mode"] == rate].set_index(key)
    lat = ok[ok["mode"] == lat_mode].set_index(key)["tail_ms"].rename("p99_ms")  # the supported tail (p99, or p95 under 100 samples)
    cols = [c for c in ("items_per_s", "joules_per_item", "items_per_joule", "energy_power_w", "energy_source",
                        "energy_status", "energy_note", "host_cpu_joules_per_item", "host_cpu_power_w",
                        "res_power_w_mean") if c in r]
    out = r[cols].join(lat).reset_index()
    out["cost_per_million"] = [cost_per_million(_price(run), v) for v in out["items_per_s"]]
    out.attrs.update(rate_mode=rate, latency_mode=lat_mode)
    return out


def energy_table(run: Run) -> pd.DataFrame:
    f = energy_frame(run)
    if f.empty:
        return f
    out = pd.DataFrame({"configuration": f["series"], "batch": f["batch"], "shape": f["shape"],
                        "items/s": f["items_per_s"], "mJ per item": f["joules_per_item"] * 1e3,
                        "items per J": f["items_per_joule"], "mean power W": f["energy_power_w"]})
    if "res_power_w_mean" in f and f["res_power_w_mean"].notna().any():
        # the sampler's NVML power beside the counter's mean; NVML's plain reading is a 1 s average on recent
        # GPUs (lib.common.gpu.power_reader), which lags windows this short: said in the column's name
        kinds = {e.get("sampler_power_kind") for e in run.engines.values()}
        name = "sampled power W (1 s average)" if "1 s average" in kinds else "sampled power W"
        out[name] = f["res_power_w_mean"]
    if "host_cpu_joules_per_item" in f and f["host_cpu_joules_per_item"].notna().any():
        out["host CPU mJ per item"] = f["host_cpu_joules_per_item"] * 1e3
    if _price(run):
        out["cost per 1M"] = f["cost_per_million"]
    out["source"] = [SOURCE_LABELS.get(s, s) if isinstance(s, str) and s else "–" for s in f["energy_source"]]
    out["note"] = [n if isinstance(n, str) and st != "ok" else "" for n, st in zip(f["energy_note"], f["energy_status"])]
    if not multi_shape(run):
        out = out.drop(columns="shape")
    return out.sort_values(["configuration", "batch"]).reset_index(drop=True)


def _where(r, multi: bool) -> str:
    return f"**{r['series']} at batch {r['batch']}**" + (f" (shape {r['shape']})" if multi else "")


def energy_summary_lines(run: Run, budget_ms: float = 10.0) -> list[str]:
    """Summary bullets: the most energy-efficient configuration, and with PRICE_PER_HOUR the cheapest one
    within the latency budget (p99 of the latency mode over every sample, as the budget line)."""
    f = energy_frame(run)
    if f.empty:
        return []
    multi = multi_shape(run)
    lines = []
    measured = f[f["items_per_joule"].notna()]
    if len(measured):
        r = measured.sort_values("items_per_joule", ascending=False).iloc[0]
        lines.append(f"- **Most energy-efficient**: {_where(r, multi)}, {fmt_num(r['items_per_joule'])} inferences "
                     f"per joule ({fmt_num(r['joules_per_item'] * 1e3)} mJ each, mean "
                     f"{fmt_num(r['energy_power_w'])} W, {SOURCE_LABELS.get(r['energy_source'], r['energy_source'])}).")
    else:
        notes = sorted({n for n in f["energy_note"] if isinstance(n, str) and n})
        lines.append("- **Energy**: not measured in this run" + (f" ({notes[0]})" if notes else "") + ".")
    price = _price(run)
    if price:
        within = f[f["p99_ms"] <= budget_ms].dropna(subset=["cost_per_million"])
        lat = MODE_SHORT.get(f.attrs["latency_mode"], f.attrs["latency_mode"])
        if len(within):
            r = within.sort_values("cost_per_million").iloc[0]
            lines.append(f"- **Cheapest within the budget** (p99 {lat} ≤ {budget_ms:g} ms, at {price:g} per hour): "
                         f"{_where(r, multi)}, {fmt_num(r['cost_per_million'])} per million inferences at "
                         f"{fmt_num(r['items_per_s'])} items/s ({MODE_SHORT.get(f.attrs['rate_mode'])}).")
        else:
            lines.append(f"- **Cheapest within the budget**: no configuration has a p99 {lat} latency ≤ "
                         f"{budget_ms:g} ms.")
    return lines


def energy_markdown(run: Run) -> str:
    notes = {}
    for e in run.engines.values():
        for d, why in (e.get("energy") or {}).get("notes", {}).items():
            notes.setdefault(d, why)
    sources = sorted({s for e in run.engines.values() for s in (e.get("energy") or {}).get("sources", {}).values()})
    f = energy_frame(run)
    rate = MODE_SHORT.get(f.attrs.get("rate_mode", ""), "") if not f.empty else ""
    text = [f"Energy of each timed window (its warm-up left out), divided by the inferences it ran; rows at the "
            f"{rate} figure. Sources: " + (", ".join(SOURCE_LABELS.get(s, s) for s in sources) or "none") + "."]
    for d, why in notes.items():
        text.append(f"- {'GPU' if d == 'gpu' else 'CPU'}: {why if 'sampled' in why else 'not measured here: ' + why}.")
    text.append(f"- A figure needs a point's windows (its rounds, both passes pooled) to last at least {MIN_WINDOW_S:g} s "
                f"with at least {MIN_UPDATES} counter updates inside them spanning {MIN_SPAN_S:g} s and a third of "
                "their time (error at most 2 × the 10 ms poll / that span); a shorter pool says so instead of "
                "reporting 0 J (raise `DURATION`).")
    text.append("- The counters cover the whole GPU board or CPU package, every process on it: on a shared "
                "machine they count the neighbours too.")
    price = _price(run)
    text.append(f"- Cost per million inferences = `PRICE_PER_HOUR` ({price:g}) / 3600 × 10⁶ / items per s, at the "
                f"configuration's full-load throughput." if price else
                "- No `PRICE_PER_HOUR` given: `make report ... PRICE_PER_HOUR=3.5` adds the cost per million "
                "inferences of each configuration.")
    return "\n".join(text)


def plot_energy(run: Run):
    """Throughput against joules per inference: each series' curve over its batch sizes drawn faint, its
    lowest-energy point marked and labelled (labels placed apart), the frontier (nothing else both cheaper per
    inference and faster) drawn where it has more than one point; legend below; one panel per shape."""
    f = energy_frame(run)
    if f.empty or not f["joules_per_item"].notna().any():
        return None
    f = f.dropna(subset=["joules_per_item", "items_per_s"]).assign(mj=lambda d: d["joules_per_item"] * 1e3)
    pal = palette(run)
    shapes = sorted_shapes(f["shape"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(min(MAX_WIDTH_IN, 5.2 * len(shapes) + 1.2), 4.6), squeeze=False)
    used, frontier = [], False
    for ax, shape in zip(axes[0], shapes):
        sub = f[f["shape"] == shape]
        for s in [s for s in series_order(run) if s in set(sub["series"])]:
            g = sub[sub["series"] == s].sort_values("batch")
            ax.plot(g["mj"], g["items_per_s"], "-o", ms=3.5, lw=1, alpha=0.35, color=pal.get(s))
            used.append(s)
        x, y = sub["mj"].to_numpy(float), sub["items_per_s"].to_numpy(float)
        front = sub.iloc[pareto_front(x, y)]
        if len(front) > 1:  # energy falls as throughput rises, so the frontier is often one point
            ax.plot(front["mj"], front["items_per_s"], "-", color="#222", lw=1.8, zorder=3)
            frontier = True
        best = sub.loc[sub.groupby("series")["mj"].idxmin()]  # each series' lowest energy per inference
        ax.scatter(best["mj"], best["items_per_s"], s=46, c=[pal.get(s) for s in best["series"]],
                   edgecolors="#222", linewidths=1.2, zorder=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log(ax, "x")
        plain_log(ax, "y")
        ax.margins(x=0.12, y=0.12)
        ax.set_xlabel("mJ per inference (log)")
        ax.set_ylabel("items / s (log)")
        if len(shapes) > 1:
            ax.set_title(f"shape {shape}")
        place_labels(ax, [(r["mj"], r["items_per_s"], f"{r['series']} bs {r['batch']}", pal.get(r["series"]))
                          for _, r in best.sort_values("mj").iterrows()])
    fig.suptitle("Throughput vs energy per inference, up and left is better\n(labelled: each configuration's "
                 "lowest energy)", fontsize=11)
    fig.tight_layout()
    seen = list(dict.fromkeys(used))
    handles = [Line2D([], [], color=pal.get(s), marker="o", ms=5, lw=1.5) for s in seen]
    if frontier:
        handles.append(Line2D([], [], color="#222", lw=1.8, marker="o", mfc="white", mec="#222"))
    legend_below(fig, handles, seen + (["frontier"] if frontier else []))
    return fig
