"""Output parity against the PyTorch FP32 reference on the same seeded input.

Per output: max abs error, the same divided by the reference's max |value| (scale-free, so one
threshold serves logits and embeddings), cosine similarity, and for the model's classification
output the share of rows whose top-1 class agrees. A point passes when, for every output,
cosine >= ``min_cosine`` and normalised max abs error <= ``max_rel_err`` for its precision.
Top-1 agreement is reported, not gated: with random weights the logits of near-tied classes
can swap under any rounding.
"""

from __future__ import annotations

import numpy as np

__all__ = ["THRESHOLDS", "compare_outputs"]

# precision -> (min cosine, max |err| / max |ref|). FP32 allows TF32 math (10-bit mantissa).
THRESHOLDS = {
    "fp32": (0.9999, 5e-3),
    "fp16": (0.999, 5e-2),
    "bf16": (0.995, 1e-1),
}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def compare_outputs(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str,
                    top_k_output: str | None = None) -> dict:
    """A flat dict: ``passed``, worst-case figures over outputs, and per-output details."""
    min_cos, max_rel = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    details, passed, problems = {}, True, []
    for name, ref in reference.items():
        if name not in outputs:
            passed = False
            problems.append(f"output {name!r} missing")
            continue
        out = np.asarray(outputs[name], dtype=np.float64)
        ref64 = np.asarray(ref, dtype=np.float64)
        if out.shape != ref64.shape:
            passed = False
            problems.append(f"{name}: shape {out.shape} != reference {ref64.shape}")
            continue
        if not np.all(np.isfinite(out)):
            passed = False
            problems.append(f"{name}: non-finite values")
            continue
        if not np.all(np.isfinite(ref64)):  # NaN figures would compare False and pass every threshold
            passed = False
            problems.append(f"{name}: the reference has non-finite values; parity cannot be judged")
            continue
        max_abs = float(np.max(np.abs(out - ref64))) if out.size else 0.0
        scale = float(np.max(np.abs(ref64))) if out.size else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        cos = _cosine(out, ref64)
        d = {"max_abs_err": max_abs, "rel_err": rel, "cosine": cos}
        if name == top_k_output and out.ndim == 2:
            d["top1_agree"] = float(np.mean(out.argmax(1) == ref64.argmax(1)))
        if cos < min_cos or rel > max_rel:
            passed = False
            problems.append(f"{name}: cosine {cos:.6f} (min {min_cos}), rel err {rel:.2e} (max {max_rel:.0e})")
        details[name] = d
    worst = {
        "max_abs_err": max((d["max_abs_err"] for d in details.values()), default=float("nan")),
        "rel_err": max((d["rel_err"] for d in details.values()), default=float("nan")),
        "cosine": min((d["cosine"] for d in details.values()), default=float("nan")),
    }
    top1 = [d["top1_agree"] for d in details.values() if "top1_agree" in d]
    return {"passed": passed, **worst, "top1_agree": top1[0] if top1 else float("nan"),
            "min_cosine": min_cos, "max_rel_err": max_rel, "problems": "; ".join(problems), "outputs": details}
