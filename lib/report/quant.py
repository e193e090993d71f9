"""The report's quantization section: what INT8 / FP8 gain in speed and cost in accuracy, side by side.

Per backend/precision of the run (only for runs with a quantized precision): its device-resident speedup
over the same backend's reference precision (FP32; where the run has no FP32 of that backend, its FP16, then
BF16: ``PRECISIONS=fp16,int8,fp8`` compares the quantized ones with FP16) at each batch both measured (median
ratio over raw samples), parity against
PyTorch FP32 (the worst point: raw cosine and the input-dependent, centred cosine that decides), top-1
on DATA and its drop against the same backend's FP32, top-1 agreement with that FP32 image by image,
the model file's size and the INT8 calibration (source, time). ``quant_markdown`` states the tolerance
(``MAX_ACC_DROP``) and names the fastest configuration within it, and says when random weights make
the accuracy figures meaningless. Everything is read from the run folder; nothing is measured here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..measure.accuracy import ACCURACY_FILE
from ..common.cache import read_json
from ..backends import engine_class
from ..config.models import is_given_onnx
from ..config.models import get_model
from ..config.params import QUANTIZED
from ..results.run import Run
from .markup import md
from .points import compare_points

__all__ = ["has_quantized", "tolerance", "quant_table", "quant_markdown", "reference_precision", "DEFAULT_TOP1_DROP_POINTS"]

DEFAULT_TOP1_DROP_POINTS = 1.0  # MAX_ACC_DROP=auto with DATA: one point of top-1
SPEEDUP = "speedup vs reference (device)"


def has_quantized(run: Run) -> bool:
    return any(c["precision"] in QUANTIZED for c in run.plan.get("combos", []))


def tolerance(run: Run, max_acc_drop: str | None = None) -> tuple[str, float | None, str]:
    """(kind "top1" or "parity", points for top1, the sentence that states it)."""
    value = str(max_acc_drop or run.params.get("max_acc_drop") or "auto").strip().lower()
    data = bool(run.params.get("data"))
    if value == "parity" or (value == "auto" and not data):
        why = " (no DATA: no top-1 to compare)" if value == "auto" else ""
        return "parity", None, (f"tolerance: every point passes parity against PyTorch FP32 at its precision's "
                                f"thresholds, input-dependent part included (MAX_ACC_DROP={value}{why})")
    points = DEFAULT_TOP1_DROP_POINTS if value == "auto" else float(value)
    return "top1", points, (f"tolerance: top-1 on DATA at most {points:g} point{'s' if points != 1 else ''} below the "
                            f"same backend's FP32 (MAX_ACC_DROP={value}); parity is shown beside it")


def _accuracy(run: Run, backend: str, precision: str) -> dict | None:
    path = Path(run.path) / "bench" / f"{backend}-{precision}" / ACCURACY_FILE
    if not path.exists():
        return None
    r = read_json(path)
    return r if r.get("status") == "ok" else None


def _files(run: Run) -> dict[str, dict]:
    return {str(f.get("precision")): f for f in (run.export or {}).get("files", []) if f.get("path") not in (None, "–")}


def _model_file(run: Run, backend: str, precision: str, files: dict) -> tuple[float, str]:
    """(MB, what) of the file the backend loads: its TensorRT plan, its ONNX, or none (PyTorch)."""
    info = (run.engines.get(f"{backend}/{precision}") or {}).get("info") or {}
    plan = info.get("engine_path")
    if plan and Path(plan).is_file():
        return Path(plan).stat().st_size / 1e6, "TensorRT plan"
    try:
        cls = engine_class(backend)
    except Exception:  # a backend this version does not know
        return np.nan, ""
    if cls.needs_onnx:
        f = files.get(cls.onnx_variant(precision))
        if f:
            return float(f.get("MB", np.nan)), f"ONNX ({f.get('precision')})"
    return np.nan, "PyTorch module (no file)"


def _device_points(run: Run) -> pd.DataFrame:
    p = run.points
    if p.empty:
        return p
    return p[p["mode"] == "device"]


# The precision a backend's quantized points are compared with: the first of these the run measured for it.
REFERENCE_ORDER = ("fp32", "fp16", "bf16")


def reference_precision(run: Run, backend: str) -> str | None:
    """The same backend's precision that speedups are taken over: FP32 where measured, else FP16, else BF16."""
    d = _device_points(run)
    have = set(d.loc[d["backend"] == backend, "precision"]) if not d.empty else set()
    return next((p for p in REFERENCE_ORDER if p in have), None)


def _speedups(run: Run, backend: str, precision: str) -> dict:
    """{(batch, shape): (reference median / this median, 95 % interval low, high, verdict)} device-resident,
    where both were measured (reference: ``reference_precision``): the medians over raw samples, the interval
    from both sides' round medians (``lib.report.points.compare_points``), verdict 'faster' / 'slower' only when
    the interval lies beyond ±1 %."""
    d = _device_points(run)
    ref = reference_precision(run, backend)
    if d.empty or ref is None or ref == precision:
        return {}
    mine = d[(d["backend"] == backend) & (d["precision"] == precision)]
    base = d[(d["backend"] == backend) & (d["precision"] == ref)]
    out = {}
    for r in mine.itertuples():
        if ((base["batch"] == r.batch) & (base["shape"] == r.shape)).any() and r.median_ms > 0:
            ratio, lo, hi, v = compare_points(run, (backend, ref, r.batch), (backend, precision, r.batch),
                                              "device", r.shape)
            out[(int(r.batch), str(r.shape))] = (ratio, lo, hi, {"higher": "faster", "lower": "slower"}.get(
                v, "no clear difference"))
    return out


def _fmt_speedup(k, v) -> str:
    ratio, lo, hi, verdict = v
    interval = f"{lo:.2f}–{hi:.2f}" if np.isfinite(lo) and np.isfinite(hi) else "no interval"
    return f"bs {k[0]}: {ratio:.2f}x ({interval}, {verdict})"


def quant_table(run: Run) -> pd.DataFrame:
    """One row per backend/precision of a backend that runs a quantized precision (its reference row included)."""
    if not has_quantized(run):
        return pd.DataFrame()
    files = _files(run)
    quant_backends = {c["backend"] for c in run.plan.get("combos", []) if c["precision"] in QUANTIZED}
    d = _device_points(run)
    rows = []
    for c in run.plan.get("combos", []):
        b, prec = c["backend"], c["precision"]
        if b not in quant_backends:
            continue
        row = {"backend": b, "precision": prec}
        ref = reference_precision(run, b)
        sp = _speedups(run, b, prec)
        row["reference"] = f"{b}/{ref}" if ref else "–"
        row[SPEEDUP] = ("; ".join(_fmt_speedup(k, v) for k, v in sorted(sp.items()))
                        if sp else ("1" if prec == ref else "–"))
        pts = d[(d["backend"] == b) & (d["precision"] == prec)] if not d.empty else d
        if len(pts):
            row["parity passed"] = bool(pts["parity_passed"].map(lambda v: v is not False and v is not np.False_).all())
            row["worst cosine vs PyTorch FP32"] = float(pts["parity_cosine"].min())
            row["worst input-dependent cosine"] = float(pts["parity_centred_cosine"].min())
        acc, base = _accuracy(run, b, prec), _accuracy(run, b, "fp32")
        if acc:
            row["top-1 (DATA)"] = acc["top1"]
            row["top-5 (DATA)"] = acc["top5"]
            if base:
                row["top-1 drop vs FP32 (points)"] = 100 * (base["top1"] - acc["top1"])
                if len(base["predictions"]) == len(acc["predictions"]):
                    row["top-1 agreement with FP32 (DATA)"] = float(np.mean(np.asarray(acc["predictions"])
                                                                            == np.asarray(base["predictions"])))
        f = files.get(_variant(b, prec))
        if f and prec == "int8":
            cal = f.get("calibration")
            row["calibration"] = cal
            row["calibration s"] = f.get("calibration s")
            row["top-1 agreement with FP32 (calibration, ORT CPU)"] = f.get("top-1 agreement with FP32 (calibration inputs)")
            if run.device == "cuda" and b == "ort":
                row["CUDA EP nodes without a kernel (file)"] = f.get("CUDA EP nodes without a kernel (ORT FAQ)")
        mb, what = _model_file(run, b, prec, files)
        row["model file MB"] = mb
        row["file"] = what
        rows.append(row)
    return pd.DataFrame(rows)


def _variant(backend: str, precision: str) -> str:
    try:
        return engine_class(backend).onnx_variant(precision)
    except Exception:
        return precision


def _parity_failed(row: pd.Series) -> bool:
    return row.get("parity passed") is False or row.get("parity passed") is np.False_


def _within(row: pd.Series, kind: str, points: float | None) -> tuple[bool, str]:
    """(within the tolerance, why not / what decided). With DATA the top-1 drop decides: parity is judged on
    seeded inputs, which an INT8 file calibrated on CALIB images never saw (its failure is said, not gating)."""
    if kind == "parity":
        return (False, "parity failed") if _parity_failed(row) else (bool(row.get("parity passed", False)), "")
    drop = row.get("top-1 drop vs FP32 (points)")
    if row["precision"] == "fp32":
        return (False, "parity failed") if _parity_failed(row) else (True, "")
    if drop is None or (isinstance(drop, float) and np.isnan(drop)):
        return False, "no top-1 on DATA"
    note = "; its parity on seeded inputs failed" if _parity_failed(row) else ""
    return bool(drop <= points + 1e-9), f"top-1 drop {drop:.1f} points{note}"


def _random_weights(run: Run) -> bool:
    if run.params.get("weights"):
        return False
    try:
        return not is_given_onnx(get_model(run.params["model"], run.params.get("models_dir") or None))
    except Exception:
        return True


def quant_markdown(run: Run, max_acc_drop: str | None = None) -> str:
    """The tolerance, the fastest configuration within it, the INT8 speedups, and what random weights mean."""
    if not has_quantized(run):
        return "No quantized precision in this run: `PRECISIONS=fp32,int8` (with `CALIB=<images>`) adds one."
    kind, points, sentence = tolerance(run, max_acc_drop)
    t = quant_table(run)
    files = _files(run)
    lines = []
    d = _device_points(run)
    if not d.empty and len(t):
        batch = int(d["batch"].max())
        at = d[d["batch"] == batch]
        ranked = []
        for _, row in t.iterrows():
            ok, why = _within(row, kind, points)
            m = at[(at["backend"] == row["backend"]) & (at["precision"] == row["precision"])]
            if len(m):
                ranked.append((float(m["median_ms"].min()), row["backend"] + "/" + row["precision"], ok, why))
        ranked.sort()
        inside = [r for r in ranked if r[2]]
        if inside:
            best = inside[0]
            faster_out = [r for r in ranked if not r[2] and r[0] < best[0]]
            b_backend, b_prec = best[1].split("/", 1)
            verdicts = [v[3] for k, v in _speedups(run, b_backend, b_prec).items() if k[0] == batch]
            noise = (f" — **inconclusive**: its speedup over {b_backend}/{reference_precision(run, b_backend)} at "
                     f"batch {batch} lies within the noise (see the interval below)"
                     if verdicts and verdicts[0] != "faster" else "")
            lines.append(f"- **Fastest within the tolerance at batch {batch}** (device-resident median): "
                         f"**{md(best[1])}**, {best[0]:.4g} ms" + (f", {md(best[3])}" if best[3] else "")
                         + f" ({md(sentence)}){noise}."
                         + (" Faster but outside it: " + ", ".join(f"{md(r[1])} {r[0]:.4g} ms ({md(r[3])})"
                                                                   for r in faster_out) + "." if faster_out else ""))
        elif ranked:
            lines.append(f"- **No configuration at batch {batch} stays within the tolerance** ({md(sentence)}): "
                         + ", ".join(f"{md(r[1])}: {md(r[3])}" for r in ranked) + ".")
    for _, row in t.iterrows():
        if row["precision"] in QUANTIZED and row[SPEEDUP] not in ("–", "1"):
            acc = []
            if "worst input-dependent cosine" in row and pd.notna(row.get("worst input-dependent cosine")):
                acc.append(f"input-dependent cosine vs PyTorch FP32 ≥ {row['worst input-dependent cosine']:.3f}")
            if pd.notna(row.get("top-1 drop vs FP32 (points)", np.nan)):
                acc.append(f"top-1 on DATA {100 * row['top-1 (DATA)']:.1f} % ({row['top-1 drop vs FP32 (points)']:+.1f} "
                           f"points below FP32)")
            if pd.notna(row.get("top-1 agreement with FP32 (DATA)", np.nan)):
                acc.append(f"same top-1 as FP32 on {100 * row['top-1 agreement with FP32 (DATA)']:.0f} % of the images")
            lines.append(f"- **{md(row['backend'] + '/' + row['precision'])}**: speedup over {md(row['reference'])} "
                         f"{md(row[SPEEDUP])} (device-resident medians, 95 % interval from the "
                         f"rounds; below 1x = slower); "
                         + ("; ".join(acc) or "no accuracy figure")
                         + ("" if row.get("parity passed", True) else " (parity FAILED at its thresholds)") + ".")
    for c in run.plan.get("combos", []):
        info = (run.engines.get(f"{c['backend']}/{c['precision']}") or {}).get("info") or {}
        if run.device == "cuda" and c["backend"] == "ort" and c["precision"] == "int8":
            f = files.get("int8") or {}
            lines.append(f"- **ort/int8 on the CUDA EP, from the file** (ONNX Runtime's FAQ: its CUDA build has kernels for "
                         f"QuantizeLinear, DequantizeLinear and MatMulInteger only): "
                         f"{f.get('CUDA EP nodes without a kernel (ORT FAQ)', '?')} node(s) without a CUDA kernel; the "
                         f"CUDA EP runs the Q/DQ nodes around float Conv/MatMul, so expect no INT8 speedup there "
                         f"(the TensorRT EP, ort-trt, runs the QDQ file as INT8).")
        placed = info.get("node_placement")
        if placed and "cpu_nodes" in placed:
            ops = ", ".join(f"{k} {v}" for k, v in sorted(placed["cpu_op_types"].items())) or "none listed"
            lines.append(f"- **{md(c['backend'] + '/' + c['precision'])} on the CUDA EP**: {placed['cpu_nodes']} node(s) "
                         f"placed on the CPU EP ({md(ops)}), from ONNX Runtime's own placement log.")
        ao = info.get("torchao")
        if ao:
            q = ", ".join(f"{k} {v}" for k, v in sorted(ao["quantized"].items())) or "nothing"
            kept = ", ".join(f"{k} {v}" for k, v in sorted(ao["kept_in_higher_precision"].items())) or "nothing"
            lines.append(f"- **{md(c['backend'] + '/' + c['precision'])}** (torchao {md(ao['torchao'])} "
                         f"{md(ao['config'])}): quantized {md(q)}; stayed in {md(info.get('activation_dtype', 'float'))}: "
                         f"{md(kept)}.")
    cal = t["calibration"].dropna().unique().tolist() if "calibration" in t else []
    for label in cal:
        lines.append(f"- **Calibration**: {md(str(label))}.")
    if run.params.get("calib"):
        lines.append("- Parity is judged on seeded inputs from the model config, which an INT8 file calibrated on "
                     "CALIB images has not seen (values outside its calibrated ranges are clipped): it shows how "
                     "INT8 does outside its calibration range. Top-1 agreement with FP32 on DATA is the "
                     "in-distribution figure.")
    if _random_weights(run):
        lines.append("- **Random weights: the accuracy figures mean nothing about a trained model.** This model "
                     "starts from seeded random weights (no WEIGHTS, no model hub here): top-1 on DATA, where given, "
                     "is at chance for every precision, and how far INT8 strays from FP32 depends on the weights (deep random "
                     "networks amplify quantization noise). The speed figures do not depend on the weights; give WEIGHTS=<state_dict.pth> and "
                     "DATA for an accuracy cost that means something.")
    return "\n".join(lines)
