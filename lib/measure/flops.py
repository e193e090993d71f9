"""FLOPs per item, counted once per shape in the benchmark step, and the achieved compute rate of every point.

Counted where the model is built anyway, by the benchmark step (``record_flops``, called by
``lib.sweep.bench.run_backend``), into ``<run>/flops.json``. The analysis only *reads* that file
(``read_flops``): analysing a run folder received from someone else never builds its model, so it never
runs the ``load.py`` the folder names.

Two counters, one rule (the ops that dominate compute, a multiply-add = 2 FLOPs; elementwise ops,
normalisation and pooling are not counted, so the figure is a slight undercount of what the model
*must* compute, not of what a backend executes):

- a model with ``load.py``: ``torch.utils.flop_counter.FlopCounterMode`` on the module at batch 1
  (FP32, CPU). Attention is run through SDPA's math path while counting: the counter has formulas for
  the CUDA flash/efficient SDPA kernels but none for the CPU's fused kernel (it counted 0 for BERT's
  attention); the math path decomposes attention into the matrix multiplies it counts.
- a model given as ONNX only: the FP32 ONNX graph with its shapes inferred at batch 1 (``onnx.shape_inference``),
  Conv, ConvTranspose, MatMul and Gemm counted with the same formulas as torch's counter. No library
  counts ONNX FLOPs with torch's rules, and the two counts must agree for the same model (a test checks
  that they do on the tiny model).

Backends that fuse, prune or pad do the same useful work, so "achieved TFLOP/s" = FLOPs per item × items/s
compares them fairly.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cache import atomic_write_json, read_json

__all__ = ["count_flops", "count_onnx_flops", "record_flops", "read_flops", "by_op_table", "efficiency",
           "FLOPS_FILE"]

FLOPS_FILE = "flops.json"
METHODS = {
    "torch": "torch.utils.flop_counter.FlopCounterMode on the PyTorch model at batch 1 (FP32, CPU, attention "
             "through SDPA's math path)",
    "onnx": "the FP32 ONNX graph at batch 1 (shapes from onnx.shape_inference; Conv, ConvTranspose, MatMul, Gemm)",
}


def count_flops(cfg, shape, model=None) -> tuple[float, dict]:
    """(FLOPs per item, FLOPs by op) of model ``cfg`` at ``shape`` (a ``Shape`` or its label), batch 1."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..config.inputs import make_inputs
    from ..config.models import build_model

    if isinstance(shape, str):
        shape = cfg.parse_shape(shape)
    model = model if model is not None else build_model(cfg, calibrate=False).float()  # counts do not depend on weight values
    inputs = make_inputs(cfg, 1, shape, seed=0)
    args = [torch.from_numpy(inputs[s.name]) for s in cfg.inputs]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(*args)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def count_onnx_flops(onnx_path, cfg, shape) -> tuple[float, dict]:
    """(FLOPs per item, FLOPs by op) of the ONNX graph at ``onnx_path`` for ``cfg``'s inputs at ``shape``, batch 1."""
    import onnx

    from ..config.inputs import make_inputs

    if isinstance(shape, str):
        shape = cfg.parse_shape(shape)
    model = onnx.load(str(onnx_path))
    arrays = make_inputs(cfg, 1, shape, seed=0)
    for inp in model.graph.input:  # the dynamic dims made concrete, so every shape below is inferred
        if inp.name in arrays:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, arrays[inp.name].shape):
                d.Clear()
                d.dim_value = int(v)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int | None]] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    def known(name):
        s = shapes.get(name)
        return s if s is not None and all(v is not None for v in s) else None

    by_op: dict[str, int] = {}
    missing = []
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        a, b, out = known(node.input[0]), known(node.input[1]), known(node.output[0])
        if a is None or b is None or out is None:
            missing.append(node.name or node.op_type)
            continue
        if node.op_type == "Conv":  # weight (Cout, Cin/groups, k...): each output element is Cin/groups*k MACs
            flops = 2 * math.prod(out) * math.prod(b[1:])
        elif node.op_type == "ConvTranspose":  # weight (Cin, Cout/groups, k...): each input element scatters
            flops = 2 * math.prod(a) * math.prod(b[1:])
        elif node.op_type == "MatMul":
            k = a[-1] if len(a) > 1 else a[0]
            flops = 2 * math.prod(out) * k
        else:  # Gemm: A is (M, K), or (K, M) with transA
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            flops = 2 * math.prod(out) * (a[0] if trans_a else a[1])
        by_op[f"onnx.{node.op_type}"] = by_op.get(f"onnx.{node.op_type}", 0) + int(flops)
    if missing:
        raise ValueError(f"shapes not inferred for {len(missing)} node(s) ({', '.join(missing[:3])}): "
                         f"their FLOPs cannot be counted")
    return float(sum(by_op.values())), by_op


def record_flops(run_dir, cfg, shapes, onnx_fp32=None, model=None, log=None) -> dict:
    """Count FLOPs per item for each of ``shapes`` (``Shape``s) not yet in ``<run_dir>/flops.json`` and store
    them there: from ``load.py``'s module when the model has one, else from the FP32 ONNX. Never raises: a
    model that will not count gets a note saying why. Called by the benchmark step, which runs the model's
    code anyway; the analysis only reads the file."""
    path = Path(run_dir) / FLOPS_FILE
    try:
        stored = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        stored = {}
    entries = stored.setdefault("shapes", {})
    todo = [s for s in shapes if s.label not in entries]
    if not todo:
        return stored
    source = "torch" if (cfg.folder / "load.py").exists() else "onnx"
    for shape in todo:
        t0 = time.perf_counter()
        try:
            if source == "torch":
                if model is None:
                    from ..config.models import build_model

                    model = build_model(cfg, calibrate=False).float()  # counts do not depend on weight values
                total, by_op = count_flops(cfg, shape, model)
            else:
                if onnx_fp32 is None or not Path(onnx_fp32).exists():
                    raise FileNotFoundError(f"no FP32 ONNX model to count ({onnx_fp32})")
                total, by_op = count_onnx_flops(onnx_fp32, cfg, shape)
            entries[shape.label] = {"flops_per_item": total, "by_op": by_op, "source": source,
                                    "note": "counted" if total > 0 else "the counter saw no conv/matmul ops",
                                    "seconds": round(time.perf_counter() - t0, 2)}
        except Exception as e:  # noqa: BLE001 - a model that will not trace under the counter: said so, not fatal
            entries[shape.label] = {"flops_per_item": None, "source": source,
                                    "note": f"counting failed: {type(e).__name__}: {str(e)[:200]}"}
        if log:
            log(f"[flops] {shape.label}: {entries[shape.label].get('flops_per_item')} FLOPs per item ({source})")
    import torch

    stored.update(method=METHODS[source], source=source, torch=torch.__version__, model=cfg.name)
    atomic_write_json(path, stored)
    return stored


def read_flops(run) -> pd.DataFrame:
    """FLOPs per item for each of the run's shapes, as the benchmark step stored them in ``<run>/flops.json``
    (this reads files only: it never builds the model). A frame: shape, flops_per_item (NaN when not counted),
    note, method."""
    path = Path(run.path) / FLOPS_FILE
    try:
        stored = read_json(path) if path.exists() else None
    except (OSError, ValueError) as e:
        stored, why = None, f"flops.json is unreadable ({type(e).__name__})"
    else:
        why = ("not counted: this run has no flops.json (the benchmark step counts FLOPs; a run made before it "
               "did has none)")
    entries = (stored or {}).get("shapes", {}) if isinstance(stored, dict) else {}
    method = str((stored or {}).get("method", "")) if isinstance(stored, dict) else ""
    rows = []
    for label in run.plan.get("shapes", []):
        e = entries.get(label) if isinstance(entries, dict) else None
        if not isinstance(e, dict):
            rows.append({"shape": label, "flops_per_item": math.nan, "note": why if stored is None else
                         "not counted for this shape", "method": method})
            continue
        v = e.get("flops_per_item")
        try:
            v = float(v) if v else math.nan
        except (TypeError, ValueError):
            v = math.nan
        rows.append({"shape": label, "flops_per_item": v, "note": str(e.get("note", "")), "method": method})
    return pd.DataFrame(rows, columns=["shape", "flops_per_item", "note", "method"])


def by_op_table(run) -> pd.DataFrame:
    """FLOPs per item by operator and shape, with each operator's share of the shape's total."""
    path = Path(run.path) / FLOPS_FILE
    cols = ["shape", "operator", "GFLOP per item", "% of the shape's FLOPs"]
    try:
        entries = read_json(path).get("shapes", {}) if path.exists() else {}
    except (OSError, ValueError, AttributeError):
        entries = {}
    rows = []
    for label in run.plan.get("shapes", []):
        by_op = (entries.get(label) or {}).get("by_op") or {}
        total = sum(float(v) for v in by_op.values()) if isinstance(by_op, dict) else 0.0
        for op, v in sorted(by_op.items(), key=lambda kv: -float(kv[1])) if total else []:
            rows.append({"shape": label, "operator": str(op), "GFLOP per item": float(v) / 1e9,
                         "% of the shape's FLOPs": float(v) / total})  # a fraction: table() shows '% ...' as percent
    if not rows:
        return pd.DataFrame({"FLOPs by operator": ["not recorded in this run"]})
    out = pd.DataFrame(rows, columns=cols)
    return out if out["shape"].nunique() > 1 else out.drop(columns="shape")


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
