"""lib.parity.compare_outputs: identical outputs pass; perturbations beyond the precision's thresholds fail;
top-1 agreement is reported; shape mismatches, missing outputs and non-finite values fail."""

from __future__ import annotations

import numpy as np
import pytest

from lib.parity import THRESHOLDS, compare_outputs


@pytest.fixture
def ref():
    rng = np.random.default_rng(0)
    return {"logits": rng.normal(0, 3, (16, 10)).astype(np.float32),
            "embedding": rng.normal(0, 1, (16, 4, 8)).astype(np.float32)}


def _perturbed(ref, rel, seed=1):
    """Each output plus noise whose max |value| is ``rel`` x the output's max |value|."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in ref.items():
        noise = rng.uniform(-1, 1, v.shape)
        noise *= rel * np.abs(v).max() / np.abs(noise).max()
        out[k] = (v + noise).astype(np.float32)
    return out


def test_identical_outputs_pass(ref):
    r = compare_outputs({k: v.copy() for k, v in ref.items()}, ref, "fp32", top_k_output="logits")
    assert r["passed"] and r["problems"] == ""
    assert r["max_abs_err"] == 0 and r["rel_err"] == 0 and r["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert r["top1_agree"] == 1.0
    assert (r["min_cosine"], r["max_rel_err"]) == THRESHOLDS["fp32"]
    assert set(r["outputs"]) == {"logits", "embedding"} and "top1_agree" not in r["outputs"]["embedding"]


def test_small_perturbation_passes_fp32(ref):
    r = compare_outputs(_perturbed(ref, 1e-4), ref, "fp32", "logits")
    assert r["passed"], r["problems"]
    assert r["rel_err"] == pytest.approx(1e-4, rel=1e-2)


def test_perturbation_beyond_fp32_threshold_fails_but_passes_fp16(ref):
    out = _perturbed(ref, 2e-2)  # above fp32's 5e-3, below fp16's 5e-2
    r32 = compare_outputs(out, ref, "fp32", "logits")
    assert not r32["passed"] and "rel err" in r32["problems"] and "logits" in r32["problems"]
    r16 = compare_outputs(out, ref, "fp16", "logits")
    assert r16["passed"], r16["problems"]
    assert (r16["min_cosine"], r16["max_rel_err"]) == THRESHOLDS["fp16"]


def test_large_perturbation_fails_every_precision(ref):
    out = _perturbed(ref, 0.5)
    for precision in ("fp32", "fp16", "bf16"):
        r = compare_outputs(out, ref, precision)
        assert not r["passed"] and "cosine" in r["problems"]


def test_only_one_output_off_fails_and_is_named(ref):
    out = {k: v.copy() for k, v in ref.items()}
    out["embedding"] = out["embedding"] * -1
    r = compare_outputs(out, ref, "fp32", "logits")
    assert not r["passed"] and r["problems"].startswith("embedding:") and "logits" not in r["problems"]
    assert r["cosine"] == pytest.approx(-1.0) and r["outputs"]["logits"]["cosine"] == pytest.approx(1.0)


def test_top1_is_reported_not_gated(ref):
    logits = ref["logits"]
    out = {k: v.copy() for k, v in ref.items()}
    rows = np.arange(0, 16, 2)  # half the rows: swap the top class with the runner-up
    order = np.argsort(logits[rows], axis=1)
    first, second = order[:, -1], order[:, -2]
    out["logits"][rows, first], out["logits"][rows, second] = logits[rows, second], logits[rows, first]
    r = compare_outputs(out, ref, "bf16", "logits")
    assert r["top1_agree"] == 0.5 and r["outputs"]["logits"]["top1_agree"] == 0.5
    assert np.isnan(compare_outputs(out, ref, "bf16")["top1_agree"])  # no classification output named


def test_shape_mismatch_fails(ref):
    out = {k: v.copy() for k, v in ref.items()}
    out["logits"] = out["logits"][:8]
    r = compare_outputs(out, ref, "fp32")
    assert not r["passed"] and "logits: shape (8, 10) != reference (16, 10)" in r["problems"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_fail(ref, bad):
    out = {k: v.copy() for k, v in ref.items()}
    out["logits"][3, 4] = bad
    r = compare_outputs(out, ref, "fp16")
    assert not r["passed"] and "logits: non-finite values" in r["problems"]


def test_non_finite_reference_fails(ref):
    """NaN compares False with every threshold: a NaN reference must not read as 'passed'."""
    out = {k: v.copy() for k, v in ref.items()}
    bad_ref = {k: v.copy() for k, v in ref.items()}
    bad_ref["logits"][0, 0] = np.nan
    r = compare_outputs(out, bad_ref, "fp32")
    assert not r["passed"] and "logits" in r["problems"] and "reference" in r["problems"]


def test_missing_output_fails(ref):
    out = {"logits": ref["logits"].copy()}
    r = compare_outputs(out, ref, "fp32")
    assert not r["passed"] and "output 'embedding' missing" in r["problems"]


def test_zero_outputs(ref):
    z = {"o": np.zeros((2, 3), np.float32)}
    assert compare_outputs(z, z, "fp32")["passed"]
    r = compare_outputs(z, {"o": np.ones((2, 3), np.float32)}, "fp32")
    assert not r["passed"] and r["cosine"] == 0.0


def test_other_dtypes_compare_in_float64(ref):
    out = {k: v.astype(np.float16) for k, v in ref.items()}
    r = compare_outputs(out, ref, "fp16", "logits")
    assert r["passed"] and 0 < r["rel_err"] < 1e-3
