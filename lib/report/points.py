"""The run's points as every section sees them: a backend/precision is a *series* ("ort/fp32") with
one place in the order and one colour in every figure; the measurement modes' names; the baseline of
every speedup; which points a decision may use (parity did not fail); the tail a budget is judged by;
and the heading that names what parity compared with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results.run import Run
from ..common.stats import ratio_interval, verdict
from .markup import md
from .plots import series_colours


MODE_LABELS = {
    "device": "device-resident latency (inputs already on the device, outputs left there)",
    "end_to_end": "end-to-end latency (host arrays in, host arrays out, copies included)",
    "throughput": "pipelined throughput (back-to-back requests, one sync per window)",
}
MODE_SHORT = {"device": "device-resident", "end_to_end": "end-to-end", "throughput": "pipelined"}
BASELINE = ("torch", "fp32")  # PyTorch eager FP32: what every speedup is relative to


def series_of(p: pd.DataFrame) -> pd.Series:
    """Each row's series name, "backend/precision"."""
    return p["backend"] + "/" + p["precision"]


def series_order(run: Run) -> list[str]:
    """The run's series in plan order (then any measured but not planned): tables, legends and colours follow it."""
    order = [f"{c['backend']}/{c['precision']}" for c in run.plan.get("combos", [])]
    if not run.points.empty:
        order += [s for s in dict.fromkeys(series_of(run.points)) if s not in order]
    return order


def palette(run: Run) -> dict:
    """Each series of the run its colour (``plots.series_colours`` over ``series_order``)."""
    return series_colours(series_order(run))


def usable_points(run: Run) -> pd.DataFrame:
    """Points a decision may use: parity did not fail."""
    p = run.points
    if p.empty:
        return p
    ok = p[p["parity_passed"].map(lambda v: v is not False and v is not np.False_)]
    return ok.assign(series=series_of(ok))  # the filtered frame's own series: assigning p's would add rows back


def rate_mode(run: Run) -> str:
    """The mode a throughput figure comes from: pipelined where measured (a GPU), else device-resident."""
    return "throughput" if (not run.points.empty and (run.points["mode"] == "throughput").any()) else "device"


def multi_shape(run: Run) -> bool:
    """Whether the run sweeps more than one input shape (then tables keep a shape column)."""
    return len(run.plan.get("shapes", [])) > 1


def tail_label(run: Run) -> str:
    """What ``tail_ms`` is in this run: 'p99' where every point has >= 100 samples, else 'p99/p95'."""
    p = run.points
    if p.empty or "tail_q" not in p:
        return "p99"
    qs = sorted({int(q) for q in p["tail_q"].dropna() if q}, reverse=True)
    return "/".join(f"p{q}" for q in qs) or "max"


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


def rounds_of(run: Run, backend: str, precision: str, batch, shape, mode) -> tuple[np.ndarray, np.ndarray]:
    r = run.point_rounds(backend, precision, batch, shape, mode)
    return r["median_ms"].to_numpy(dtype=float), r["pass"].to_numpy()


def compare_points(run: Run, a: tuple, b: tuple, mode: str, shape) -> tuple[float, float, float, str]:
    """Per-item latency of a over b, a and b being (backend, precision, batch) at one shape and mode:
    (median_a / batch_a) / (median_b / batch_b) (for one batch size, the ratio of medians), its 95 %
    interval from both sides' rounds (``lib.common.stats.ratio_interval``) and the verdict ('lower', 'higher',
    'no clear difference')."""
    p = run.points
    sel = (p["shape"] == shape) & (p["mode"] == mode)

    def side(backend, precision, batch):
        m = p[sel & (p["backend"] == backend) & (p["precision"] == precision) & (p["batch"] == batch)]["median_ms"]
        r, g = rounds_of(run, backend, precision, batch, shape, mode)
        return (float(m.iloc[0]) / batch if len(m) else float("nan")), r / batch, g

    ma, ra, ga = side(*a)
    mb, rb, gb = side(*b)
    if not (ma == ma and mb == mb):
        return float("nan"), float("nan"), float("nan"), "no clear difference"
    ratio = ma / mb
    lo, hi = ratio_interval(ra, rb, ratio, ga, gb)
    return ratio, lo, hi, verdict(lo, hi)
