"""lib.stats: summary statistics on synthetic samples with known answers, the outlier rules (planted
outliers are dropped and counted; raw tail figures stay), rule parsing, and the bootstrap ratio CI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib.errors import ConfigError
from lib.stats import PERCENTILES, OutlierRule, bootstrap_ratio_ci, parse_outlier_rule, summarize

TUKEY, MAD, NONE = OutlierRule("tukey", 1.5), OutlierRule("mad", 3.5), OutlierRule("none", 0.0)


def test_summarize_known_values():
    x = np.arange(1, 101, dtype=float)  # 1..100
    s = summarize(x)
    assert s["n"] == 100 and s["dropped"] == 0
    assert s["median_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)  # linear interpolation: 1 + 0.90 * 99
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std (ddof=1) of 1..n
    assert s["cv"] == pytest.approx(s["std_ms"] / 50.5)
    assert (s["min_ms"], s["max_ms"]) == (1.0, 100.0)
    assert s["p99_raw_ms"] == pytest.approx(99.01) and s["max_raw_ms"] == 100.0
    assert PERCENTILES == (50, 90, 95, 99)


def test_summarize_order_does_not_matter():
    x = np.random.default_rng(3).lognormal(0, 0.3, 257)
    s = summarize(x, TUKEY)
    assert summarize(x[::-1].copy(), TUKEY) == pytest.approx(s, rel=1e-12)
    assert summarize(np.sort(x), TUKEY) == pytest.approx(s, rel=1e-12)


def test_summarize_cv_of_synthetic_normal():
    x = np.random.default_rng(0).normal(10.0, 0.5, 20_000)
    s = summarize(x, NONE)
    assert s["cv"] == pytest.approx(0.05, rel=0.03)
    assert s["median_ms"] == pytest.approx(10.0, abs=0.02)


def test_summarize_edge_cases():
    assert summarize(np.array([])) == {"n": 0, "dropped": 0}
    one = summarize([2.5], TUKEY)
    assert one["n"] == 1 and one["median_ms"] == 2.5 and one["std_ms"] == 0.0 and one["cv"] == 0.0


def _planted(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(10.0, 0.1, 200)
    outliers = np.array([50.0, 60.0, 2.0])
    x = np.concatenate([base[:100], outliers, base[100:]])
    return x, base, outliers


@pytest.mark.parametrize("rule", [TUKEY, MAD], ids=["tukey", "mad"])
def test_rules_drop_planted_outliers_and_count_them(rule):
    x, base, outliers = _planted()
    keep = rule.keep_mask(x)
    assert keep.shape == x.shape and keep.dtype == bool
    assert not keep[np.isin(x, outliers)].any()  # every planted outlier dropped
    assert keep.sum() >= len(base) - 3  # and (almost) nothing else
    s = summarize(x, rule)
    assert s["n"] == len(x) and s["dropped"] == int((~keep).sum()) >= 3
    assert s["max_ms"] < 11 and s["min_ms"] > 9
    assert s["max_raw_ms"] == 60.0  # the raw tail is still reported
    assert s["p99_raw_ms"] > s["p99_ms"]
    assert s["median_ms"] == pytest.approx(np.median(x[keep]))


def test_none_keeps_everything():
    x, _, _ = _planted()
    assert NONE.keep_mask(x).all()
    s = summarize(x, NONE)
    assert s["dropped"] == 0 and s["max_ms"] == 60.0 and s["min_ms"] == 2.0
    assert summarize(x, None) == s


def test_the_factor_matters():
    x = np.concatenate([np.random.default_rng(1).normal(10, 0.1, 400), [10.6]])  # ~4 IQR above Q3
    assert not parse_outlier_rule("tukey").keep_mask(x)[-1]
    assert parse_outlier_rule("tukey:10").keep_mask(x)[-1]
    assert not parse_outlier_rule("mad").keep_mask(x)[-1]
    assert parse_outlier_rule("mad:20").keep_mask(x)[-1]


def test_rules_keep_tiny_and_constant_samples():
    assert TUKEY.keep_mask([1.0, 100.0, 1.0]).all()  # fewer than 4 samples: nothing is judged
    assert MAD.keep_mask([5.0, 5.0, 5.0, 5.0, 5.0]).all()
    assert TUKEY.keep_mask([5.0] * 10).all()


@pytest.mark.parametrize("text, name, k", [("tukey", "tukey", 1.5), (" Tukey:3 ", "tukey", 3.0), ("mad", "mad", 3.5),
                                           ("MAD:5", "mad", 5.0), ("none", "none", 0.0), ("mad:0.5", "mad", 0.5)])
def test_parse_outlier_rule(text, name, k):
    rule = parse_outlier_rule(text)
    assert (rule.name, rule.k) == (name, k)


@pytest.mark.parametrize("text, words", [
    ("iqr", ["'iqr'", "tukey, tukey:<k>, mad, mad:<k> or none"]),
    ("", ["''", "not a rule"]),
    ("tukey:abc", ["'tukey:abc'", "'abc' is not a number"]),
    ("tukey:0", ["'tukey:0'", "> 0"]),
    ("mad:-2", ["'mad:-2'", "> 0"]),
    ("mad:nan", ["'mad:nan'", "> 0"]),
    ("none:3", ["'none:3'", "takes no factor"]),
])
def test_parse_outlier_rule_errors(text, words):
    with pytest.raises(ConfigError) as e:
        parse_outlier_rule(text)
    assert str(e.value).startswith(f"OUTLIERS={text!r}")
    for w in words:
        assert w in str(e.value)


def test_rule_labels():
    assert parse_outlier_rule("tukey:3").label == "Tukey fences: outside [Q1 - 3×IQR, Q3 + 3×IQR]"
    assert parse_outlier_rule("mad").label == "MAD: |x - median| > 3.5 × 1.4826 × MAD"
    assert "all samples kept" in parse_outlier_rule("none").label


# --- bootstrap ------------------------------------------------------------------------------------------
def _lognormal_pair(seed, n=200, ratio=2.0, sigma=0.25):
    rng = np.random.default_rng(seed)
    return rng.lognormal(math.log(ratio), sigma, n), rng.lognormal(0.0, sigma, n)  # medians: ratio and 1


def test_bootstrap_ratio_ci_contains_the_true_ratio():
    a, b = _lognormal_pair(7)
    est, lo, hi = bootstrap_ratio_ci(a, b)
    assert est == pytest.approx(np.median(a) / np.median(b))
    assert lo < est < hi and lo < 2.0 < hi
    assert hi - lo < 0.5  # informative, not [0, inf]


def test_bootstrap_ratio_ci_coverage():
    """A 90% interval holds the true ratio in most of 40 independent synthetic experiments."""
    hits = 0
    for seed in range(40):
        a, b = _lognormal_pair(100 + seed, n=150)
        _, lo, hi = bootstrap_ratio_ci(a, b, n_boot=400, level=0.90)
        hits += lo <= 2.0 <= hi
    assert hits >= 30, hits


def test_bootstrap_ratio_ci_is_deterministic_and_seeded():
    a, b = _lognormal_pair(11)
    assert bootstrap_ratio_ci(a, b) == bootstrap_ratio_ci(a.copy(), b.copy())
    assert bootstrap_ratio_ci(a, b, seed=1) != bootstrap_ratio_ci(a, b, seed=2)
    narrow = bootstrap_ratio_ci(a, b, level=0.5)
    wide = bootstrap_ratio_ci(a, b, level=0.99)
    assert wide[1] < narrow[1] < narrow[2] < wide[2]


def test_bootstrap_ratio_of_a_sample_with_itself():
    a, _ = _lognormal_pair(5)
    est, lo, hi = bootstrap_ratio_ci(a, a)
    assert est == 1.0 and lo < 1.0 < hi
