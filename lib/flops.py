"""FLOPs per item, counted once per shape, and the achieved compute rate of every point.

``count_flops`` runs the model built by ``lib.models.build_model`` once at batch 1 under
``torch.utils.flop_counter.FlopCounterMode``. That counter covers the ops that dominate compute
(convolutions, matrix multiplies, attention) and counts a multiply-add as 2 FLOPs; elementwise
ops, normalisation and pooling are not counted, so the figure is a slight undercount: what the
model *must* compute, not what a backend executes. Backends that fuse, prune or pad do the same
useful work, so "achieved TFLOP/s" = FLOPs per item × items/s compares them fairly.

``ensure_flops(run)`` stores the counts in ``<run>/flops.json`` (one entry per shape) and reuses
them, so the model is built once per run, and a run copied to another machine keeps its figures.
A model given only as ONNX (no ``load.py``) gets NaN with a note.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_json, read_json

__all__ = ["count_flops", "ensure_flops", "efficiency", "FLOPS_FILE"]

FLOPS_FILE = "flops.json"
METHOD = "torch.utils.flop_counter.FlopCounterMode, batch 1, model from lib.models.build_model (FP32, CPU)"


def count_flops(cfg, shape, model=None) -> tuple[float, dict]:
    """(FLOPs per item, FLOPs by op) of model ``cfg`` at ``shape`` (a ``Shape`` or its label), batch 1."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .inputs import make_inputs
    from .models import build_model

    if isinstance(shape, str):
        shape = cfg.parse_shape(shape)
    model = model if model is not None else build_model(cfg).float()
    inputs = make_inputs(cfg, 1, shape, seed=0)
    args = [torch.from_numpy(inputs[s.name]) for s in cfg.inputs]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(*args)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def _find_model(run):
    """The run's model config: from the run's models_dir, else the repository's models (a copied run)."""
    from .errors import BenchbookError
    from .models import get_model

    name = run.params["model"]
    tried = []
    for d in (run.params.get("models_dir") or None, None):
        if d is not None and not Path(d).is_dir():
            tried.append(f"{d} (missing)")
            continue
        try:
            return get_model(name, d), ""
        except BenchbookError as e:
            tried.append(str(e)[:200])
    return None, f"model {name!r} not found here: " + "; ".join(tried)


def ensure_flops(run, log=None) -> pd.DataFrame:
    """FLOPs per item for each of the run's shapes: from ``<run>/flops.json`` or counted now and stored there.

    Returns a frame: shape, flops_per_item (NaN when not countable), note."""
    path = Path(run.path) / FLOPS_FILE
    stored = read_json(path) if path.exists() else {}
    shapes = stored.setdefault("shapes", {})
    missing = [s for s in run.plan.get("shapes", []) if s not in shapes]
    if missing:
        cfg, why = _find_model(run)
        model = None
        for label in missing:
            if cfg is None:
                shapes[label] = {"flops_per_item": None, "note": why}
                continue
            if not (cfg.folder / "load.py").exists():
                shapes[label] = {"flops_per_item": None,
                                 "note": "model given as ONNX only (no load.py): FLOPs are not counted"}
                continue
            t0 = time.perf_counter()
            try:
                if model is None:
                    from .models import build_model

                    model = build_model(cfg).float()
                total, by_op = count_flops(cfg, label, model)
                shapes[label] = {"flops_per_item": total, "by_op": by_op,
                                 "note": "counted" if total > 0 else "the counter saw no conv/matmul ops",
                                 "seconds": round(time.perf_counter() - t0, 2)}
            except Exception as e:  # noqa: BLE001 - a model that will not trace under the counter
                shapes[label] = {"flops_per_item": None, "note": f"counting failed: {type(e).__name__}: {str(e)[:200]}"}
            if log:
                log(f"[flops] {label}: {shapes[label]}")
        import torch

        stored.update(method=METHOD, torch=torch.__version__, model=run.params["model"])
        atomic_write_json(path, stored)
    rows = []
    for label in run.plan.get("shapes", []):
        e = shapes.get(label, {})
        v = e.get("flops_per_item")
        rows.append({"shape": label, "flops_per_item": float(v) if v else math.nan, "note": e.get("note", "")})
    return pd.DataFrame(rows, columns=["shape", "flops_per_item", "note"])


def efficiency(run, flops: pd.DataFrame, peaks: dict) -> pd.DataFrame:
    """Per point and mode: GFLOP per item, achieved TFLOP/s (FLOPs per item × items/s), the peak it is
    compared with (label and source) and the share of that peak."""
    from .peaks import peak_key

    p = run.points
    cols = ["backend", "precision", "batch", "shape", "mode", "items_per_s", "gflop_per_item", "achieved_tflops",
            "peak_tflops", "peak_share", "peak_label", "peak_source"]
    if p.empty:
        return pd.DataFrame(columns=cols)
    device = run.plan.get("device", "cpu")
    tf32 = bool(run.params.get("tf32", True))
    f = dict(zip(flops["shape"], flops["flops_per_item"])) if not flops.empty else {}
    out = p[["backend", "precision", "batch", "shape", "mode", "items_per_s"]].copy()
    out["gflop_per_item"] = out["shape"].map(lambda s: f.get(s, np.nan) / 1e9)
    out["achieved_tflops"] = out["gflop_per_item"] * out["items_per_s"] / 1e3
    keys = out["precision"].map(lambda pr: peak_key(pr, device, tf32))
    out["peak_tflops"] = keys.map(lambda k: peaks[k].tflops if k in peaks else np.nan)
    out["peak_share"] = out["achieved_tflops"] / out["peak_tflops"]
    out["peak_label"] = keys.map(lambda k: peaks[k].label if k in peaks else "no peak for this precision")
    out["peak_source"] = keys.map(lambda k: peaks[k].source if k in peaks else "none")
    return out[cols].reset_index(drop=True)
