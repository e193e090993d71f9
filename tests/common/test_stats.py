"""lib.common.stats: raw summary statistics on synthetic samples with known answers (percentiles only where the
sample supports them), the presentation-only outlier rules, rule parsing, and the round-based intervals:
coverage, A/A comparisons that must come out "no clear difference", and power against real differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib.common.errors import ConfigError
from lib.common.stats import (PERCENTILES, OutlierRule, filtered_summary, log_mean_variance, parse_outlier_rule,
                              ratio_interval, round_interval, round_spread, summarize, verdict)

TUKEY, MAD, NONE = OutlierRule("tukey", 1.5), OutlierRule("mad", 3.5), OutlierRule("none", 0.0)


def test_summarize_known_values():
    x = np.arange(1, 101, dtype=float)  # 1..100
    s = summarize(x)
    assert s["n"] == 100
    assert s["median_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)  # linear interpolation: 1 + 0.90 * 99
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std (ddof=1) of 1..n
    assert s["cv"] == pytest.approx(s["std_ms"] / 50.5)
    assert (s["min_ms"], s["max_ms"]) == (1.0, 100.0)
    assert (s["tail_q"], s["tail_ms"]) == (99, pytest.approx(99.01))
    assert PERCENTILES == (50, 90, 95, 99)


def test_percentiles_only_where_the_sample_supports_them():
    """p99 of 20 samples would be the sample's maximum: it is not reported, and the tail falls back."""
    s = summarize(np.arange(1, 21, dtype=float))
    assert math.isnan(s["p99_ms"]) and s["p95_ms"] == pytest.approx(19.05) and s["p90_ms"] == pytest.approx(18.1)
    assert (s["tail_q"], s["tail_ms"]) == (95, pytest.approx(19.05))
    s = summarize(np.arange(1, 11, dtype=float))
    assert math.isnan(s["p99_ms"]) and math.isnan(s["p95_ms"]) and s["tail_q"] == 90
    s = summarize(np.arange(1, 6, dtype=float))
    assert s["tail_q"] == 0 and math.isnan(s["tail_ms"])


def test_cv_is_over_raw_samples_even_with_outliers():
    """Outliers raise the raw CV (and so flag a point); the filter only changes presentation columns."""
    x, base, _ = _planted()
    assert summarize(x)["cv"] > 0.3 > summarize(base)["cv"]
    f = filtered_summary(x, TUKEY)
    assert f["dropped"] >= 3 and f["filtered_median_ms"] == pytest.approx(np.median(x[TUKEY.keep_mask(x)]))
    assert all(k == "dropped" or k.startswith("filtered_") for k in f)


def test_summarize_order_does_not_matter():
    x = np.random.default_rng(3).lognormal(0, 0.3, 257)
    s = summarize(x)
    assert summarize(x[::-1].copy()) == pytest.approx(s, rel=1e-12)
    assert summarize(np.sort(x)) == pytest.approx(s, rel=1e-12)


def test_summarize_cv_of_synthetic_normal():
    x = np.random.default_rng(0).normal(10.0, 0.5, 20_000)
    s = summarize(x)
    assert s["cv"] == pytest.approx(0.05, rel=0.03)
    assert s["median_ms"] == pytest.approx(10.0, abs=0.02)


def test_summarize_edge_cases():
    assert summarize(np.array([])) == {"n": 0}
    one = summarize([2.5])
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
    f = filtered_summary(x, rule)
    assert f["dropped"] == int((~keep).sum()) >= 3
    assert f["filtered_median_ms"] == pytest.approx(np.median(x[keep]))
    assert summarize(x)["max_ms"] == 60.0  # the raw figures keep the tail


def test_none_keeps_everything():
    x, _, _ = _planted()
    assert NONE.keep_mask(x).all()
    assert filtered_summary(x, NONE)["dropped"] == 0


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


# --- intervals from rounds ------------------------------------------------------------------------------
def _rounds(rng, k=4, level=1.0, between=0.0, within=0.005, processes=2):
    """Synthetic round medians of one configuration: ``processes`` processes (passes), each with its own
    offset (sd ``between``), ``k`` rounds in all, each with its own host state (sd ``within``)."""
    per = k // processes
    med, grp = [], []
    for g in range(processes):
        off = rng.normal(0, between)
        med.extend(level * np.exp(off + rng.normal(0, within, per)))
        grp.extend([g + 1] * per)
    return np.array(med), np.array(grp)


def test_round_interval_contains_the_figure_and_shrinks_with_rounds():
    rng = np.random.default_rng(0)
    few, g4 = _rounds(rng, k=4)
    many, g16 = _rounds(rng, k=16)
    lo4, hi4 = round_interval(few, 1.0, g4)
    lo16, hi16 = round_interval(many, 1.0, g16)
    assert lo4 < 1.0 < hi4 and lo16 < 1.0 < hi16
    assert (hi16 - lo16) < (hi4 - lo4)
    assert all(math.isnan(v) for v in round_interval([1.0], 1.0))  # one round: no spread to go by


@pytest.mark.parametrize("between, low", [(0.0, 0.93), (0.005, 0.85)])
def test_round_interval_coverage(between, low):
    """A 95% interval holds the true figure in about 95% of synthetic experiments with host noise between
    rounds (somewhat less when two processes differ too: two processes say little about a third), and not in
    nearly all of them (it is not uselessly wide)."""
    rng = np.random.default_rng(1)
    hits, n = 0, 1000
    for _ in range(n):
        med, g = _rounds(rng, k=6, between=between, within=0.01)
        lo, hi = round_interval(med, float(np.median(med)), g)
        hits += lo <= 1.0 <= hi
    assert low <= hits / n <= 0.995, hits / n


def test_processes_that_disagree_widen_the_interval():
    """Two passes 3% apart: many quiet rounds inside each must not make the interval narrow."""
    med = np.array([1.0, 1.001, 0.999, 1.0, 1.03, 1.031, 1.029, 1.03])
    grp = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    lo, hi = round_interval(med, 1.015, grp)
    lo_naive, hi_naive = round_interval(med, 1.015)  # as if all 8 rounds were independent
    assert (hi - lo) > 3 * (hi_naive - lo_naive)
    assert log_mean_variance(med, grp)[1] == 1  # the passes' spread, with their degrees of freedom


@pytest.mark.parametrize("between, within", [(0.0, 0.01), (0.01, 0.01), (0.01, 0.003), (0.005, 0.005), (0.0, 0.03)])
def test_a_a_comparisons_are_no_clear_difference(between, within):
    """The same configuration measured twice (two runs, each of two processes) comes out 'no clear
    difference' at least 95% of the time, including with 1-2% between-process noise (a bootstrap over
    single iterations called 82% of such comparisons significant)."""
    rng = np.random.default_rng(2)
    same, n = 0, 1000
    for _ in range(n):
        a, ga = _rounds(rng, between=between, within=within)
        b, gb = _rounds(rng, between=between, within=within)
        ratio = float(np.median(a) / np.median(b))
        same += verdict(*ratio_interval(a, b, ratio, ga, gb)) == "no clear difference"
    assert same / n >= 0.95, same / n


def test_real_differences_are_found_on_a_quiet_host():
    rng = np.random.default_rng(3)
    found, n = 0, 500
    for _ in range(n):
        a, ga = _rounds(rng, level=1.10, between=0.003, within=0.003)
        b, gb = _rounds(rng, between=0.003, within=0.003)
        ratio = float(np.median(a) / np.median(b))
        found += verdict(*ratio_interval(a, b, ratio, ga, gb)) == "higher"
    assert found / n >= 0.9, found / n


def test_verdict_margin_and_unknowns():
    assert verdict(1.02, 1.05) == "higher" and verdict(0.90, 0.95) == "lower"
    assert verdict(1.002, 1.02) == "no clear difference"  # excludes 1, but within +-1 %
    assert verdict(0.9, 1.1) == "no clear difference"
    assert verdict(float("nan"), float("nan")) == "no clear difference"


def test_round_spread():
    assert round_spread([1.0, 1.05, 0.95], 1.0) == pytest.approx(0.10)
    assert round_spread([2.0], 2.0) == 0.0
