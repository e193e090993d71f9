"""Compare runs: two GPUs, two library versions, before/after a change.

``python -m lib.report.compare --runs "<run dir> <run dir> ..."`` (``make compare RUNS=...``) checks the
runs, creates ``<reports>/compare/<UTC timestamp>/`` (a new folder every time, never overwriting),
executes ``notebooks/30_compare.ipynb`` there (``compare.ipynb``) and renders ``compare.html``: one
self-contained page with the runs side by side.

The first run is the reference ("A"); every other run ("B", "C", ...) is compared with it, per
backend/precision/batch/shape/mode that both measured: the ratio median(B) / median(A) of the raw
samples, with a 95% interval from both runs' round medians (``lib.common.stats.ratio_interval``: rounds, not
iterations, are the independent units). A ratio below 1 means B is faster; a change is called only when
the whole interval lies beyond ±1 % (``lib.common.stats.verdict``). Only paths relative to each run folder are used,
so runs copied from other machines into ``reports/`` compare the same.

The palette, the latency–throughput plot, the failures table and the rule for calling a ratio are the
report's (``plots``, ``stability``, ``method``): a series has the same colour on both pages.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..backends import backend_libraries
from ..common.cache import new_folder
from ..runner.kernel import Kernel, run_papermill
from ..common.errors import BenchbookError
from ..results.run import Run, check_run_dir, load_run
from ..common.stats import parse_outlier_rule, ratio_interval, verdict
from .format import fmt_num, fmt_x, relpath
from .markup import code, md
from .method import ratio_rule
from .plots import latency_throughput, legend_below, plain_log, series_colours, sorted_shapes
from .points import MODE_SHORT
from .render import render_index, render_notebook
from .stability import failure_rows

__all__ = ["Comparison", "parse_runs", "load_comparison", "ratios", "ratio_table", "summary_markdown",
           "runs_table", "differences_table", "failures_table", "plot_ratios", "plot_overlay",
           "plot_latency_throughput", "links_markdown", "title_markdown", "method_markdown", "main"]

KEY = ["backend", "precision", "batch", "shape", "mode"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


@dataclass
class Comparison:
    runs: list[Run]
    labels: list[str]                 # "A", "B", ...
    ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    out_dir: Path | None = None

    def name(self, i: int) -> str:
        r = self.runs[i]
        where = r.gpu_name or (r.environment.get("cpu") or "CPU")
        return f"{self.labels[i]}: {r.params.get('model')} · {r.path.name} · {where}"


def parse_runs(value, what: str = "RUNS") -> list[Path]:
    """Run folders from a space-separated string (shell quoting allowed) or a list; at least two, each a
    run folder. Errors are one line naming the value."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        try:
            items = shlex.split(str(value or ""))
        except ValueError as e:
            raise BenchbookError(f"{what}={value!r} cannot be read ({e}); give run folders separated by spaces") from None
    if len(items) < 2:
        raise BenchbookError(f"{what}={' '.join(items)!r}: give at least 2 run folders to compare, separated by spaces "
                             f"(e.g. {what}=\"reports/<model>/<run A> reports/<model>/<run B>\")")
    paths = []
    for item in items:
        try:
            paths.append(check_run_dir(item, what=f"{what}: run folder"))
        except BenchbookError as e:
            raise BenchbookError(f"{e} (in {what}={' '.join(items)!r})") from None
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        raise BenchbookError(f"{what}={' '.join(items)!r} names the same run folder twice")
    return paths


def ratios(runs: list[Run], labels: list[str]) -> pd.DataFrame:
    """median(B) / median(A) per backend/precision/batch/shape/mode measured by both, for every run B after A,
    with a 95 % interval from both runs' round medians (``lib.common.stats.ratio_interval``; each run's passes are
    its processes) and a verdict that calls a change only beyond ±1 % (``lib.common.stats.verdict``)."""
    cols = ["run", "vs", *KEY, "median_a_ms", "median_b_ms", "ratio", "ci_low", "ci_high", "verdict", "rounds_a",
            "rounds_b"]
    a = runs[0]
    rows = []
    if a.points.empty:
        return pd.DataFrame(columns=cols)
    for lab, b in zip(labels[1:], runs[1:]):
        if b.points.empty:
            continue
        common = a.points[KEY].merge(b.points[KEY], on=KEY).drop_duplicates()
        ma = a.points.set_index(KEY)["median_ms"]
        mb = b.points.set_index(KEY)["median_ms"]
        for r in common.itertuples(index=False):
            key = tuple(r)
            ra, rb = a.point_rounds(*key), b.point_rounds(*key)
            med_a, med_b = float(ma.loc[key]), float(mb.loc[key])
            ratio = med_b / med_a
            lo, hi = ratio_interval(rb["median_ms"], ra["median_ms"], ratio, rb["pass"], ra["pass"])
            v = {"lower": f"{lab} faster", "higher": f"{lab} slower"}.get(verdict(lo, hi), "no clear change")
            rows.append({"run": lab, "vs": labels[0], **r._asdict(), "median_a_ms": med_a, "median_b_ms": med_b,
                         "ratio": ratio, "ci_low": lo, "ci_high": hi, "verdict": v, "rounds_a": len(ra),
                         "rounds_b": len(rb)})
    return pd.DataFrame(rows, columns=cols)


def load_comparison(runs, outliers: str | None = None, out_dir: str | Path | None = None) -> Comparison:
    """Load and check the runs (the first is the reference A) and compute every ratio."""
    paths = parse_runs(runs)
    loaded = [load_run(p, outliers or None) for p in paths]
    labels = [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(len(loaded))]
    cmp = Comparison(runs=loaded, labels=labels, out_dir=Path(out_dir) if out_dir else None)
    cmp.ratios = ratios(loaded, labels)
    if cmp.out_dir is not None and not cmp.ratios.empty:
        cmp.ratios.to_csv(cmp.out_dir / "ratios.csv", index=False)
    return cmp


# --- text and tables ------------------------------------------------------------------------

def title_markdown(cmp: Comparison) -> str:
    models = sorted({r.params.get("model") for r in cmp.runs})
    return (f"# Comparison: {md(', '.join(map(str, models)))}\n\n"
            + "\n".join(f"- **{md(cmp.name(i))}**" for i in range(len(cmp.runs)))
            + f"\n\n{cmp.labels[0]} is the reference: every ratio is median(run) / median({cmp.labels[0]}); "
              "below 1 = faster than the reference.")


def _env_items(run: Run) -> dict:
    env = run.environment
    gpu = env.get("gpu") or {}
    libs = env.get("libraries", {})
    items = {"model": run.params.get("model"), "device": run.device, "GPU": gpu.get("name") or "none",
             "GPU driver": gpu.get("driver"), "CUDA (driver)": gpu.get("cuda_driver"), "CPU": env.get("cpu"),
             "cores usable": env.get("cpu_affinity"), "host": env.get("hostname"), "python": env.get("python")}
    items.update({f"version: {k}": v for k, v in libs.items()})
    # each parameter once: those the plan resolves (auto -> the values that ran) appear as resolved below
    resolved = ("model", "device", "batch_sizes", "shapes", "backends", "precisions")
    items.update({f"param: {k}": v for k, v in run.params.items()
                  if k not in ("cache_dir", "models_dir", "options", *resolved)})
    items["batch sizes"] = ", ".join(map(str, run.plan.get("batch_sizes", [])))
    items["shapes"] = ", ".join(run.plan.get("shapes", []))
    items["backends"] = ", ".join(f"{c['backend']}/{c['precision']}" for c in run.plan.get("combos", []))
    return {k: ("–" if v is None else str(v)) for k, v in items.items()}


def runs_table(cmp: Comparison) -> pd.DataFrame:
    envs = [_env_items(r) for r in cmp.runs]

    def version(e: dict, dists) -> str:  # a library's version: the first of its distributions recorded
        return next((e[f"version: {d}"] for d in dists if f"version: {d}" in e), "–")

    # One column per library the backends declare (torch, onnxruntime, ...), where any run recorded it.
    libraries = {m: dists for m, dists in backend_libraries().items() if any(version(e, dists) != "–" for e in envs)}
    rows = []
    for i, (r, e) in enumerate(zip(cmp.runs, envs)):
        rows.append({"run": cmp.labels[i], "model": e["model"], "run id": r.path.name, "device": e["device"],
                     "GPU / CPU": e["GPU"] if r.gpu_name else e["CPU"],
                     **{m: version(e, dists) for m, dists in libraries.items()},
                     "backends": e["backends"], "batch sizes": e["batch sizes"], "shapes": e["shapes"],
                     "points": len(r.points)})
    return pd.DataFrame(rows)


def differences_table(cmp: Comparison) -> pd.DataFrame:
    """Environment items, library versions and parameters that differ between the runs."""
    envs = [_env_items(r) for r in cmp.runs]
    keys = list(dict.fromkeys(k for e in envs for k in e))
    rows = []
    for k in keys:
        vals = [e.get(k, "–") for e in envs]
        if len(set(vals)) > 1:
            rows.append({"item": k, **{lab: v for lab, v in zip(cmp.labels, vals)}})
    if not rows:
        return pd.DataFrame({"item": ["none: same machine, versions and parameters"]})
    return pd.DataFrame(rows)


def links_markdown(cmp: Comparison) -> str:
    base = cmp.out_dir
    lines = []
    for i, r in enumerate(cmp.runs):
        rep = r.path / "report.html"
        if base is not None and rep.exists():
            lines.append(f"- {md(cmp.name(i))}: [report]({urllib.parse.quote(relpath(rep, base))})")
        else:
            lines.append(f"- {md(cmp.name(i))}: {code(r.path)}" + ("" if rep.exists() else " (no report.html)"))
    return "The runs' own reports:\n\n" + "\n".join(lines)


def ratio_table(cmp: Comparison) -> pd.DataFrame:
    d = cmp.ratios
    if d.empty:
        return pd.DataFrame({"ratio": ["no backend/precision/batch/shape/mode was measured by both runs"]})
    out = pd.DataFrame({  # the shape column stays even with one shape: the rows name what they compare
        "run": d["run"] + " / " + d["vs"], "configuration": d["backend"] + "/" + d["precision"], "batch": d["batch"],
        "shape": d["shape"], "mode": d["mode"].map(MODE_SHORT).fillna(d["mode"]),
        f"median {d['vs'].iloc[0]} ms": d["median_a_ms"],
        ("median ms" if d["run"].nunique() > 1 else f"median {d['run'].iloc[0]} ms"): d["median_b_ms"], "ratio": d["ratio"],
        "95% CI": [f"{fmt_num(lo)}–{fmt_num(hi)}" for lo, hi in zip(d["ci_low"], d["ci_high"])], "verdict": d["verdict"]})
    if d["run"].nunique() == 1:
        out = out.drop(columns="run")
    order = {m: i for i, m in enumerate(MODE_SHORT.values())}
    return out.sort_values(["mode", "configuration", "batch"], key=lambda s: s.map(order) if s.name == "mode" else s,
                           kind="stable").reset_index(drop=True)


def summary_markdown(cmp: Comparison) -> str:
    d = cmp.ratios
    lines = []
    models = {r.params.get("model") for r in cmp.runs}
    if len(models) > 1:
        lines.append(f"- **Warning**: the runs measured different models ({md(', '.join(sorted(map(str, models))))}); "
                     "ratios compare "
                     "different work.")
    diff = differences_table(cmp)
    if cmp.labels[0] in diff.columns:
        what = [k for k in diff["item"] if not k.startswith(("param: outliers", "host"))][:8]
        if what:
            lines.append("- What differs: " + ", ".join(code(k) for k in what)
                         + (" …" if len(diff) > len(what) else "") + " (see *What differs*).")
    if d.empty:
        lines.append("- No backend/precision/batch/shape/mode was measured by both runs: nothing to compare.")
        return "\n".join(lines)
    for lab in d["run"].unique():
        g = d[d["run"] == lab]
        geo = float(np.exp(np.log(g["ratio"]).mean()))
        faster, slower = int((g["ci_high"] < 1).sum()), int((g["ci_low"] > 1).sum())
        best = g.loc[g["ratio"].idxmin()]
        worst = g.loc[g["ratio"].idxmax()]
        lines.append(f"- **{lab} vs {cmp.labels[0]}**: over {len(g)} common measurements, latency ratio geometric mean "
                     f"**{geo:.3f}** ({'faster' if geo < 1 else 'slower'} by {abs(1 - geo):.1%}); {faster} faster and "
                     f"{slower} slower with 95% confidence, {len(g) - faster - slower} without a clear change. "
                     f"Largest gain: {md(best['backend'] + '/' + best['precision'])} batch {best['batch']} "
                     f"{md(MODE_SHORT.get(best['mode'], best['mode']))} {fmt_x(best['ratio'])}; largest loss: "
                     f"{md(worst['backend'] + '/' + worst['precision'])} batch {worst['batch']} "
                     f"{md(MODE_SHORT.get(worst['mode'], worst['mode']))} {fmt_x(worst['ratio'])}.")
    only = []
    for i, r in enumerate(cmp.runs):
        if r.points.empty:
            continue
        keys = set(map(tuple, r.points[KEY].to_numpy().tolist()))
        others = set()
        for j, o in enumerate(cmp.runs):
            if j != i and not o.points.empty:
                others |= set(map(tuple, o.points[KEY].to_numpy().tolist()))
        n = len(keys - others)
        if n:
            only.append(f"{cmp.labels[i]}: {n}")
    if only:
        lines.append("- Measurements in one run only (not compared): " + ", ".join(only) + ".")
    return "\n".join(lines)


def failures_table(cmp: Comparison) -> pd.DataFrame:
    """Every run's failures and skips (``stability.failure_rows``), a run's rows together."""
    frames = [r.failures.assign(run=lab)[["run", *r.failures.columns]] for lab, r in zip(cmp.labels, cmp.runs)
              if not r.failures.empty]
    if not frames:
        return pd.DataFrame({"status": ["none: every planned point of every run produced numbers"]})
    return failure_rows(pd.concat(frames, ignore_index=True), first=("run",), reason_chars=300)


def method_markdown(cmp: Comparison) -> str:
    return "\n".join([
        f"- Reference: run {cmp.labels[0]}. For every backend/precision/batch/shape/mode measured by both runs, the "
        f"ratio is median(run) / median({cmp.labels[0]}) over the raw samples (no outlier filtering), with a 95% "
        "interval from both runs' round medians (`lib.common.stats.ratio_interval`).",
        "- Verdict (*faster*, *slower*): " + ratio_rule("Ratios", "no clear change"),
        "- Curves show each run's medians under its outlier rule ("
        + md(", ".join(sorted({r.rule.name for r in cmp.runs}))) + ").",
        "- Ratios as data: `ratios.csv` beside this page.",
    ])


# --- figures ----------------------------------------------------------------------------------

def palette(cmp: Comparison) -> dict:
    """The report's palette (``plots.series_colours``) over every run's series, the reference's first."""
    return series_colours(f"{c['backend']}/{c['precision']}" for r in cmp.runs for c in r.plan.get("combos", []))


def _all_points(cmp: Comparison) -> pd.DataFrame:
    frames = [r.points.assign(run=lab) for lab, r in zip(cmp.labels, cmp.runs) if not r.points.empty]
    if not frames:
        return pd.DataFrame()
    p = pd.concat(frames, ignore_index=True)
    return p.assign(series=p["backend"] + "/" + p["precision"])


def plot_ratios(cmp: Comparison, mode: str | None = None):
    """Each common measurement's ratio with its 95% interval (log x; left of 1 = faster than A)."""
    d = cmp.ratios
    if d.empty:
        return None
    mode = mode or ("end_to_end" if (d["mode"] == "end_to_end").any() else d["mode"].iloc[0])
    d = d[d["mode"] == mode].sort_values(["run", "backend", "precision", "shape", "batch"])
    if d.empty:
        return None
    pal = palette(cmp)
    labels = [f"{r.run}: {r.backend}/{r.precision} bs {r.batch}" + (f" {r.shape}" if d["shape"].nunique() > 1 else "")
              for r in d.itertuples()]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(d) + 1.2))
    y = np.arange(len(d))[::-1]
    colors = [pal.get(f"{b}/{p}", "#333") for b, p in zip(d["backend"], d["precision"])]
    ax.errorbar(d["ratio"], y, xerr=[d["ratio"] - d["ci_low"], d["ci_high"] - d["ratio"]], fmt="none",
                ecolor="#555", capsize=2, lw=1)
    ax.scatter(d["ratio"], y, c=colors, zorder=3, s=22)
    ax.axvline(1, color="#444", ls="--", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    lo, hi = min(float(np.nanmin(d["ci_low"])), 1.0), max(float(np.nanmax(d["ci_high"])), 1.0)
    if hi / max(lo, 1e-12) > 4:  # wide spread: a log axis keeps 0.5x and 2x equally far from 1
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.3, hi * 1.3)
        plain_log(ax, "x")
    else:
        pad = 0.05 * max(hi - lo, 0.1)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.7, len(d) - 0.3)
    ax.set_xlabel(f"median(run) / median({cmp.labels[0]}), {MODE_SHORT.get(mode, mode)} latency (< 1 = faster)")
    ax.set_title(f"Latency ratio with 95% interval from rounds — {MODE_SHORT.get(mode, mode)}", loc="left")
    fig.tight_layout()
    return fig


def plot_overlay(cmp: Comparison, modes: tuple[str, ...] = ("device", "end_to_end")):
    """Median latency vs batch size, every run overlaid: colour = backend/precision, line style and
    marker = run; a column per mode, a row per shape."""
    p = _all_points(cmp)
    if p.empty:
        return None
    modes = tuple(m for m in modes if (p["mode"] == m).any())
    if not modes:
        return None
    pal = palette(cmp)
    shapes = sorted_shapes(p["shape"])
    fig, axes = plt.subplots(len(shapes), len(modes), figsize=(min(4.8 * len(modes), 9.6), 4.0 * len(shapes)),
                             squeeze=False)
    for i, shape in enumerate(shapes):
        for j, mode in enumerate(modes):
            ax = axes[i, j]
            sub = p[(p["shape"] == shape) & (p["mode"] == mode)]
            for k, lab in enumerate(cmp.labels):
                for s in pal:
                    g = sub[(sub["run"] == lab) & (sub["series"] == s)].sort_values("batch")
                    if len(g):
                        ax.plot(g["batch"], g["median_ms"], LINESTYLES[k % 4], marker=MARKERS[k % 6], color=pal[s],
                                ms=5, label=f"{lab}: {s}")
            ax.set_xscale("log", base=2)
            batches = sorted(sub["batch"].unique())
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_yscale("log")
            plain_log(ax)
            ax.set_xlabel("batch size")
            ax.set_ylabel("median latency (ms, log)")
            ax.set_title(f"{MODE_SHORT.get(mode, mode)}" + (f" — shape {shape}" if len(shapes) > 1 else ""))
    fig.tight_layout()
    # one legend for the figure: a colour per configuration, then a line style per run, named
    drawn = [s for s in pal if (p["series"] == s).any()]
    handles = [Line2D([], [], color=pal[s], lw=2) for s in drawn]
    handles += [Line2D([], [], color="#555", ls=LINESTYLES[k % 4], marker=MARKERS[k % 6], ms=5)
                for k in range(len(cmp.labels))]
    legend_below(fig, handles, drawn + [f"{lab}: {cmp.runs[k].path.name}" for k, lab in enumerate(cmp.labels)])
    return fig


def plot_latency_throughput(cmp: Comparison, mode: str = "end_to_end"):
    """The report's latency–throughput plot (``plots.latency_throughput``: tail latency vs items/s over batch
    sizes, the Pareto frontier labelled) over every run's points: colour = backend/precision, line style = run."""
    p = _all_points(cmp)
    if p.empty:
        return None
    if not (p["mode"] == mode).any():
        mode = "device"
    pal = palette(cmp)
    curves = {f"{lab}: {s}": (pal[s], LINESTYLES[k % 4]) for k, lab in enumerate(cmp.labels) for s in pal}
    p = p.assign(series=p["run"] + ": " + p["series"])
    return latency_throughput(p, list(curves), {s: c for s, (c, _) in curves.items()}, MODE_SHORT, plain_log, None,
                              "tail_ms", (mode,), tail="tail (p99/p95)",
                              styles={s: ls for s, (_, ls) in curves.items()})


# --- command line -------------------------------------------------------------------------------

def _new_out_dir(root: Path) -> Path:
    """<root>/<UTC timestamp>/, created here; a second comparison in the same second gets a suffix."""
    return new_folder(root, datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))


def run_compare(runs, outliers: str = "", reports_dir: str | Path = "reports", log=print) -> Path:
    """Check the runs, execute the comparison notebook into a new folder and render compare.html there."""
    paths = [p.resolve() for p in parse_runs(runs)]
    if outliers:
        parse_outlier_rule(outliers)
    for p in paths:  # before any work: a corrupt params.json/plan.json stops here naming the file,
        bad = load_run(p).failures.query("status == 'corrupt'")  # a corrupt point is named and left out
        for reason in bad["reason"]:
            log(f"[compare] warning: {reason}")
    reports_dir = Path(reports_dir)
    out = _new_out_dir(reports_dir / "compare")
    t0 = time.perf_counter()
    log(f"[compare] {len(paths)} runs: " + ", ".join(p.name for p in paths) + " (the first is the reference)")
    # the same kernel set-up as a report's notebooks: Unix sockets (no TCP, so no ipykernel warning about
    # it), the kernel's own stderr in a log file, only printed lines on the terminal
    run_papermill("compare", out / "compare.ipynb", {"runs": shlex.join(str(p) for p in paths),
                                                     "outliers": outliers or "", "out_dir": str(out.resolve())},
                  Kernel(out / "compare.kernel.log"))
    models = sorted({load_run(p).params.get("model") for p in paths})
    page = render_notebook(out / "compare.ipynb", out / "compare.html",
                           title=f"benchbook comparison — {', '.join(models)} — {out.name}")
    if (reports_dir / "index.html").exists():
        render_index(reports_dir)
    log(f"compare: {page} ({page.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.0f} s)")
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.report.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="", help="run folders separated by spaces; the first is the reference")
    ap.add_argument("runs_pos", nargs="*", metavar="RUN", help="run folders (instead of --runs)")
    ap.add_argument("--outliers", default="", help="presentation rule: tukey[:k], mad[:k] or none; empty: each run's own")
    ap.add_argument("--reports-dir", default="reports", help="comparisons go to <reports-dir>/compare/<timestamp>/")
    args = ap.parse_args(argv)
    runs = args.runs if args.runs.strip() else args.runs_pos
    try:
        run_compare(runs, args.outliers, args.reports_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    except BenchbookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - papermill's PapermillExecutionError names the failing cell
        print(f"error: the comparison failed: {type(e).__name__}: {str(e).strip()[-1500:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
