"""Statistics of raw samples and of rounds, and the presentation-only outlier rules.

Two levels, kept apart on purpose:

* **Samples** (one per timed iteration or pipelined window): the figure of a point and mode is the
  median over *all* its raw samples, with percentiles, mean, std and CV over the same raw samples.
  A percentile is reported only where the sample supports it (``p99`` needs >= 100 samples,
  ``p95`` >= 20, ``p90`` >= 10); ``tail_q``/``tail_ms`` name the highest supported one.
* **Rounds** (a point is measured in several interleaved rounds, each a block of samples, see
  ``lib.sweep.bench``): samples of one round share the host's state of that moment, so they are not
  independent and say nothing about run-to-run uncertainty. Intervals therefore come from the
  spread of the *round medians*: a Student-t interval on their logarithms (``round_interval``) for
  one point, and Welch's t on the difference of log round medians for a ratio of two points
  (``ratio_interval``); rounds of one process are grouped, so a difference between the processes
  (passes) of a run widens the interval instead of being averaged away (``log_mean_variance``). A point is ``noisy`` when its round medians disagree (their range relative
  to the median exceeds a threshold; perf_analyzer's stability rule has the same form).

Which library does what: scipy.stats gives the t distribution's intervals (``t.interval``) and the
between-process test (``f_oneway``), imported inside the functions so that ``import lib.common.stats`` works
where scipy is missing (the GPU host). What is written here is the variance fed to them, because no library
offers it: rounds are grouped by process (``log_mean_variance``) and two such variances are combined with
Welch-Satterthwaite degrees of freedom (``scipy.stats.ttest_ind(equal_var=False)`` computes these only from
ungrouped samples). ``scipy.stats.bootstrap`` is not used on purpose: a point has 4-8 round medians, from
which a bootstrap draws at most a few dozen distinct resamples (35 for 4 rounds), so its interval is too narrow
(in the coverage test's setting, 6 rounds, a percentile bootstrap of the log round medians held the true figure
87 % of the time where a 95 % interval should, the t interval about 95 %); resampling single iterations
instead would treat samples that share one host state as independent (it called 82 % of A/A comparisons
significant, tests/common/test_stats.py).

Outliers are filtered for presentation only (``filtered_summary``): the raw samples stay on disk,
every table that shows filtered figures labels them and says how many samples the rule dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["OutlierRule", "parse_outlier_rule", "summarize", "filtered_summary", "round_interval",
           "ratio_interval", "log_mean_variance", "verdict", "round_spread", "host_slow_limit", "PERCENTILES", "PERCENTILE_MIN_N", "LEVEL", "SAME_MARGIN"]

PERCENTILES = (50, 90, 95, 99)
# Fewest samples for a percentile to be ranked rather than be the sample's extreme: with n samples the
# q-th percentile needs about 1 / (1 - q) samples above it to mean anything (p99: 100).
PERCENTILE_MIN_N = {90: 10, 95: 20, 99: 100}
RULES = {"tukey": 1.5, "mad": 3.5, "none": 0.0}
LEVEL = 0.95          # confidence level of every interval in the report
# A ratio within +-1 % of 1 is called "no clear difference" even where its interval excludes 1: below
# that, a difference is smaller than what separate processes of one configuration show on a quiet host.
SAME_MARGIN = 0.01


@dataclass(frozen=True)
class OutlierRule:
    """``tukey``: outside [Q1 - k*IQR, Q3 + k*IQR] (k=1.5); ``mad``: |x - median| > k * 1.4826 * MAD
    (k=3.5); ``none``: keep everything."""

    name: str
    k: float

    @property
    def label(self) -> str:
        if self.name == "none":
            return "none (all samples kept)"
        if self.name == "tukey":
            return f"Tukey fences: outside [Q1 - {self.k:g}×IQR, Q3 + {self.k:g}×IQR]"
        return f"MAD: |x - median| > {self.k:g} × 1.4826 × MAD"

    def keep_mask(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.name == "none" or len(x) < 4:
            return np.ones(len(x), dtype=bool)
        if self.name == "tukey":
            q1, q3 = np.percentile(x, [25, 75])
            iqr = q3 - q1
            return (x >= q1 - self.k * iqr) & (x <= q3 + self.k * iqr)
        med = np.median(x)
        mad = 1.4826 * np.median(np.abs(x - med))
        if mad == 0:
            return np.ones(len(x), dtype=bool)
        return np.abs(x - med) <= self.k * mad


def parse_outlier_rule(text: str) -> OutlierRule:
    """'tukey', 'tukey:3', 'mad', 'mad:5' or 'none'."""
    raw = str(text).strip().lower()
    name, _, k = raw.partition(":")
    valid = "tukey, tukey:<k>, mad, mad:<k> or none (default tukey = 1.5×IQR)"
    if name not in RULES:
        raise ConfigError(f"OUTLIERS={text!r} is not a rule; use {valid}")
    if name == "none":
        if k:
            raise ConfigError(f"OUTLIERS={text!r}: 'none' takes no factor; use {valid}")
        return OutlierRule("none", 0.0)
    try:
        factor = float(k) if k else RULES[name]
    except ValueError:
        raise ConfigError(f"OUTLIERS={text!r}: factor {k!r} is not a number; use {valid}") from None
    if not factor > 0:
        raise ConfigError(f"OUTLIERS={text!r}: the factor must be > 0; use {valid}")
    return OutlierRule(name, factor)


def summarize(ms: np.ndarray) -> dict:
    """Median, supported percentiles, mean, std, CV, min, max over every raw sample (ms).

    ``p90_ms``/``p95_ms``/``p99_ms`` are NaN where the sample is too small to rank them
    (``PERCENTILE_MIN_N``); ``tail_q`` is the highest supported percentile (0 when none is) and
    ``tail_ms`` its value, so a table can always show one labelled tail figure.
    """
    x = np.asarray(ms, dtype=float)
    if len(x) == 0:
        return {"n": 0}
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    out = {"n": int(len(x)), "median_ms": float(np.median(x))}
    tail_q, tail_ms = 0, float("nan")
    for q in PERCENTILES[1:]:
        v = float(np.percentile(x, q)) if len(x) >= PERCENTILE_MIN_N[q] else float("nan")
        out[f"p{q}_ms"] = v
        if v == v:
            tail_q, tail_ms = q, v
    out.update(tail_q=tail_q, tail_ms=tail_ms, mean_ms=mean, std_ms=std,
               cv=std / mean if mean > 0 else float("nan"), min_ms=float(x.min()), max_ms=float(x.max()))
    return out


def filtered_summary(ms: np.ndarray, rule: OutlierRule) -> dict:
    """Presentation-only figures after ``rule`` (median, mean, std of the kept samples) and how many it
    dropped; every key starts with ``filtered_`` so it is never mistaken for a raw figure."""
    x = np.asarray(ms, dtype=float)
    if len(x) == 0:
        return {"dropped": 0}
    keep = rule.keep_mask(x)
    k = x[keep]
    return {"dropped": int((~keep).sum()), "filtered_median_ms": float(np.median(k)),
            "filtered_mean_ms": float(k.mean()), "filtered_std_ms": float(k.std(ddof=1)) if len(k) > 1 else 0.0}


def _t_interval(mid: float, se: float, df: float, level: float) -> tuple[float, float]:
    """scipy's Student t interval around ``mid`` with standard error ``se`` (on the log scale)."""
    from scipy import stats

    lo, hi = stats.t.interval(level, df, loc=mid, scale=se)
    return float(lo), float(hi)


# A between-process difference is taken as real when a one-way ANOVA F test finds it at this level.
GROUP_TEST_ALPHA = 0.05


def log_mean_variance(round_medians, groups=None) -> tuple[float, float, int]:
    """(variance of the mean log round median, its degrees of freedom, rounds used).

    Rounds measured in one process share that process's state (its allocator, clocks, code paths), so
    rounds are not independent across processes. With ``groups`` (the process, i.e. pass, of each round)
    a one-way ANOVA F test asks whether the group means differ more than the rounds within them explain;
    if so (p < ``GROUP_TEST_ALPHA``), the variance is that of the group means (s^2 / P, P - 1 degrees of
    freedom: a between-process difference is never averaged away by many rounds inside one process), else
    that of the rounds (s^2 / k, k - 1). Synthetic A/A tests (tests/common/test_stats.py) check that this keeps
    'no clear difference' at >= 95 % with 1 % between-process noise."""
    from scipy import stats

    r = np.log(np.asarray(round_medians, dtype=float))
    g = np.zeros(len(r), dtype=int) if groups is None else np.asarray(groups)
    ok = np.isfinite(r)
    r, g = r[ok], g[ok]
    k = len(r)
    if k < 2:
        return float("nan"), float("nan"), k
    var, df = float(r.var(ddof=1) / k), float(k - 1)
    labels = np.unique(g)
    if len(labels) < 2:
        return var, df, k
    parts = [r[g == u] for u in labels]
    means = np.array([x.mean() for x in parts])
    group_var = float(means.var(ddof=1) / len(means))
    if k - len(labels) < 1:  # one round per group: the groups are the rounds
        return group_var, float(len(means) - 1), k
    if all(len(x) > 1 and np.ptp(x) == 0 for x in parts) and np.ptp(means) > 0:
        return group_var, float(len(means) - 1), k  # no spread within, some between: F is infinite
    p_value = stats.f_oneway(*parts).pvalue if any(np.ptp(x) > 0 for x in parts) else 1.0
    if p_value == p_value and p_value < GROUP_TEST_ALPHA:
        return group_var, float(len(means) - 1), k
    return var, df, k


def _mean_log(round_medians) -> float:
    r = np.log(np.asarray(round_medians, dtype=float))
    return float(r[np.isfinite(r)].mean())


def round_interval(round_medians, center: float, groups=None, level: float = LEVEL) -> tuple[float, float]:
    """A ``level`` interval for a point's figure ``center`` (the pooled median) from its round medians:
    Student t on the log scale (latency is ratio-scale, so the interval is relative) around the mean log
    round median, with the variance of ``log_mean_variance``; widened, where needed, to contain ``center``
    (the median of all samples and the mean of round medians differ slightly). Fewer than two rounds:
    (NaN, NaN)."""
    var, df, _ = log_mean_variance(round_medians, groups)
    if not var == var or not center > 0:
        return float("nan"), float("nan")
    lo, hi = _t_interval(_mean_log(round_medians), float(np.sqrt(var)), df, level)
    return float(min(center, np.exp(lo))), float(max(center, np.exp(hi)))


def ratio_interval(rounds_a, rounds_b, center: float, groups_a=None, groups_b=None,
                   level: float = LEVEL) -> tuple[float, float]:
    """A ``level`` interval for ``center`` = figure(a) / figure(b), from both sides' round medians:
    Welch's t on the difference of mean log round medians (Welch-Satterthwaite degrees of freedom), each
    side's variance from ``log_mean_variance``; widened, where needed, to contain ``center``."""
    va, da, _ = log_mean_variance(rounds_a, groups_a)
    vb, db, _ = log_mean_variance(rounds_b, groups_b)
    if not (va == va and vb == vb) or not center > 0:
        return float("nan"), float("nan")
    mid = _mean_log(rounds_a) - _mean_log(rounds_b)
    se = np.sqrt(va + vb)
    if se == 0:
        return float(min(center, np.exp(mid))), float(max(center, np.exp(mid)))
    # Welch-Satterthwaite by hand: the variances are log_mean_variance's (grouped by process), which scipy's
    # Welch test cannot be given.
    df = (va + vb) ** 2 / ((va ** 2 / da if va else 0.0) + (vb ** 2 / db if vb else 0.0))
    lo, hi = _t_interval(mid, float(se), df, level)
    return float(min(center, np.exp(lo))), float(max(center, np.exp(hi)))


def verdict(lo: float, hi: float, margin: float = SAME_MARGIN) -> str:
    """'lower', 'higher' or 'no clear difference' for a ratio interval [lo, hi] against 1.

    A side is called only when its whole interval lies beyond the +-``margin`` band around 1; an
    interval that is unknown (NaN) is 'no clear difference'."""
    if lo != lo or hi != hi:
        return "no clear difference"
    if hi < 1 / (1 + margin):
        return "lower"
    if lo > 1 + margin:
        return "higher"
    return "no clear difference"


def round_spread(round_medians, center: float) -> float:
    """(max - min) of the round medians relative to the figure: 0 for one round."""
    r = np.asarray(round_medians, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) < 2 or not center > 0:
        return 0.0
    return float((r.max() - r.min()) / center)


# The host sentinel's "best" is a low percentile, not its minimum: one lucky block must not make every later
# round look slow. The analysis (run-wide) and the sweep's settle gate (per process, so far) use this rule.
SENTINEL_BEST_PERCENTILE = 5


def host_slow_limit(sentinel_us, host_slow: float) -> float:
    """Sentinel value (µs) above which the host counts as slow: its best (5th percentile of the values
    given) times ``1 + host_slow``; NaN when there is no finite value."""
    v = np.asarray(sentinel_us, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan")
    return float(np.percentile(v, SENTINEL_BEST_PERCENTILE)) * (1 + host_slow)
