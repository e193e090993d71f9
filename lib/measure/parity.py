"""Output parity against the FP32 reference (PyTorch on the CPU, or ONNX Runtime's CPU EP for a model given
as ONNX), on a fresh seeded input, through both of an engine's paths.

What is compared. With calibrated random weights most of a model's output does not depend on its input
(about 80 % of efficientnet_b1's logits norm is the same for every input): a raw cosine then stays high for
a badly wrong engine, even for another input's outputs (0.94 here). So each output is also compared
*centred*: minus the reference's mean output over a calibration set of seeded inputs of the same shape
(``calibration_centre``), which leaves the part that depends on the input. Per output: max abs error, the
same divided by the reference's max |value|, cosine, and the centred cosine and centred error; a point
passes when every output meets its precision's raw *and* centred thresholds.

Which input. ``check_parity`` draws a new seeded input of the point's shape from its own stream (not the
arrays ``bind()`` staged for timing, which a backend could have cached), runs it through the device path
(``bind``, ``run_bound``, ``fetch``) and the end-to-end path (``infer``), and judges both.

Top-1 agreement is reported, not gated, and only where it means something: when the reference's top-1
class differs between calibration inputs. With random weights it is usually the same class for every
input, and "top-1 agrees" would say nothing about the engine.
"""

from __future__ import annotations

import numpy as np

__all__ = ["THRESHOLDS", "CENTRED_THRESHOLDS", "CALIBRATION_ITEMS", "compare_outputs", "calibration_centre",
           "check_parity"]

# precision -> (min cosine, max |err| / max |ref|) on the raw outputs. FP32 allows TF32 math (10-bit mantissa).
THRESHOLDS = {
    "fp32": (0.9999, 5e-3),
    "fp16": (0.999, 5e-2),
    "bf16": (0.995, 1e-1),
    # INT8 / FP8 (quantized, lib.artifacts.quantize): rounding to 8 bits is ~50x coarser than FP16; see the centred ones.
    "int8": (0.99, 0.15),
    "fp8": (0.99, 0.15),
}
# The same on the centred outputs (the input-dependent part), whose rounding error is relatively larger: set
# from efficientnet_b1 on the CPU (BF16: centred cosine 0.9936, error 0.12 of the centred max; FP16 has 3 more
# mantissa bits, so about 8x less error). An error of 5 % of the input-dependent part (cosine 0.99875) fails
# FP32 and FP16; BF16's own rounding is that large, so BF16 catches errors from about 15 %.
CENTRED_THRESHOLDS = {
    "fp32": (0.9995, 3e-2),
    "fp16": (0.999, 6e-2),
    "bf16": (0.98, 0.25),
    # Quantized: the tiny test CNN (per-channel S8S8, MinMax on seeded inputs) keeps its input-dependent part at
    # centred cosine 0.975-0.995 over six seeded inputs, max error 0.07-0.44 of its max (the max is the noisy
    # figure; the cosine decides); a trained CNN's INT8 logits are usually as close. The gate at 0.95 fails an
    # engine whose error exceeds about a third of the input-dependent part (another input's outputs score
    # about 0). Deep models with random weights amplify quantization noise (resnet50:
    # centred cosine 0.43 on ORT's CPU EP) and fail it: that is their INT8 cost, shown as such, not hidden.
    "int8": (0.95, 0.6),
    "fp8": (0.95, 0.6),
}
CALIBRATION_ITEMS = 8  # seeded inputs whose mean reference output is the centre


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def _rel(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    max_abs = float(np.max(np.abs(out - ref))) if out.size else 0.0
    scale = float(np.max(np.abs(ref))) if out.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def compare_outputs(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str,
                    top_k_output: str | None = None, centre: dict[str, np.ndarray] | None = None,
                    top1_meaningful: bool = True) -> dict:
    """A flat dict: ``passed``, worst-case figures over outputs, and per-output details (``outputs``).

    ``centre``: per output, the array subtracted from both sides before the centred comparison (broadcast
    over the batch); outputs without one are compared raw only. ``top1_meaningful=False``: top-1 agreement
    is left out (NaN), with the reason in ``top1_note``."""
    min_cos, max_rel = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    min_ccos, max_crel = CENTRED_THRESHOLDS.get(precision, CENTRED_THRESHOLDS["fp32"])
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
        max_abs, rel = _rel(out, ref64)
        cos = _cosine(out, ref64)
        d = {"max_abs_err": max_abs, "rel_err": rel, "cosine": cos}
        if cos < min_cos or rel > max_rel:
            passed = False
            problems.append(f"{name}: cosine {cos:.6f} (min {min_cos}), rel err {rel:.2e} (max {max_rel:.0e})")
        c = None if centre is None else centre.get(name)
        if c is not None and out.ndim >= 1:
            c = np.asarray(c, dtype=np.float64)
            oc, rc = out - c, ref64 - c
            ccos = _cosine(oc, rc)
            _, crel = _rel(oc, rc)
            d.update(centred_cosine=ccos, centred_rel_err=crel)
            if ccos < min_ccos or crel > max_crel:
                passed = False
                problems.append(f"{name}: input-dependent part (centred): cosine {ccos:.6f} (min {min_ccos}), "
                                f"rel err {crel:.2e} (max {max_crel:.0e})")
        if name == top_k_output and out.ndim == 2 and top1_meaningful:
            d["top1_agree"] = float(np.mean(out.argmax(1) == ref64.argmax(1)))
        details[name] = d

    def worst(key, fn):
        vals = [d[key] for d in details.values() if key in d]
        return fn(vals) if vals else float("nan")

    top1 = [d["top1_agree"] for d in details.values() if "top1_agree" in d]
    return {"passed": passed, "max_abs_err": worst("max_abs_err", max), "rel_err": worst("rel_err", max),
            "cosine": worst("cosine", min), "centred_cosine": worst("centred_cosine", min),
            "centred_rel_err": worst("centred_rel_err", max),
            "top1_agree": top1[0] if top1 else float("nan"),
            "top1_note": "" if top1_meaningful else ("not shown: the reference gives every calibration input the "
                                                     "same top-1 class (random weights), so agreement says nothing"),
            "min_cosine": min_cos, "max_rel_err": max_rel, "min_centred_cosine": min_ccos,
            "max_centred_rel_err": max_crel, "problems": "; ".join(problems), "outputs": details}


def calibration_centre(cfg, shape, seed: int, reference) -> tuple[dict[str, np.ndarray], bool]:
    """(per output, the reference's mean output over ``CALIBRATION_ITEMS`` seeded inputs of ``shape``; whether
    the reference's top-1 class varies over them). ``reference.get(key, inputs)`` computes (and caches)
    reference outputs."""
    from ..config.inputs import make_inputs
    from ..config.model_config import BATCH_DIM

    lo, hi = cfg.profile_range(BATCH_DIM)
    per = max(lo, min(CALIBRATION_ITEMS, hi))
    outs, n, i = [], 0, 0
    while n < CALIBRATION_ITEMS:
        inputs = make_inputs(cfg, per, shape, seed, stream=f"calibration{i}")
        outs.append(reference.get(f"calibration_{shape.label}_{per}_{i}", inputs))
        n, i = n + per, i + 1
    stacked = {name: np.concatenate([np.asarray(o[name], dtype=np.float64) for o in outs]) for name in outs[0]}
    centre = {name: a.mean(axis=0) for name, a in stacked.items() if a.ndim >= 1}
    top = stacked.get(cfg.top_k_output) if cfg.top_k_output else None
    varies = top is not None and top.ndim == 2 and len(set(top.argmax(1).tolist())) > 1
    return centre, varies


def check_parity(engine, cfg, batch: int, shape, seed: int, precision: str, reference, key: str) -> dict:
    """Parity of one point on a fresh seeded input of its shape (the "parity" stream), judged on the device
    path (``bind``, ``run_bound``, ``fetch``) and the end-to-end path (``infer``). The figures kept are those
    of the worse path; ``paths`` says how each did."""
    from ..config.inputs import make_inputs

    check = make_inputs(cfg, batch, shape, seed, stream="parity")
    engine.bind(check)
    engine.run_bound()
    device_out = engine.fetch()
    end_to_end_out = engine.infer(check)
    ref = reference.get(f"{key}_parity", check)
    centre, top1_ok = calibration_centre(cfg, shape, seed, reference)
    results = {path: compare_outputs(out, ref, precision, cfg.top_k_output, centre, top1_ok)
               for path, out in (("device", device_out), ("end_to_end", end_to_end_out))}
    worst = min(results.values(), key=lambda r: (r["passed"], np.nan_to_num(r["centred_cosine"], nan=2.0),
                                                 r["cosine"]))
    problems = [f"{path}: {r['problems']}" for path, r in results.items() if r["problems"]]
    return {**worst, "passed": all(r["passed"] for r in results.values()), "problems": "; ".join(problems),
            "input": "fresh seeded input (parity stream), not the timed arrays",
            "paths": {path: {"passed": r["passed"], "cosine": r["cosine"], "centred_cosine": r["centred_cosine"]}
                      for path, r in results.items()}}
