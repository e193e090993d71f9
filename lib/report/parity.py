"""Section "Parity": each configuration's outputs against the reference (``lib.measure.parity`` sets the thresholds;
the benchmark step recorded the figures).
"""

from __future__ import annotations

import pandas as pd

from ..measure.parity import CALIBRATION_ITEMS, CENTRED_THRESHOLDS, THRESHOLDS
from ..results.run import Run
from .markup import md
from .plots import shape_key
from .points import series_order


def _in_order(run: Run, frame: pd.DataFrame, then: tuple[str, ...] = ("shape", "batch")) -> pd.DataFrame:
    """Rows by configuration (the plan's order), then shape (numerically, as every section orders them),
    then batch (as a number, never as text)."""
    order = {s: i for i, s in enumerate(series_order(run))}
    keys = {"_series": (frame["backend"] + "/" + frame["precision"]).map(lambda s: order.get(s, len(order))),
            "_shape": frame["shape"].map(shape_key), "_batch": pd.to_numeric(frame["batch"], errors="coerce")}
    cols = ["_series"] + [f"_{c}" for c in then]
    return (frame.assign(**{k: keys[k] for k in cols}).sort_values(cols, kind="stable").drop(columns=cols)
            .reset_index(drop=True))


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


def parity_note(run: Run) -> str:
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
