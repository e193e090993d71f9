"""Does a report reproduce? The same report twice, compared point by point (``make reproducibility``).

``python -m lib.pipeline.reproducibility compare RUN_A RUN_B [--tol 0.05]`` prints, per mode, how many points both
runs measured, the share whose medians agree within ``--tol``, how many each run flagged (noisy or
unstable), and the *silent disagreements*: points whose medians differ by more than ``--tol`` while
neither run flags them. Those are the bug a benchmark must not have; the flags exist so that a host's
slow minute shows as a flag instead. It also says whether the headline configurations (lowest latency
at the smallest batch, highest throughput) are the same, and how long each run took.

``python -m lib.pipeline.reproducibility run [--hog ON:OFF] [--tol 0.05] -- <make report variables>`` runs
``make report`` twice with the same variables (optionally with a periodic CPU hog beside it: ON
seconds spinning every core, OFF seconds idle, to check the method on a deliberately noisy host), then
compares the two runs. Figures are printed, never asserted: this is a benchmark of the method, not a
test.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..results.run import Run, load_run

__all__ = ["compare_runs", "headlines", "main"]

KEY = ["backend", "precision", "batch", "shape", "mode"]


def _wall_s(run: Run) -> float:
    """Seconds from the plan step to the report (file times in the run folder)."""
    start = (run.path / "params.json").stat().st_mtime
    end = max((p.stat().st_mtime for p in (run.path / "report.html", run.path / "analysis.ipynb") if p.exists()),
              default=float("nan"))
    return end - start


def compare_runs(a: Run, b: Run, tol: float = 0.05) -> pd.DataFrame:
    """One row per point and mode measured by both runs: both medians, their relative difference, each
    run's flags, and whether the disagreement is silent."""
    cols = KEY + ["median_ms", "noisy", "unstable"]
    m = a.points[cols].merge(b.points[cols], on=KEY, suffixes=("_a", "_b"))
    m["diff"] = (m["median_ms_a"] / m["median_ms_b"] - 1).abs()
    m["flagged_a"] = m["noisy_a"] | m["unstable_a"]
    m["flagged_b"] = m["noisy_b"] | m["unstable_b"]
    m["agree"] = m["diff"] <= tol
    m["silent"] = ~m["agree"] & ~m["flagged_a"] & ~m["flagged_b"]
    return m


def headlines(run: Run) -> dict:
    """The summary's headline configurations: per shape, the lowest device-resident (and end-to-end)
    median at the smallest batch and the highest throughput (pipelined on a GPU)."""
    from ..report.points import rate_mode, usable_points

    ok = usable_points(run)
    out = {}
    if ok.empty:
        return out
    rate = rate_mode(run)
    for shape, g in ok.groupby("shape"):
        small = g[g["batch"] == g["batch"].min()]
        for mode in ("device", "end_to_end"):
            m = small[small["mode"] == mode].sort_values("median_ms")
            if len(m):
                out[f"lowest {mode} latency at batch {m.iloc[0]['batch']} ({shape})"] = m.iloc[0]["series"]
        t = g[g["mode"] == rate].sort_values("items_per_s", ascending=False)
        if len(t):
            out[f"highest throughput ({shape})"] = f"{t.iloc[0]['series']} at batch {t.iloc[0]['batch']}"
    return out


def report(a: Run, b: Run, tol: float = 0.05, out=print) -> pd.DataFrame:
    m = compare_runs(a, b, tol)
    out(f"runs: A = {a.path}  ({_wall_s(a):.0f} s)")
    out(f"      B = {b.path}  ({_wall_s(b):.0f} s)")
    for ru, name in ((a, "A"), (b, "B")):
        h = ru.host_noise
        if h["rounds"]:
            out(f"host {name}: {h['slow_rounds']} of {h['rounds']} rounds on a slow host (sentinel best "
                f"{h['best_us']:.3g} µs, median {h['median_us']:.3g}, max {h['max_us']:.3g})")
    for mode, g in m.groupby("mode", sort=False):
        n = len(g)
        clean = g[~g["flagged_a"] & ~g["flagged_b"]]
        out(f"\n{mode}: {n} points in both runs")
        out(f"  agree within {tol:.0%}:           {int(g['agree'].sum())} of {n} ({g['agree'].mean():.0%})")
        out(f"  flagged in A / B / either:   {int(g['flagged_a'].sum())} / {int(g['flagged_b'].sum())} / "
            f"{int((g['flagged_a'] | g['flagged_b']).sum())}")
        out(f"  unflagged in both:           {len(clean)} ({len(clean) / n:.0%}); of those, agree within {tol:.0%}: "
            f"{int(clean['agree'].sum())} ({clean['agree'].mean() if len(clean) else float('nan'):.0%})")
        out(f"  silent disagreements:        {int(g['silent'].sum())}"
            + (f" (largest {g.loc[g['silent'], 'diff'].max():.1%})" if g["silent"].any() else ""))
        out(f"  median |difference|:         {g['diff'].median():.2%}; largest {g['diff'].max():.1%}")
        for r in g[g["silent"]].sort_values("diff", ascending=False).head(5).itertuples():
            out(f"    silent: {r.backend}/{r.precision} batch {r.batch} {r.shape}: {r.median_ms_a:.4g} vs "
                f"{r.median_ms_b:.4g} ms ({r.diff:.1%})")
    ha, hb = headlines(a), headlines(b)
    out("\nheadlines:")
    for k in sorted(set(ha) | set(hb)):
        same = "same" if ha.get(k) == hb.get(k) else "DIFFERENT"
        out(f"  {k}: A {ha.get(k, '-')}, B {hb.get(k, '-')} ({same})")
    return m


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def hog(on_s: float, off_s: float, seconds: float, cores: int | None = None) -> None:
    """Spin every core for ``on_s`` seconds, rest ``off_s``, for at most ``seconds`` (bounded, so a
    forgotten hog ends by itself)."""
    cores = cores or os.cpu_count() or 1
    end = time.time() + seconds
    while time.time() < end:
        stop = min(time.time() + on_s, end)
        procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        time.sleep(off_s)


def _make_report(args: list[str], python: str) -> tuple[Path, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "--no-print-directory", "report", f"PYTHON={python}", *args],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    found = re.findall(r"^report: (.+)/report\.html$", text, flags=re.M)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"make report failed (exit {proc.returncode}):\n{text[-3000:]}")
    return Path(found[-1]), wall, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.pipeline.reproducibility")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare two existing run folders")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--tol", type=float, default=0.05)
    r = sub.add_parser("run", help="make report twice, then compare")
    r.add_argument("--tol", type=float, default=0.05)
    r.add_argument("--hog", default="", help="ON:OFF seconds of a periodic all-core CPU hog, e.g. 1:2")
    r.add_argument("--python", default=sys.executable)
    r.add_argument("make_args", nargs="*", help="make report variables, e.g. MODEL=efficientnet_b1")
    h = sub.add_parser("hog", help="only the periodic CPU hog")
    h.add_argument("pattern", help="ON:OFF seconds, e.g. 1:2")
    h.add_argument("--seconds", type=float, default=600)
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        report(load_run(args.run_a), load_run(args.run_b), args.tol)
        return 0
    if args.cmd == "hog":
        on, off = (float(x) for x in args.pattern.split(":"))
        hog(on, off, args.seconds)
        return 0
    hog_proc = None
    if args.hog:
        on, off = (float(x) for x in args.hog.split(":"))
        hog_proc = mp.Process(target=hog, args=(on, off, 3 * 3600))  # not a daemon: it starts the spinners
        hog_proc.start()
        print(f"periodic CPU hog on every core: {on:g} s on, {off:g} s off")
    try:
        runs = []
        for i in range(2):
            run_dir, wall, _ = _make_report(args.make_args, args.python)
            print(f"run {'AB'[i]}: {run_dir} in {wall:.0f} s", flush=True)
            runs.append(run_dir)
    finally:
        if hog_proc is not None:
            hog_proc.terminate()
    report(load_run(runs[0]), load_run(runs[1]), args.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
