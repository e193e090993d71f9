"""Latency under load for the analysis notebook (display code only: it reads the load stage's files,
``lib.sweep.load_stage.read_load``; the one computation here is the model's budget search when the notebook's
``budget_ms`` differs from the stage's, which runs the same ``lib.sweep.load_stage.capacity_rows``).

* ``load_markdown``: what ran (which configurations, why, what a lane is on each backend), or why nothing did.
* ``plot_load_curves``: perf_analyzer's curve per configuration: tail latency against achieved throughput,
  the closed loop at each concurrency, measured open-loop points without batching and with the batcher,
  and the model's predicted curves over a grid of rates.
* ``load_table``: every measured point beside the model's prediction at the same rate and policy, with
  the model's error; ``model_error_markdown`` states that error over all measured open-loop points.
* ``capacity_table``: the highest request rate each configuration sustains within the budget, measured
  (the highest measured rate that was sustained with its tail within the budget) and predicted, and the
  policy that achieves it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..measure.load_model import BatchPolicy
from ..sweep.load_stage import BUDGET_MS, capacity_rows, model_samples, read_load
from ..results.run import Run

__all__ = ["load_markdown", "plot_load_curves", "load_table", "capacity_table", "model_error_markdown",
           "model_errors"]


def _data(run: Run) -> dict:
    cache = run.__dict__.setdefault("_load_cache", {})
    if "data" not in cache:
        cache["data"] = read_load(run.path)
    return cache["data"]


def _series(frame: pd.DataFrame) -> pd.Series:
    return frame["backend"] + "/" + frame["precision"]


def _policy_label(max_batch, delay) -> str:
    return BatchPolicy(int(max_batch), float(delay)).label


def load_markdown(run: Run) -> str:
    d = _data(run)
    meta = d["meta"]
    if not meta:
        return ("No load measurements in this run: it has no `load/load.json` (a run made before the load stage "
                "existed, or one whose load stage has not run).")
    if meta.get("status") == "off":
        return f"Not measured: the load stage was switched off ({meta.get('reason', 'LOAD=none')})."
    if meta.get("status") in ("failed", "nothing to load") and d["points"].empty:
        fails = "; ".join(f"{c['backend']}/{c['precision']}: {c.get('error', '')[:200]}"
                          for c in meta.get("configurations", []) if c.get("status") != "ok")
        return f"No load measurements: {meta.get('reason') or fails or meta.get('status')}."
    lines = [f"Load stage: `LOAD={meta.get('load')}`, `CONCURRENCY={meta.get('concurrency')}`, "
             f"`RATES={meta.get('rates')}` (rates in `x` are fractions of the configuration's throughput one request "
             f"at a time, 1000 / the median of a short closed loop at one in flight run just before: the "
             f"host's speed drifts between the benchmark and this stage). Per-request latency runs from the "
             f"request's arrival (closed loop: when its client issued it; open loop: its scheduled Poisson arrival) "
             f"to its outputs on the host, so queueing and batching delay are in it; host clock (perf_counter). "
             f"The dynamic batcher runs only the benchmarked batch sizes: a batch of n requests runs padded up to "
             f"the next one (the padding rows are computed and dropped), as a server of per-shape engines "
             f"(CUDA graphs, compiled graphs, TensorRT profiles) does; the model pads alike."]
    m, svc = _measured(d), d["service"]
    for c in meta.get("configurations", []):
        what = f"**{c['backend']}/{c['precision']}** (shape {c['shape']}; {', '.join(c.get('why', []))})"
        if c.get("status") == "ok":
            lines.append(f"- {what}: a lane is *{c.get('lane_kind')}*; {c.get('seconds', float('nan')):.0f} s."
                         f"{_n1_check(m, svc, c)}")
        else:
            lines.append(f"- {what}: **failed**: {c.get('error', '')[:300]}")
    return "\n".join(lines)


def _n1_check(m: pd.DataFrame, svc: pd.DataFrame, c: dict) -> str:
    """The closed loop at one in flight beside the benchmark's single-request median: the same loop, so they
    should agree within the host's noise."""
    def pick(f):
        return f[(f["backend"] == c["backend"]) & (f["precision"] == c["precision"]) & (f["shape"] == c["shape"])]
    n1 = pick(m)
    n1 = n1[(n1["experiment"] == "closed") & (n1["concurrency"] == 1)]
    b1 = pick(svc) if not svc.empty else svc
    b1 = b1[b1["batch"] == 1] if not b1.empty else b1
    if n1.empty or b1.empty:
        return ""
    a, b = float(n1["median_ms"].iloc[0]), float(b1["service_ms"].iloc[0])
    return (f" Closed loop at 1 in flight: median {a:.4g} ms; the benchmark's single-request end-to-end median "
            f"{b:.4g} ms (ratio {a / b:.2f}).")


def _measured(d) -> pd.DataFrame:
    p = d["points"]
    return p[p["source"] == "measured"] if not p.empty else p


def model_errors(run: Run) -> pd.DataFrame:
    """Measured open-loop points joined with the model's prediction at the same rate and policy:
    relative errors (predicted / measured - 1) of median and p99 latency and of throughput."""
    d = _data(run)
    p = d["points"]
    if p.empty:
        return pd.DataFrame()
    key = ["backend", "precision", "shape", "rate", "max_batch", "max_delay_ms"]
    m = p[(p["source"] == "measured") & (p["experiment"] == "open")]
    pr = p[(p["source"] == "predicted") & (~p["grid"].astype(bool))]
    j = m.merge(pr[key + ["median_ms", "p99_ms", "throughput_rps", "sustained"]], on=key, suffixes=("", "_pred"))
    for col in ("median_ms", "p99_ms", "throughput_rps"):
        j[f"err_{col}"] = j[f"{col}_pred"] / j[col] - 1
    return j


def model_error_markdown(run: Run) -> str:
    j = model_errors(run)
    if j.empty:
        return ""
    ok = j[j["sustained"] & j["sustained_pred"]]
    parts = []
    for col, name in (("median_ms", "median latency"), ("p99_ms", "p99 latency"), ("throughput_rps", "throughput")):
        e = ok[f"err_{col}"].abs().dropna() if len(ok) else pd.Series(dtype=float)
        if len(e):
            parts.append(f"{name} {np.median(e):.0%} (largest {e.max():.0%})")
    agree = int((j["sustained"] == j["sustained_pred"]).sum())
    svc = _data(run)["service"]
    anchors = ", ".join(f"{b}/{p} ×{a:.2f}" for (b, p), a in
                        svc.groupby(["backend", "precision"], sort=False)["anchor"].first().items()) if len(svc) else ""
    return (f"**Model against measurement** ({len(j)} measured open-loop points; a lone request's service time "
            f"is drawn from this stage's closed-loop latencies at one in flight, a batch of b's scaled by the "
            f"benchmark's median latency at b over its batch-1 median, which anchors the benchmark's curve to the "
            f"host's speed while the load ran: {anchors}): median absolute error over the {len(ok)} points both call "
            f"sustained: {', '.join(parts) or 'none'}; sustained or not agrees at {agree} of {len(j)}. "
            f"By construction a lone unbatched request's predicted latency is the measured one, so at light load "
            f"without batching the error says little; the batcher and the heavier rates are the test. The model has no host jitter and no interference between the "
            f"server and the arrivals: on a shared CPU its tail is the part to trust least.")


def load_table(run: Run) -> pd.DataFrame:
    """Every measured point, with the model's figures where it predicts the same point."""
    d = _data(run)
    m = _measured(d)
    if m.empty:
        return pd.DataFrame()
    j = model_errors(run)
    key = ["backend", "precision", "shape", "rate", "max_batch", "max_delay_ms"]
    pred = j.set_index(key) if not j.empty else None
    rows = []
    for r in m.itertuples(index=False):
        closed = r.experiment == "closed"
        row = {"configuration": f"{r.backend}/{r.precision}", "load": f"closed, {r.concurrency} in flight" if closed
               else f"Poisson {r.rate:,.4g} req/s", "policy": "–" if closed else _policy_label(r.max_batch, r.max_delay_ms),
               "requests": r.n, "req/s": r.throughput_rps, "median ms": r.median_ms,
               "tail ms": r.tail_ms, "tail": f"p{int(r.tail_q)}" if r.tail_q else "–", "mean batch": r.mean_batch,
               "noisy": r.noisy, "sustained": r.sustained}
        if pred is not None and not closed:
            k = (r.backend, r.precision, r.shape, r.rate, r.max_batch, r.max_delay_ms)
            if k in pred.index:
                q = pred.loc[[k]].iloc[0]
                row.update({"model median ms": q["median_ms_pred"], "model p99 ms": q["p99_ms_pred"],
                            "% error median": q["err_median_ms"]})
        rows.append(row)
    return pd.DataFrame(rows)


def capacity_table(run: Run, budget_ms: float = BUDGET_MS) -> pd.DataFrame:
    """Per configuration: the highest measured rate sustained with its tail within ``budget_ms`` (and its
    policy), and the model's highest rate within the budget without batching, with the measured batcher,
    and with the best policy it finds."""
    d = _data(run)
    m = _measured(d)
    if m.empty:
        return pd.DataFrame()
    cap = d["capacity"]
    rows = []
    for (b, p, s), g in m.groupby(["backend", "precision", "shape"], sort=False):
        o = g[(g["experiment"] == "open") & g["sustained"] & (g["tail_ms"] <= budget_ms)]
        best = o.sort_values("rate").iloc[-1] if len(o) else None
        c = cap[(cap["backend"] == b) & (cap["precision"] == p) & (cap["shape"] == s)] if not cap.empty else cap
        if c.empty or float(c["budget_ms"].iloc[0]) != float(budget_ms):  # the notebook's budget differs
            svc = d["service"]
            svc = svc[(svc["backend"] == b) & (svc["precision"] == p) & (svc["shape"] == s)]
            model_ms = dict(zip(svc["batch"].astype(int), svc["model_ms"]))
            batcher = g[g["max_batch"] > 1]
            pol = BatchPolicy(int(batcher["max_batch"].iloc[0]), float(batcher["max_delay_ms"].iloc[0])) \
                if len(batcher) else None
            req = d["requests"]
            req = req[(req["backend"] == b) & (req["precision"] == p) & (req["shape"] == s)] if len(req) else req
            samples = model_samples(req) if len(req) else None
            c = pd.DataFrame(capacity_rows(model_ms, budget_ms, pol, samples)) if model_ms else pd.DataFrame()
        row = {"configuration": f"{b}/{p}",
               "measured: highest sustained rate within budget": best["rate"] if best is not None else np.nan,
               "measured: its policy": _policy_label(best["max_batch"], best["max_delay_ms"]) if best is not None
               else "none of the measured rates",
               "measured: its tail ms": best["tail_ms"] if best is not None else np.nan}
        for r in c.itertuples(index=False):
            row[f"model: {r.policy} req/s"] = r.max_rate_rps
            if r.policy == "best found by the model":
                row["model: best policy"] = _policy_label(r.max_batch, r.max_delay_ms)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["budget_ms"] = budget_ms
    return out


def plot_load_curves(run: Run, budget_ms: float | None = BUDGET_MS):
    """One panel per configuration: tail latency (p99 where supported) against achieved throughput."""
    d = _data(run)
    p = d["points"]
    if p.empty or _measured(d).empty:
        return None
    groups = list(p.groupby(["backend", "precision", "shape"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.4 * len(groups), 5.2), squeeze=False)
    for ax, ((b, prec, s), g) in zip(axes[0], groups):
        meas = g[g["source"] == "measured"]
        closed = meas[meas["experiment"] == "closed"].sort_values("concurrency")
        ax.plot(closed["throughput_rps"], closed["tail_ms"], "o-", color="C0", label="closed loop (N in flight)")
        for r in closed.itertuples():
            ax.annotate(f"N={r.concurrency}", (r.throughput_rps, r.tail_ms), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        for k, (mb, color) in enumerate(((1, "C1"), (None, "C2"))):
            sel = (lambda f: f["max_batch"] == 1) if mb == 1 else (lambda f: f["max_batch"] > 1)
            om = meas[(meas["experiment"] == "open") & sel(meas)]
            grid = g[(g["source"] == "predicted") & g["grid"].astype(bool) & sel(g)].sort_values("rate")
            name = "no batching" if mb == 1 else (_policy_label(om["max_batch"].iloc[0], om["max_delay_ms"].iloc[0])
                                                  if len(om) else "batcher")
            if len(om):
                ax.scatter(om["throughput_rps"], om["tail_ms"], marker="s", color=color, zorder=3,
                           label=f"Poisson, {name} (measured)")
            ok = grid[grid["sustained"]]
            if len(ok):
                ax.plot(ok["throughput_rps"], ok["p99_ms"], "--", color=color, alpha=0.8,
                        label=f"Poisson, {name} (model p99)")
        if budget_ms:
            ax.axhline(budget_ms, color="grey", lw=0.8, ls=":", label=f"budget {budget_ms:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("achieved throughput (requests/s)")
        ax.set_ylabel("tail latency (ms, p99 where ≥100 requests)")
        ax.set_title(f"{b}/{prec} ({s})", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=1, frameon=False)  # below: the
        # measured points sit where an inside legend would go
    fig.tight_layout()
    return fig
