"""lib.measure.parity.compare_outputs: identical outputs pass; perturbations beyond the precision's thresholds fail;
top-1 agreement is reported; shape mismatches, missing outputs and non-finite values fail."""

from __future__ import annotations

import numpy as np
import pytest

from lib.measure.parity import THRESHOLDS, compare_outputs


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


# --- the input-dependent part -----------------------------------------------------------------------

def _biased(seed=0, n=16, share=0.04):
    """Logits like a random-weights model's: a large part that is the same for every input plus a small
    input-dependent part (``share`` of the norm); returns (outputs, the constant part)."""
    rng = np.random.default_rng(seed)
    bias = rng.normal(0, 1, 10)
    x = rng.normal(0, 1, (n, 10))
    x *= share * np.linalg.norm(np.tile(bias, (n, 1))) / np.linalg.norm(x)
    return {"logits": (bias + x).astype(np.float32)}, {"logits": bias}


def _error_in_input_part(ref, centre, share, seed=5):
    rng = np.random.default_rng(seed)
    part = ref["logits"].astype(np.float64) - centre["logits"]
    noise = rng.normal(0, 1, part.shape)
    return {"logits": (ref["logits"] + noise * share * np.linalg.norm(part) / np.linalg.norm(noise)).astype(np.float32)}


def test_a_5_percent_error_in_the_input_dependent_part_fails():
    ref, centre = _biased()
    out = _error_in_input_part(ref, centre, 0.05)
    raw = compare_outputs(out, ref, "fp16", "logits")
    assert raw["passed"]  # the old check: raw figures hardly move, so this engine passed
    for precision in ("fp32", "fp16"):
        r = compare_outputs(out, ref, precision, "logits", centre=centre)
        assert not r["passed"] and "input-dependent part" in r["problems"], (precision, r)
        assert r["outputs"]["logits"]["centred_cosine"] < 0.999
    ok = compare_outputs(_error_in_input_part(ref, centre, 0.005), ref, "fp16", "logits", centre=centre)
    assert ok["passed"], ok["problems"]  # rounding-sized errors still pass


def test_another_inputs_outputs_fail_when_centred():
    ref, centre = _biased(seed=0)
    other = {"logits": (centre["logits"] + (_biased(seed=1)[0]["logits"] - _biased(seed=1)[1]["logits"]))}
    assert compare_outputs(other, ref, "bf16", "logits")["cosine"] > 0.99  # raw: looks the same
    r = compare_outputs(other, ref, "bf16", "logits", centre=centre)
    assert not r["passed"] and r["centred_cosine"] < 0.5


def test_top1_left_out_where_it_means_nothing():
    ref, centre = _biased()
    r = compare_outputs(ref, ref, "fp32", "logits", centre=centre, top1_meaningful=False)
    assert np.isnan(r["top1_agree"]) and "same top-1 class" in r["top1_note"]
    assert "top1_agree" not in r["outputs"]["logits"]


def test_each_output_keeps_its_own_figures(ref):
    out = _perturbed(ref, 1e-4)
    out["embedding"] = _perturbed(ref, 2e-2)["embedding"]
    r = compare_outputs(out, ref, "fp32", "logits")
    assert r["outputs"]["logits"]["rel_err"] < 1e-3 < r["outputs"]["embedding"]["rel_err"]


# --- check_parity on a real engine ------------------------------------------------------------------

class _Ref:
    """The reference as lib.sweep.bench keeps it: the tiny model in FP32 on the CPU."""

    def __init__(self, module, cfg):
        self.module, self.cfg = module, cfg

    def get(self, key, inputs):
        import torch

        with torch.no_grad():
            return {"logits": self.module(torch.from_numpy(inputs["image"])).numpy()}


class _Faulty:
    """A real engine whose outputs get an error: ``how`` = "input part" (5 % of the input-dependent part, on the
    device path only) or "stale" (the outputs of the timed input, whatever is asked)."""

    def __init__(self, engine, centre, how):
        self.e, self.centre, self.how = engine, centre, how
        self.timed = None

    def bind(self, inputs):
        if self.timed is None:
            self.timed = self.e.infer(inputs)
        self.e.bind(inputs)

    def run_bound(self):
        self.e.run_bound()

    def fetch(self):
        out = self.e.fetch()
        if self.how == "stale":
            return self.timed
        return _error_in_input_part(out, self.centre, 0.05)

    def infer(self, inputs):
        return self.timed if self.how == "stale" else self.e.infer(inputs)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_check_parity_on_a_real_engine(tiny, tiny_module, precision):
    from lib.backends import EngineSpec, make_engine
    from lib.config.inputs import make_inputs
    from lib.measure.parity import calibration_centre, check_parity

    shape = tiny.shapes[0]
    ref = _Ref(tiny_module, tiny)
    with make_engine("torch", EngineSpec(model=tiny, precision=precision, device="cpu")) as engine:
        engine.bind(make_inputs(tiny, 4, shape, seed=0))  # the timed arrays
        r = check_parity(engine, tiny, 4, shape, 0, precision, ref, "bs4")
        assert r["passed"], r["problems"]
        assert set(r["paths"]) == {"device", "end_to_end"} and r["centred_cosine"] > 0.9
        assert not np.array_equal(engine.bound_inputs["image"], make_inputs(tiny, 4, shape, seed=0)["image"])
        if precision != "fp32":
            return
        centre, _ = calibration_centre(tiny, shape, 0, ref)
        for how in ("input part", "stale"):
            faulty = _Faulty(engine, centre, how)
            faulty.bind(make_inputs(tiny, 4, shape, seed=0))
            bad = check_parity(faulty, tiny, 4, shape, 0, precision, ref, "bs4")
            assert not bad["passed"] and "input-dependent part" in bad["problems"], (how, bad)
            assert not bad["paths"]["device"]["passed"]
